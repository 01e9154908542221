"""A climate-model-like field in a noleap calendar with large space-time gaps, through
`gpgrid validate` with a spec that names no kernel: coverage by distance band, and the
same scores against the truth in the real gaps.

The field is the sum of two draws (a long, smooth Matérn 5/2 and a shorter Matérn 3/2),
so no candidate kernel is the truth; 30% of the cells are missing, 90% of them in blobs
that persist for days. Time runs daily in the noleap calendar across the end of
February.

    .venv/bin/python bench/climate.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.settings import add_set_argument, merged, settings  # noqa: E402
from jobs.run import run_job  # noqa: E402
from jobs.spec import load_spec  # noqa: E402
from jobs.validate import format_validation, validate_job  # noqa: E402
from pipeline.bands import band_labels, banded_scores, distance_to_observed  # noqa: E402
from pipeline.synthetic import SyntheticGrid, make_synthetic_dataset  # noqa: E402

LONG = SyntheticGrid(
    shape=(40, 48, 64),
    spacing=(1.0, 0.25, 0.25),
    kernels=("matern52", "matern52", "matern52"),
    lengthscales=(8.0, 4.0, 4.0),
    outputscale=4.0,
    noise_std=0.1,
    gap_fraction=0.3,
    blob_share=0.9,
)
SHORT = replace(LONG, kernels=("matern32",) * 3, lengthscales=(2.0, 0.75, 0.75), outputscale=1.0)


def climate_field(seed: int) -> xr.Dataset:
    """The two draws summed (gaps and noise from the long one), on noleap days."""
    long = make_synthetic_dataset(replace(LONG, seed=seed))
    short = make_synthetic_dataset(replace(SHORT, seed=seed + 1000))
    ds = long.copy()
    for name in ("tas", "tas_true"):
        ds[name] = long[name] + (short["tas_true"] - SHORT.offset)
    days = xr.date_range(
        "2001-02-10", periods=LONG.shape[0], freq="D", calendar="noleap", use_cftime=True
    )
    return ds.assign_coords(time=("time", days.values, {"standard_name": "time"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    add_set_argument(parser)  # e.g. --set 'model.kernel={time: matern32, lat: matern32,
    # lon: matern32}': the plain per-axis spec
    parser.add_argument(
        "--truth-only", action="store_true", help="skip gpgrid validate: run and score the gaps"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray_climate")
    ds = climate_field(args.seed)
    with tempfile.TemporaryDirectory(prefix="climate_") as tmp:
        folder = Path(tmp)
        ds[["tas"]].to_zarr(folder / "input.zarr", zarr_format=3, consolidated=False)
        spec = {
            "input": {
                "path": str(folder / "input.zarr"),
                "variables": ["tas"],
                "dims": ["time", "lat", "lon"],
            },
            "model": {"type": "kiss"},
            "tiling": {
                "tile": {"time": 40, "lat": 24, "lon": 32},
                "halo": {"time": 0, "lat": 6, "lon": 6},
            },
            "output": {"path": str(folder / "output.zarr"), "std": "observation"},
        }
        (folder / "job.yaml").write_text(yaml.safe_dump(merged(spec, settings(args.set))))
        job, _ = load_spec(folder / "job.yaml")
        if not args.truth_only:
            print(format_validation(validate_job(job, progress=False)))
        summary = run_job(job, progress=False)
        out = xr.open_zarr(summary.output_path)
        print("kernel chosen:", out.attrs.get("gpgrid_kernel_choice"))
        observed = np.isfinite(ds["tas"].values)
        gaps = ~observed
        reading = ds["tas_true"].values
        mean, std = out["tas"].values[gaps], out["tas_std"].values[gaps]
        # readings in the gaps: the truth plus noise of the same std (seeded)
        noise = np.random.default_rng(args.seed).normal(0.0, LONG.noise_std, gaps.sum())
        bands = banded_scores(
            mean, std, reading[gaps] + noise, distance_to_observed(observed)[gaps]
        )
        print("against the truth in the real gaps (readings: truth plus noise):")
        for band in band_labels():
            if band in bands:
                s = bands[band]
                rmse, cov = s["rmse"], s["coverage95"]
                print(f"  {band:>5}: {s['n']:>7,} cells, RMSE {rmse:.3f}, cov95 {cov:.3f}")


if __name__ == "__main__":
    main()
