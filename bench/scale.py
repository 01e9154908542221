"""End-to-end scale: synthetic grids of 1M, 4M and 25M cells (30% gaps) through the pipeline.

Each size runs in its own process on a fresh embedded Ray with 2 CPUs: KissGP per tile
with shared hyperparameters (phase 1 on 8 sampled tiles, then inference at fixed
hyperparameters), tiles of 16 x 64 x 64 cells with halos of 2 x 12 x 12. Printed per
size: wall seconds (end to end, Ray start excluded), cells per second (all of them, and
phase 2 alone), peak RSS of the driver and of the largest worker (and that worker's own
memory, USS, without the shared object store's pages), where the time goes
(read, condition, predict and wall per tile summed over workers; the driver's writes;
phase 1; setup and finalize), and Ray's overhead: the share of the two workers' time
during phase 2 in which no tile was being computed (and, "+start", with Ray's start
counted as overhead too). The input is written beforehand in
a separate process, so the run's RSS does not include drawing it. `era5day` is a day
of hourly global 0.25-degree data (24 x 721 x 1,440) whose gaps are all cloud-shaped
blobs; for it (and any size) the driver's share is also printed: the share of the wall
time the driver spent blending and writing, and the bytes of tile results it received
and of chunks it wrote, against the output's size. Then the RSS ratios against 1M and 4M.

    .venv/bin/python bench/scale.py                      # 1M and 4M
    .venv/bin/python bench/scale.py --sizes 4M,era5day   # the ERA5 day against 4M
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZES = {"1M": (16, 256, 256), "4M": (64, 256, 256), "era5day": (24, 721, 1440)}
CLOUD_ONLY = {"era5day"}  # sizes whose gaps are all contiguous blobs
TILE = (16, 64, 64)
HALO = (2, 12, 12)
WORKERS = 2
RESULT_TAG = "RESULT "
USS_EVERY = 8  # RSS every 0.25 s, the private memory (USS) every 2 s

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.table import Column, Table  # noqa: E402


class WorkerRSS(threading.Thread):
    """Samples the memory of Ray's worker processes; keeps the largest seen: resident
    (RSS, which also counts the pages of Ray's shared object store a worker has touched,
    so it grows with the results it has put there) and private (USS, its own)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = self.peak_private_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        samples = 0
        while not self.stop.is_set():
            private = samples % USS_EVERY == 0  # reading smaps slows the worker: seldom
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "ray::" in cmdline or "default_worker.py" in cmdline:
                    try:
                        memory = proc.memory_full_info() if private else proc.memory_info()
                    except psutil.Error:  # the worker exited meanwhile
                        continue
                    self.peak_mb = max(self.peak_mb, memory.rss / 2**20)
                    if private:
                        self.peak_private_mb = max(self.peak_private_mb, memory.uss / 2**20)
            samples += 1
            self.stop.wait(0.25)


def make_input(size: str, folder: str) -> dict:
    """Write one size's synthetic input (in its own process, so the run's RSS excludes it)."""
    from pipeline.synthetic import SyntheticGrid, write_synthetic

    made = time.perf_counter()
    source = str(Path(folder) / "input.zarr")
    blobs = 1.0 if size in CLOUD_ONLY else SyntheticGrid.blob_share
    recipe = SyntheticGrid(shape=SIZES[size], blob_share=blobs, seed=1)
    write_synthetic(source, recipe, chunks=TILE)
    return {"source": source, "input_seconds": time.perf_counter() - made}


def child(size: str, folder: str) -> dict:
    """One size, in this process: run the job on its input, collect the numbers."""
    import ray

    from pipeline.cluster import ensure_ray
    from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
    from pipeline.runner import run_pipeline
    from pipeline.synthetic import DIMS
    from pipeline.tile_records import read_tile_records

    shape = SIZES[size]
    source = str(Path(folder) / "input.zarr")
    started = time.perf_counter()
    ensure_ray(num_cpus=WORKERS)
    ray_start = time.perf_counter() - started
    sampler = WorkerRSS()
    sampler.start()
    config = PipelineConfig(
        input_path=source,
        variables=("tas",),
        dims=DIMS,
        output_path=str(Path(folder) / "output.zarr"),
        tile=TILE,
        halo=HALO,
        model=ModelConfig(kernels=(AxisKernel("matern32"),) * 3, hyperparameters="shared"),
        max_in_flight=2 * WORKERS,
    )
    summary = run_pipeline(config, progress=False)
    sampler.stop.set()
    sampler.join()
    tiles = read_tile_records(config.output_path)
    records = [
        json.loads(p.read_text())
        for p in sorted(Path(f"{config.output_path}.gpgrid/tiles").glob("*.json"))
    ]
    per_var = [r["variables"]["tas"] for r in records]
    worker_busy = sum(r["seconds"] for r in records)
    phase2 = summary.timings["tiles"]
    ray.shutdown()
    return {
        "size": size,
        "shape": shape,
        "cells": summary.cells,
        "tiles": len(tiles),
        "wall": summary.seconds,
        "phase2": phase2,
        "timings": summary.timings,
        "read": sum(v["read_seconds"] for v in per_var),
        "fit": sum(v["fit_seconds"] for v in per_var),
        "predict": sum(v["predict_seconds"] for v in per_var),
        "tile_total": worker_busy,
        "ray_overhead": max(0.0, 1.0 - worker_busy / (WORKERS * phase2)),
        "ray_start": ray_start,
        "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": sampler.peak_mb,
        "worker_private_mb": sampler.peak_private_mb,
        "metadata_bytes": (Path(config.output_path) / "zarr.json").stat().st_size,
        "driver_chunks": summary.driver_chunks,
        "driver_received": summary.driver_bytes_received,
        "driver_written": summary.driver_bytes_written,
        "output_bytes": summary.cells * 4 * 2,  # mean and std, float32
    }


def with_start(row: dict) -> float:
    """Ray's overhead counting its start too: start plus idle worker time, over the whole."""
    idle = row["ray_overhead"] * row["phase2"]
    return (row["ray_start"] + idle) / (row["ray_start"] + row["wall"])


RESULTS = Table(
    (
        Column("size", 5, left=True),
        Column("cells", 11, ","),
        Column("tiles", 6),
        Column("wall s", 8, ".1f"),
        Column("cells/s", 10, ",.0f"),
        Column("phase2 c/s", 11, ",.0f"),
        Column("driver MB", 10, ".0f"),
        Column("worker MB", 10, ".0f"),
        Column("w. own MB", 10, ".0f"),
        Column("Ray ovh", 8, ".1%"),
        Column("+start", 8, ".1%"),
    )
)


def result_cells(r: dict) -> list:
    """One size's values, in RESULTS' columns."""
    per_second = [r["cells"] / r["wall"], r["cells"] / r["phase2"]]
    memory = [r["driver_rss_mb"], r["worker_rss_mb"], r["worker_private_mb"]]
    ratios = [r["ray_overhead"], with_start(r)]
    return [r["size"], r["cells"], r["tiles"], r["wall"], *per_second, *memory, *ratios]


def report(rows: list[dict]) -> None:
    print("\n" + RESULTS.text(result_cells(r) for r in rows))
    print("\nWhere the time goes (seconds; per-tile parts summed over the 2 workers)")
    for r in rows:
        t = r["timings"]
        print(
            f"  {r['size']}: Ray start {r['ray_start']:.1f}, setup {t['setup']:.1f}, "
            f"phase 1 {t.get('phase1', 0):.1f}, "
            f"phase 2 {r['phase2']:.1f} [tiles: read {r['read']:.1f}, condition {r['fit']:.1f}, "
            f"predict {r['predict']:.1f}, all {r['tile_total']:.1f}; driver blend+write "
            f"{t['write']:.1f}], finalize {t['finalize']:.1f}; (input written in "
            f"{r['input_seconds']:.1f} s, not counted)"
        )
    print("\nThe driver's share (blending and writing chunks; bytes against the output's)")
    for r in rows:
        print(
            f"  {r['size']}: {r['timings']['write'] / r['wall']:.1%} of the wall time; received "
            f"{r['driver_received'] / 1e6:,.0f} MB of predictions "
            f"({r['driver_received'] / r['output_bytes']:.2f}x), wrote {r['driver_chunks']:,} "
            f"chunks, {r['driver_written'] / 1e6:,.0f} MB "
            f"({r['driver_written'] / r['output_bytes']:.2f}x); root metadata "
            f"{r['metadata_bytes'] / 1e3:.1f} kB"
        )
    by_size = {r["size"]: r for r in rows}
    for small_size, large_size in (("1M", "4M"), ("4M", "era5day"), ("1M", "era5day")):
        if {small_size, large_size} <= set(by_size):
            small, large = by_size[small_size], by_size[large_size]
            print(
                f"Peak RSS {large_size} / {small_size}: driver "
                f"{large['driver_rss_mb'] / small['driver_rss_mb']:.2f}x, largest worker "
                f"{large['worker_rss_mb'] / small['worker_rss_mb']:.2f}x (its own memory, "
                f"USS: {large['worker_private_mb'] / small['worker_private_mb']:.2f}x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,4M", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, size, folder = args.child
        result = make_input(size, folder) if step == "input" else child(size, folder)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return
    rows = []
    for size in args.sizes.split(","):
        print(f"running {size} ({' x '.join(map(str, SIZES[size]))}) ...", flush=True)
        folder = tempfile.mkdtemp(prefix=f"gpgrid_scale_{size}_")
        made = run_child("input", size, folder)
        row = made and run_child("run", size, folder)
        if row:
            rows.append({**row, "input_seconds": made["input_seconds"]})
    report(rows)


def run_child(step: str, size: str, folder: str) -> dict | None:
    """Run one step in a fresh process; its result, or None after printing why it failed."""
    env = {**os.environ, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp/ray_gpgrid")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", step, size, folder],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        print(f"  {size} {step} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        return None
    return json.loads(lines[-1].removeprefix(RESULT_TAG))


if __name__ == "__main__":
    main()
