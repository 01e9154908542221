"""Connect to Ray, or start an embedded local one whose workers warm up in the background.

Kept free of torch and xarray imports so that a command can start Ray first and let the
workers import the solvers while the driver is still importing and reading its input.

An embedded Ray ends with its driver, even one killed by SIGKILL, and a rerun cleans up what a
killed run left behind: see `pipeline.reaper`. Connecting to an existing cluster starts nothing.
"""

from __future__ import annotations

import importlib
import os

import ray

from pipeline import reaper

DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2

WARM_MODULES = ("pipeline.tasks",)  # imported by each fresh worker before its first tile


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address`, or start an embedded local Ray when none is given.

    The embedded Ray is watched by a `pipeline.reaper` watchdog that ends all its processes once
    this process is gone; leftovers of earlier drivers that died unwatched are reaped first.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit` jobs
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray_gpgrid")
    cpus = num_cpus or os.cpu_count() or 1
    record = reaper.begin()
    try:
        with reaper.marked(record):
            context = ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=DEFAULT_OBJECT_STORE_BYTES,
                log_to_driver=True,
                logging_level="WARNING",
            )
        record.session_dir = context.address_info.get("session_dir", "")
        reaper.start_watchdog(record)
    except BaseException:
        ray.shutdown()
        reaper.reap(record)  # whatever a half-started cluster left
        raise
    warm = ray.remote(num_cpus=1)(_import_modules)
    for _ in range(cpus):
        warm.remote(WARM_MODULES)


def _import_modules(names: tuple[str, ...]) -> None:
    for name in names:
        importlib.import_module(name)
