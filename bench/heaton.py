"""Heaton et al. (2019) grids through the real pipeline, scored by cloud-shaped block CV.

The competition's cloud mask (the NaN cells of the training grid) is moved onto observed
land, and the observed cells under it are held out: the same shapes as the clouds to be
predicted, with a truth to score against. `gpgrid run` then fills the whole 300 x 500
grid from the rest (as a separate process, timed end to end: read, fit, predict, write),
and the hidden cells are scored: MAE, RMSE, CRPS, 95% interval score, 95% coverage (of
the readings, so the std includes the learned noise). Peak RSS sums the run's process
tree (driver, Ray and its workers), sampled every 0.2 s.

    .venv/bin/python bench/heaton.py                       # satellite, the shipped spec
    .venv/bin/python bench/heaton.py --which simulated
    .venv/bin/python bench/heaton.py --tile 300x500        # one tile: a whole-grid fit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import TreeRSS  # noqa: E402
from jobs.examples import datasets  # noqa: E402
from pipeline.scores import score  # noqa: E402

SPEC = ROOT / "jobs" / "examples" / "heaton_lst.yaml"
SHIFTS = [(dy, dx) for dy in range(-150, 151, 50) for dx in range(-250, 251, 50)]


def cloud_blocks(observed: np.ndarray, seed: int) -> np.ndarray:
    """Observed cells under the cloud mask moved by one of the shifts that cover the most
    observed land (picked by `seed` among the best four)."""
    clouds = ~observed
    covered = []
    for dy, dx in SHIFTS:
        if (dy, dx) == (0, 0):
            continue
        moved = np.roll(clouds, (dy, dx), axis=(0, 1))
        covered.append(((moved & observed).sum(), dy, dx))
    covered.sort(reverse=True)
    _, dy, dx = covered[seed % 4]
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


def learned_hyperparameters(attrs: dict) -> str:
    """Median (and range) over tiles of the learned variance/lengthscale (the exponential
    kernel's identifiable microergodic parameter), lengthscale, variance and nugget."""
    tiles = attrs["gpgrid_tiles"]
    tiles = json.loads(tiles) if isinstance(tiles, str) else tiles
    rows = []
    for tile in tiles:
        found = tile["variables"]["lst"]["hyperparameters"]
        kernel = found["kernel"]
        factors = kernel["base"].get("factors", [kernel["base"]])
        ell = float(np.prod([max(f["lengthscale"]) for f in factors]) ** (1 / len(factors)))
        variance = kernel["outputscale"]
        rows.append((variance / ell, ell, variance, found["noise"]))
    table = np.array(rows)
    parts = []
    for name, column in zip(("sigma2/ell", "ell", "sigma2", "nugget"), table.T, strict=True):
        parts.append(f"{name} {np.median(column):.4g} ({column.min():.3g}-{column.max():.3g})")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["satellite", "simulated"], default="satellite")
    parser.add_argument("--tile", default=None, help="tile core as LATxLON, e.g. 100x100")
    parser.add_argument("--halo", type=int, default=None, help="halo cells per side")
    parser.add_argument("--kernel", default=None, help="kernel for both axes, e.g. matern32")
    parser.add_argument("--blend", type=int, default=0, help="cells blended across tile edges")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="any spec field, as section.key=value (YAML value), e.g. model.fit_points=2000",
    )
    parser.add_argument("--fit-points", type=int, default=None)
    parser.add_argument("--fold", type=int, default=0, help="which moved cloud mask (0-3)")
    args = parser.parse_args()

    ds = datasets.heaton_dataset(args.which)
    values = ds["lst"].values
    observed = np.isfinite(values)
    hidden = cloud_blocks(observed, args.fold)
    spec = yaml.safe_load(SPEC.read_text())
    if args.tile:
        lat, lon = (int(v) for v in args.tile.split("x"))
        spec["tiling"]["tile"] = {"lat": lat, "lon": lon}
    if args.halo is not None:
        spec["tiling"]["halo"] = {"lat": args.halo, "lon": args.halo}
    if args.kernel:
        spec["model"]["kernel"] = {"lat": args.kernel, "lon": args.kernel}
    if args.blend:
        spec["tiling"]["blend"] = {"lat": args.blend, "lon": args.blend}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        spec[section][field] = yaml.safe_load(value)
    if args.fit_points:
        spec["model"]["fit_points"] = args.fit_points
    with tempfile.TemporaryDirectory(prefix="heaton_") as tmp:
        folder = Path(tmp)
        masked = ds.copy()
        masked["lst"] = ds["lst"].where(~hidden)
        datasets.write_zarr(masked, folder / "input.zarr")
        spec["input"]["path"] = str(folder / "input.zarr")
        spec["output"] = {"path": str(folder / "output.zarr"), "std": "observation"}
        seconds, peak_mb = run_job(spec, folder)
        out = xr.open_zarr(folder / "output.zarr")
        scores = score(out["lst"].values[hidden], out["lst_std"].values[hidden], values[hidden])
        learned = learned_hyperparameters(out.attrs)
    print(
        f"heaton {args.which}: {hidden.sum():,} cloud-shaped hold-out cells (fold {args.fold}), "
        f"model {spec['model']['kernel']}, tiles {spec['tiling']['tile']} halo "
        f"{spec['tiling']['halo']} blend {spec['tiling'].get('blend', {})} {' '.join(args.set)}"
    )
    print(
        f"  MAE {scores['mae']:.3f}  RMSE {scores['rmse']:.3f}  CRPS {scores['crps']:.3f}  "
        f"IS95 {scores['interval_score95']:.2f}  coverage95 {scores['coverage95']:.3f}"
    )
    print(f"  wall {seconds:.1f} s end to end (gpgrid run), peak RSS {peak_mb:,.0f} MB (all)")
    print(f"  learned, median over tiles (range): {learned}")


if __name__ == "__main__":
    main()
