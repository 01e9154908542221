"""The demo's whole path (generate, run on Ray, score, plot) on a small grid."""

from __future__ import annotations

import pytest
import xarray as xr

from jobs.demo import DEMO_GRID, DEMO_TILES, run_demo
from pipeline.synthetic import SyntheticGrid
from tests.helpers import edge_jump_ratio

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


def test_the_demo_shows_no_tile_edge_in_mean_or_std(tmp_path) -> None:
    """Two tiles along lon, each learning its own hyperparameters, blended over half the
    halo by default: the steps between neighbouring cells across the tile edge are no
    larger than inside the tiles, for the std as for the mean."""
    recipe = SyntheticGrid(shape=(6, 40, 100), seed=7)
    run_demo(tmp_path / "demo.zarr", recipe=recipe, progress=False)
    out = xr.open_zarr(tmp_path / "demo.zarr")
    edge = [DEMO_TILES["kiss"]["lon"]]
    ratios = {name: edge_jump_ratio(out[name].values, 2, edge) for name in ("tas", "tas_std")}
    print(f"across the edge / inside: {ratios}")
    assert all(ratio < 1.2 for ratio in ratios.values()), ratios
