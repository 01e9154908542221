"""Heaton et al. (2019) grids through the real pipeline, scored by cloud-shaped block CV.

The competition's cloud mask (the NaN cells of the training grid) is moved onto observed
land, and the observed cells under it are held out: the same shapes as the clouds to be
predicted, with a truth to score against; rings around some of the moved clouds are held
out too (nested deletions: 10% of the observed cells), so that the deep bands hold enough
cells to score. `gpgrid run` then fills the whole 300 x 500
grid from the rest (as a separate process, timed end to end: read, fit, predict, write),
and the hidden cells are scored: MAE, RMSE, CRPS, 95% interval score, 95% coverage (of
the readings, so the std includes the learned noise), then per band of distance to the
nearest observation left, with a headline re-weighted to the distances of the real cloud
cells (pipeline/bands.py, as gpgrid validate reports it). Peak RSS sums the run's process
tree (driver, Ray and its workers), sampled every 0.2 s. Each run also prints the
learned variance / lengthscale (what one realisation of an exponential field identifies),
lengthscale, variance and nugget: median and range over tiles.

    .venv/bin/python bench/heaton.py --baseline          # shipped spec vs whole-grid fit
    .venv/bin/python bench/heaton.py --which simulated --set model.calibrate_variance=false \
        --compare matern12,matern32,matern52              # the twin is stationary: ML variances
    .venv/bin/python bench/heaton.py --folds 0,1,2,3     # all four moved cloud masks, pooled
    .venv/bin/python bench/heaton.py --which simulated --oracle   # vs the truth's own kernel
    .venv/bin/python bench/heaton.py --tile 50x50 --halo 20 --set model.fit_points=2000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.kriging_oracle import Exponential, local_kriging  # noqa: E402
from bench.memory import TreeRSS  # noqa: E402
from bench.settings import add_set_argument, merged, settings  # noqa: E402
from bench.table import Column, Table  # noqa: E402
from jobs.examples import datasets  # noqa: E402
from pipeline.bands import (  # noqa: E402
    band_labels,
    banded_scores,
    distance_to_observed,
    fill_shares,
)
from pipeline.holdout import DEEP_FRACTION, deepened, headline_like_job  # noqa: E402
from pipeline.scores import score  # noqa: E402
from pipeline.tile_records import read_tile_records  # noqa: E402

SPEC = ROOT / "jobs" / "examples" / "heaton_lst.yaml"
SHIFTS = [(dy, dx) for dy in range(-150, 151, 50) for dx in range(-250, 251, 50)]


def cloud_blocks(observed: np.ndarray, fold: int) -> np.ndarray:
    """Observed cells under the cloud mask moved by one of the four distinct shifts that cover
    the most observed land (`fold` 0-3, best first)."""
    clouds = ~observed
    shape = observed.shape
    shifts = {(dy % shape[0], dx % shape[1]) for dy, dx in SHIFTS} - {(0, 0)}
    covered = []
    for dy, dx in sorted(shifts):
        moved = np.roll(clouds, (dy, dx), axis=(0, 1))
        covered.append(((moved & observed).sum(), dy, dx))
    covered.sort(reverse=True)
    _, dy, dx = covered[fold % 4]
    return np.roll(clouds, (dy, dx), axis=(0, 1)) & observed


def run_job(spec: dict, folder: Path) -> tuple[float, float]:
    """`gpgrid run` on the spec in a fresh process: wall seconds and peak tree RSS (MB)."""
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp/ray_heaton")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gpgrid"), "run", str(path), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = TreeRSS(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    if proc.returncode:
        raise RuntimeError(f"gpgrid run failed ({proc.returncode}):\n{err[-3000:]}")
    print(out.strip().splitlines()[-1])
    return seconds, sampler.peak_mb


# The simulated twin's truth (Heaton et al. 2019): 16.41 exp(-h / l), l = 1 / 0.75, nugget 0.05.
SIMULATED_MICROERGODIC = 16.41 * 0.75
SIMULATED_NUGGET = 0.05
SIMULATED_KERNEL = Exponential(sill=16.41, lengthscale=1 / 0.75, nugget=SIMULATED_NUGGET)
# The plain stationary GP every choice is judged against: Matérn 1/2 of the Euclidean
# distance, constant mean, one fit for the whole grid.
BASELINE = {
    "tiling": {"tile": {"lat": 300, "lon": 500}, "halo": {"lat": 0, "lon": 0}},
    "model": {"mean": "constant", "fit_points": 3000, "calibrate_variance": False},
}


def learned_hyperparameters(tiles: list[dict]) -> dict[str, np.ndarray]:
    """Per tile: variance / lengthscale (the exponential kernel's identifiable microergodic
    parameter; for a multi-scale kernel the sum over its parts), the lengthscale it
    implies (variance over that), variance and nugget."""
    rows = []
    for tile in tiles:
        found = tile["variables"]["lst"]["hyperparameters"]
        kernel = found["kernel"]
        base = kernel["base"]
        parts = (
            base["factors"]
            if base["kind"] == "multiscale"
            else [{"outputscale": 1.0, "base": base}]
        )
        sigma2 = kernel["outputscale"] * sum(part["outputscale"] for part in parts)
        slope = kernel["outputscale"] * sum(
            part["outputscale"] / _geometric_lengthscale(part["base"]) for part in parts
        )
        rows.append((slope, sigma2 / slope, sigma2, found["noise"]))
    return dict(zip(("sigma2/ell", "ell", "sigma2", "nugget"), np.array(rows).T, strict=True))


def _geometric_lengthscale(kernel: dict) -> float:
    """The geometric mean of a described kernel's lengthscales over its factors."""
    factors = kernel.get("factors", [kernel])
    return float(np.prod([max(f["lengthscale"]) for f in factors]) ** (1 / len(factors)))


def hold_out(observed: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """A fold's hidden cells and, among them, the nested deletions: the moved cloud mask
    plus rings around some of its pieces (pipeline/holdout.py's `deep` kind)."""
    moved = cloud_blocks(observed, fold)
    rings = deepened(observed, moved, DEEP_FRACTION, np.random.default_rng(fold))
    return moved | rings, rings


@dataclass(frozen=True)
class Filled:
    """A run's mean and std (of readings) at the hidden cells, its cost and what it learned."""

    mean: np.ndarray
    std: np.ndarray
    seconds: float
    peak_mb: float
    learned: dict[str, np.ndarray]


def gpgrid_fill(ds: xr.Dataset, hidden: np.ndarray, spec: dict) -> Filled:
    """`gpgrid run` of the spec on the grid with `hidden` cells removed."""
    with tempfile.TemporaryDirectory(prefix="heaton_") as tmp:
        folder = Path(tmp)
        masked = ds.copy()
        masked["lst"] = ds["lst"].where(~hidden)
        datasets.write_zarr(masked, folder / "input.zarr")
        spec = {**spec, "input": {**spec["input"], "path": str(folder / "input.zarr")}}
        spec["output"] = {"path": str(folder / "output.zarr"), "std": "observation"}
        seconds, peak_mb = run_job(spec, folder)
        out = xr.open_zarr(folder / "output.zarr")
        return Filled(
            out["lst"].values[hidden],
            out["lst_std"].values[hidden],
            seconds,
            peak_mb,
            learned_hyperparameters(read_tile_records(str(folder / "output.zarr"))),
        )


def oracle_fill(ds: xr.Dataset, hidden: np.ndarray) -> Filled:
    """The twin's own covariance, known hyperparameters, local universal kriging."""
    values = ds["lst"].values
    start = time.perf_counter()
    mean, std = local_kriging(
        values,
        (ds["lat"].values, ds["lon"].values),
        np.isfinite(values) & ~hidden,
        hidden,
        SIMULATED_KERNEL,
    )
    truth = {
        "sigma2/ell": [SIMULATED_MICROERGODIC],
        "ell": [SIMULATED_KERNEL.lengthscale],
        "sigma2": [SIMULATED_KERNEL.sill],
        "nugget": [SIMULATED_NUGGET],
    }
    learned = {name: np.array(v) for name, v in truth.items()}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process
    return Filled(mean, std, time.perf_counter() - start, peak_mb, learned)


def evaluate(ds: xr.Dataset, hidden: np.ndarray, rings: np.ndarray, filled: Filled) -> dict:
    """Scores of a run's hidden cells: overall and per band; the headline on the cells off
    the nested-deletion `rings` where a band has enough of them (as gpgrid validate does)."""
    values = ds["lst"].values
    mean, std = filled.mean, filled.std
    scores = score(mean, std, values[hidden])
    observed = np.isfinite(values)
    left = distance_to_observed(observed & ~hidden)[hidden]
    bands = banded_scores(mean, std, values[hidden], left)
    dense = ~rings[hidden]
    like_job = banded_scores(mean[dense], std[dense], values[hidden][dense], left[dense])
    shares = fill_shares(distance_to_observed(observed)[~observed])
    return {
        **scores,
        "bands": bands,
        "shares": shares,
        "headline": headline_like_job(bands, like_job, shares),
        "seconds": filled.seconds,
        "peak_mb": filled.peak_mb,
        "learned": filled.learned,
        "cells": (mean, std, values[hidden], left, dense),
    }


def spec_from_args(args: argparse.Namespace) -> dict:
    """The shipped spec with the command line's changes."""
    spec = yaml.safe_load(SPEC.read_text())
    changes: dict[str, dict] = {"tiling": {}, "model": {}}
    if args.tile:
        lat, lon = (int(v) for v in args.tile.split("x"))
        changes["tiling"]["tile"] = {"lat": lat, "lon": lon}
    if args.halo is not None:
        changes["tiling"]["halo"] = {"lat": args.halo, "lon": args.halo}
    if args.blend:
        changes["tiling"]["blend"] = {"lat": args.blend, "lon": args.blend}
    return merged(merged(spec, changes), settings(args.set))


def with_kernel(spec: dict, kernel: str) -> dict:
    return merged(spec, {"model": {"kernel": {"lat": kernel, "lon": kernel}}})


RESULTS = Table(
    (
        Column("run", 28, left=True),
        Column("fold", 5),
        Column("MAE", 8, ".3f"),
        Column("RMSE", 8, ".3f"),
        Column("CRPS", 8, ".3f"),
        Column("IS95", 8, ".2f"),
        Column("cov95", 8, ".3f"),
        Column("wall s", 8, ".1f"),
        Column("RSS MB", 9, ",.0f"),
    )
)
SCORED = ("mae", "rmse", "crps", "interval_score95", "coverage95", "seconds", "peak_mb")


def report(label: str, fold: int, found: dict, which: str) -> None:
    learned = found["learned"]
    print(RESULTS.line([label, fold, *(found[key] for key in SCORED)]), flush=True)
    for band in band_labels():
        s, share = found["bands"].get(band), found["shares"].get(band, 0.0)
        if s is not None:
            print(
                f"{'':<33}{band:>5} cells from data: {s['n']:>6,} hidden (clouds {share:.3f}), "
                f"RMSE {s['rmse']:.3f}, CRPS {s['crps']:.3f}, cov95 {s['coverage95']:.3f}"
            )
    head = found["headline"]
    if head is not None:
        print(
            f"{'':<33}weighted like the real clouds ({head.measured_share:.0%}): "
            f"RMSE {head.rmse:.3f}, CRPS {head.crps:.3f}, cov95 {head.coverage95:.3f}"
        )
    parts = [
        f"{name} {np.median(column):.4g} ({column.min():.3g}-{column.max():.3g})"
        for name, column in learned.items()
    ]
    print(f"{'':<33}learned, median (range) over tiles: {', '.join(parts)}")
    if which == "simulated":
        ratio = np.median(learned["sigma2/ell"]) / SIMULATED_MICROERGODIC
        nugget = np.median(learned["nugget"]) / SIMULATED_NUGGET
        print(f"{'':<33}against the truth: sigma2/ell x{ratio:.3f}, nugget x{nugget:.3f}")


def report_pooled(label: str, rows: list[dict]) -> None:
    """Bands, and the headline weighted like the real clouds, over the cells of every fold
    together: deep bands hold few distinct gaps per fold, so one fold's deep coverage is
    noisy."""
    mean, std, truth, left, dense = (
        np.concatenate(part) for part in zip(*(r["cells"] for r in rows), strict=True)
    )
    print(f"{label}: all {len(rows)} folds pooled")
    bands = banded_scores(mean, std, truth, left)
    for band, s in bands.items():
        print(
            f"{'':<33}{band:>5} cells from data: {s['n']:>6,} hidden, RMSE {s['rmse']:.3f}, "
            f"CRPS {s['crps']:.3f}, cov95 {s['coverage95']:.3f}"
        )
    like_job = banded_scores(mean[dense], std[dense], truth[dense], left[dense])
    head = headline_like_job(bands, like_job, rows[0]["shares"])  # the same real clouds
    if head is not None:
        print(
            f"{'':<33}weighted like the real clouds ({head.measured_share:.0%}): "
            f"RMSE {head.rmse:.3f}, CRPS {head.crps:.3f}, cov95 {head.coverage95:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--which",
        choices=["satellite", "simulated"],
        default="satellite",
        help="the MODIS grid, or its twin drawn from a known Matérn 1/2 GP",
    )
    parser.add_argument("--tile", default=None, help="tile core as LATxLON, e.g. 100x100")
    parser.add_argument("--halo", type=int, default=None, help="halo cells per side")
    parser.add_argument("--blend", type=int, default=0, help="cells blended across tile edges")
    add_set_argument(parser)
    parser.add_argument(
        "--compare",
        default="",
        help="kernels to choose among by block CV (lowest CRPS), e.g. matern12,matern32",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also run the plain stationary whole-grid GP"
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="simulated twin: also krige with its true covariance (the best the data allow)",
    )
    parser.add_argument("--folds", default="0", help="moved cloud masks to score, e.g. 0,1,2,3")
    args = parser.parse_args()

    ds = datasets.heaton_dataset(args.which)
    observed = np.isfinite(ds["lst"].values)
    spec = spec_from_args(args)
    kernel = spec["model"]["kernel"]["lat"]
    runs = {
        f"{k}" if args.compare else "gpgrid": partial(gpgrid_fill, ds, spec=with_kernel(spec, k))
        for k in (args.compare.split(",") if args.compare else [kernel])
    }
    if args.baseline:
        runs["baseline (whole grid)"] = partial(gpgrid_fill, ds, spec=merged(spec, BASELINE))
    if args.oracle:
        if args.which != "simulated":
            parser.error("--oracle needs --which simulated: only the twin's covariance is known")
        runs["oracle (true kernel)"] = partial(oracle_fill, ds)
    folds = [int(f) for f in args.folds.split(",")]
    print(f"heaton {args.which}: model {spec['model']}, tiling {spec['tiling']}")
    print(RESULTS.header())
    results: dict[str, list[dict]] = {label: [] for label in runs}
    for fold in folds:
        hidden, rings = hold_out(observed, fold)
        for label, fill in runs.items():
            found = evaluate(ds, hidden, rings, fill(hidden))
            results[label].append(found)
            report(label, fold, found, args.which)
    if len(folds) > 1:
        for label, rows in results.items():
            report_pooled(label, rows)
    hidden, rings = hold_out(observed, folds[0])
    print(
        f"hold-out: {int(hidden.sum()):,} cells in fold {folds[0]}, {int(rings.sum()):,} of "
        "them in rings around the moved clouds (nested deletions)"
    )
    means = {
        label: {k: float(np.mean([r[k] for r in rows])) for k in ("rmse", "crps", "coverage95")}
        for label, rows in results.items()
    }
    for label, m in means.items():
        print(
            f"mean over folds {label:<22} RMSE {m['rmse']:.3f}  CRPS {m['crps']:.3f}  "
            f"coverage95 {m['coverage95']:.3f}"
        )
    if args.compare:
        best = min(means, key=lambda label: means[label]["crps"])
        print(f"chosen by block CV (lowest mean CRPS): {best}")
    if args.baseline:
        base = means.pop("baseline (whole grid)")
        for label, m in means.items():
            print(
                f"{label} / baseline: RMSE x{m['rmse'] / base['rmse']:.3f}, "
                f"CRPS x{m['crps'] / base['crps']:.3f}"
            )


if __name__ == "__main__":
    main()
