"""OSTIA sea-surface temperature through the real pipeline, scored on held-out cells and blocks.

`gpgrid example ostia` builds the input (54 months x 18 x 432 cells around the globe,
land NaN) and its spec; `gpgrid validate` then hides 5% of the observed cells at random
and as many again in contiguous blocks, reruns the job and scores the hidden cells
(MAE, RMSE, CRPS, 95% interval score, 95% coverage of the readings), also per band of
distance to the nearest observation left (the sea has no gaps of its own to move or to
weight a headline by: land is never observed and stays NaN). The job is also run
on all the data, and its output is checked to leave exactly the land cells NaN.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="which random cells and blocks")
    add_set_argument(parser)
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
        land = ~np.isfinite(source).any(axis=0)
        land_nan = bool(np.isnan(output[:, land]).all())
        sea_filled = bool(np.isfinite(output[:, ~land]).all())
        validation = validate_job(spec, progress=False, seed=args.seed)
    sampler.stop.set()
    print(format_validation(validation))
    print(
        f"ostia: full run {run_seconds:.1f} s, validation run {validation.seconds:.1f} s, "
        f"peak RSS {sampler.peak_mb:,.0f} MB (all processes)"
    )
    print(
        f"  land cells ({int(land.sum()):,} per month) NaN in the output: {land_nan}; "
        f"every sea cell filled: {sea_filled}"
    )


if __name__ == "__main__":
    main()
