"""Fault injection for tests, outside any config: a tile task's worker that dies once.

A test sets CRASH_ONCE_ENV to `<tile index>:<marker file>` in the driver's environment;
the driver forwards it to its tile tasks (`task_runtime_env`), and the worker running that
tile exits at once unless the marker exists, creating it first, so the retry runs clean.
Unset (always, outside tests) it changes nothing: no runtime environment, no check.
"""

from __future__ import annotations

import os
from pathlib import Path

CRASH_ONCE_ENV = "GPGRID_TEST_CRASH_ONCE"


def task_runtime_env() -> dict:
    """Ray task options that carry the driver's fault setting to its workers, or none."""
    value = os.environ.get(CRASH_ONCE_ENV)
    return {"runtime_env": {"env_vars": {CRASH_ONCE_ENV: value}}} if value else {}


def crash_if_injected(tile_index: int) -> None:
    """End this worker process mid-tile if a test asked for it for this tile, once."""
    value = os.environ.get(CRASH_ONCE_ENV)
    if not value:
        return
    index, marker = value.split(":", 1)
    if int(index) == tile_index and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
