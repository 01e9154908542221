"""Shared by the command-line tests: a small valid job spec and the `gpgrid` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A 3-tile-deep job over a synthetic (time, lat, lon) store at in.zarr, writing out.zarr.
SMALL_SPEC = {
    "input": {"path": "in.zarr", "variables": ["tas"], "dims": ["time", "lat", "lon"]},
    "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern52"}},
    "tiling": {
        "tile": {"time": 3, "lat": 10, "lon": 10},
        "halo": {"time": 1, "lat": 3, "lon": 3},
    },
    "output": {"path": "out.zarr"},
}


def gpgrid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed `gpgrid` command in `cwd`, capturing its output."""
    script = Path(sys.executable).parent / "gpgrid"
    return subprocess.run(
        [str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
