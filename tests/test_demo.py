"""The demo's whole path (generate, run on Ray, score, plot) on a small grid."""

from __future__ import annotations

import pytest
import xarray as xr

from jobs.demo import DEMO_GRID, run_demo
from pipeline.synthetic import SyntheticGrid

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_demo_grid_meets_the_size_promised() -> None:
    cells = DEMO_GRID.shape[0] * DEMO_GRID.shape[1] * DEMO_GRID.shape[2]
    assert cells >= 200_000 and DEMO_GRID.gap_fraction == 0.3


def test_small_demo_writes_store_spec_png_and_scores(tmp_path) -> None:
    recipe = SyntheticGrid(shape=(5, 40, 40), seed=4)
    result = run_demo(tmp_path / "demo.zarr", recipe=recipe, progress=False)
    assert result.summary.cells == 5 * 40 * 40
    assert result.png_path.stat().st_size > 20_000
    assert result.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "matern32" in result.spec_path.read_text()
    out = xr.open_zarr(tmp_path / "demo.zarr")
    assert set(out.data_vars) == {"tas", "tas_std"}
    assert result.scores["n"] == int(0.3 * 5 * 40 * 40)
    assert result.scores["rmse"] < result.scores["truth_std"] / 3
    assert 0.85 <= result.scores["coverage95"] <= 1.0
