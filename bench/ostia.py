"""OSTIA sea-surface temperature through the real pipeline, scored on held-out cells and blocks.

`gpgrid example ostia` builds the input (54 months x 18 x 432 cells around the globe,
land NaN, cloud-shaped gaps hidden in the analysis) and its spec. The job is run and
its filled cloud gaps are scored against the analysis by band of distance to the
nearest observation, and its output is checked to leave exactly the land cells NaN.
`gpgrid validate` then hides observed cells (at random, in blocks, under the moved
cloud mask and in rings around it), reruns the job and scores them by band, with the
headline weighted like the cloud gaps the job fills.

    .venv/bin/python bench/ostia.py
"""

from __future__ import annotations

import argparse
import os
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
from bench.settings import add_set_argument, merged, settings  # noqa: E402
from jobs.examples.catalog import prepare_example  # noqa: E402
from jobs.run import run_job  # noqa: E402
from jobs.spec import load_spec  # noqa: E402
from jobs.validate import format_validation, validate_job  # noqa: E402
from pipeline.bands import banded_scores, distance_to_observed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="which random cells and blocks")
    add_set_argument(parser)
    parser.add_argument(
        "--truth-only", action="store_true", help="skip gpgrid validate: run and score the gaps"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray_ostia")
    sampler = TreeRSS(os.getpid())
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="ostia_") as tmp:
        spec_path = prepare_example("ostia", Path(tmp))
        changed = merged(yaml.safe_load(spec_path.read_text()), settings(args.set))
        spec_path.write_text(yaml.safe_dump(changed))
        spec, text = load_spec(spec_path)
        start = time.perf_counter()
        summary = run_job(spec, text, progress=False)
        run_seconds = time.perf_counter() - start
        source = xr.open_zarr(Path(tmp) / "input.zarr")["sst"].values
        output = xr.open_zarr(summary.output_path)["sst"].values
        truth = xr.open_zarr(Path(tmp) / "input.zarr")["sst_true"].values
        filled = xr.open_zarr(summary.output_path)
        observed = np.isfinite(source)
        gaps = ~observed & np.isfinite(truth)
        truth_bands = banded_scores(
            filled["sst"].values[gaps],
            filled["sst_std"].values[gaps],
            truth[gaps],
            distance_to_observed(observed)[gaps],
        )
        land = ~np.isfinite(source).any(axis=0)
        land_nan = bool(np.isnan(output[:, land]).all())
        sea_filled = bool(np.isfinite(output[:, ~land]).all())
        validation = None if args.truth_only else validate_job(spec, progress=False, seed=args.seed)
    sampler.stop.set()
    if validation is not None:
        print(format_validation(validation))
        print(f"validation run {validation.seconds:.1f} s")
    print(
        f"ostia: full run {run_seconds:.1f} s, peak RSS {sampler.peak_mb:,.0f} MB (all processes)"
    )
    print("cloud gaps against the analysis, by distance to the nearest observation:")
    for band, scores in truth_bands.items():
        print(
            f"  {band:>5}: {scores['n']:>7,} cells, RMSE {scores['rmse']:.4f}, "
            f"CRPS {scores['crps']:.4f}, cov95 {scores['coverage95']:.3f}"
        )
    print(
        f"  land cells ({int(land.sum()):,} per month) NaN in the output: {land_nan}; "
        f"every sea cell filled: {sea_filled}"
    )


if __name__ == "__main__":
    main()
