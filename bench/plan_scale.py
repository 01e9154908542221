"""Plans at the planet's scale: `gpgrid run --dry-run` over a year of hourly 0.25-degree
data (8,760 x 721 x 1,440 cells, 151,248 tiles of 16 x 64 x 64) and over its first
quarter, each in a fresh process; then a resume scan of as many completion records.

The inputs hold metadata only (dask's `to_zarr(compute=False)`): planning reads no values.
Printed per size: tiles, plan seconds, peak RSS and its growth over the process's RSS after
imports, per tile (linear in tiles when the two sizes agree), and the targets' ratios
(30 s and 2 GB for the year); then the seconds to write the journal's 151,248 records
(not part of a plan) and to find them again with one listing, as a resume does.

    .venv/bin/python bench/plan_scale.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOURS = {"quarter": 2190, "year": 8760}
GRID = (721, 1440)
TILE = (16, 64, 64)
HALO = (2, 12, 12)
TARGET_SECONDS, TARGET_MB = 30.0, 2048.0
RESULT_TAG = "RESULT "

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_input(size: str, folder: str) -> str:
    """A metadata-only hourly 0.25-degree zarr of `size` (chunks of a day), as ERA5's."""
    import dask.array as da
    import numpy as np
    import pandas as pd
    import xarray as xr

    hours = HOURS[size]
    source = str(Path(folder) / f"{size}.zarr")
    data = da.zeros((hours, *GRID), dtype="float32", chunks=(24, *GRID))
    coords = {
        "time": pd.date_range("2023-01-01", periods=hours, freq="h"),
        "lat": np.linspace(90.0, -90.0, GRID[0]),
        "lon": np.arange(GRID[1]) * 0.25,
    }
    xr.Dataset({"t2m": (("time", "lat", "lon"), data)}, coords=coords).to_zarr(
        source, compute=False, mode="w", consolidated=True
    )
    return source


def plan_child(size: str, folder: str) -> dict:
    """Plan one size in this process, as `gpgrid run --dry-run` does."""
    from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
    from pipeline.plan_report import plan_report

    source = make_input(size, folder)
    before = rss_mb()
    config = PipelineConfig(
        input_path=source,
        variables=("t2m",),
        dims=("time", "lat", "lon"),
        output_path=str(Path(folder) / f"{size}_out.zarr"),
        tile=TILE,
        halo=HALO,
        model=ModelConfig(kernels=(AxisKernel("matern32"),) * 3, hyperparameters="shared"),
    )
    report = plan_report(config)
    return {
        "size": size,
        "tiles": report.tiles,
        "seconds": report.seconds,
        "rss_mb": rss_mb(),
        "growth_mb": rss_mb() - before,
        "lines": report.lines(),
    }


def resume_scan(tiles: int, folder: str) -> tuple[float, float, int]:
    """Seconds to write `tiles` completion records and to list them back, and the count."""
    from pipeline.journal import finished_tile_indices, record_tile

    store = str(Path(folder) / "scan.zarr")
    diagnostics = {"variables": {"t2m": {"fit_seconds": 1.0, "status": "fitted"}}}
    start = time.perf_counter()
    for index in range(tiles):
        record_tile(store, index, diagnostics)
    written = time.perf_counter() - start
    start = time.perf_counter()
    found = finished_tile_indices(store)
    return written, time.perf_counter() - start, len(found)


def run_child(size: str, folder: str) -> dict:
    """Plan `size` in a fresh process, so its RSS is the plan's alone."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", size, folder],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"planning {size} failed:\n{done.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_TAG + json.dumps(plan_child(*args.child)), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpgrid_plan_") as folder:
        for size in HOURS:
            rows.append(run_child(size, folder))
        print("\n".join(rows[-1]["lines"]) + "\n")
        print(f"{'size':8} {'tiles':>8} {'plan s':>7} {'peak MB':>8} {'kB/tile':>8}")
        for r in rows:
            per_tile = r["growth_mb"] * 1024 / r["tiles"]
            print(
                f"{r['size']:8} {r['tiles']:>8,} {r['seconds']:>7.1f} {r['rss_mb']:>8.0f} "
                f"{per_tile:>8.2f}"
            )
        year = rows[-1]
        print(
            f"\nyear: plan time {year['seconds'] / TARGET_SECONDS:.2f}x of the 30 s target, "
            f"peak RSS {year['rss_mb'] / TARGET_MB:.2f}x of the 2 GB target"
        )
        written, listed, found = resume_scan(year["tiles"], folder)
        print(
            f"resume scan: {found:,} completion records found by one listing in {listed:.2f} s "
            f"(writing them took {written:.1f} s, one atomic file each)"
        )


if __name__ == "__main__":
    main()
