"""The model table: which model a tile's variable gets, and that a window too big for kiss
keeps the run's shared hyperparameters when it goes to SVGP (the switch's threshold is a
parameter of the table, so a small window exercises it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.models import MODELS, ExactRow, IcmRow, KissRow, LmcRow, ModelTable, SvgpRow
from pipeline.store import consolidated_v3_allowed
from pipeline.tasks import predict_tile
from pipeline.tiling import plan_tiles
from tests.helpers import tile_work

SHAPE = (2, 10, 8)
DIMS = ("time", "lat", "lon")
SHARED = {"tas": {"lengthscales": [3.0, 1.5, 2.0], "outputscale": 0.8, "noise": 0.01, "tiles": 4}}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> PipelineConfig:
    """A smooth gappy field over one kiss tile (about 110 observed cells)."""
    rng = np.random.default_rng(0)
    _, lat, lon = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    values = np.sin(lat / 3) + np.cos(lon / 4) + 0.05 * rng.standard_normal(SHAPE)
    values[rng.random(SHAPE) < 0.3] = np.nan
    ds = xr.Dataset(
        {"tas": (DIMS, values.astype(np.float32))},
        coords={"time": np.arange(2.0), "lat": 40 + 0.25 * np.arange(10), "lon": np.arange(8.0)},
    )
    path = str(tmp_path_factory.mktemp("table") / "in.zarr")
    with consolidated_v3_allowed():
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    model = ModelConfig((AxisKernel("matern32"),) * 3, inducing=32, epochs=1, max_iter=20)
    return PipelineConfig(path, ("tas",), DIMS, "unused.zarr", SHAPE, (0, 0, 0), model)


def test_the_table_picks_one_model_per_type_and_size() -> None:
    small = ModelTable(kiss_max_observations=50)
    assert isinstance(small.row("kiss", False, 50), KissRow)
    assert isinstance(small.row("kiss", False, 51), SvgpRow)
    assert isinstance(MODELS.row("kiss", False, 51), KissRow)
    assert isinstance(MODELS.row("exact", False, 10**9), ExactRow)
    assert isinstance(MODELS.row("svgp", False), SvgpRow)
    assert isinstance(MODELS.row("exact", True), IcmRow)
    assert isinstance(MODELS.row("svgp", True), LmcRow)


def test_a_window_switched_to_svgp_keeps_the_shared_hyperparameters(config) -> None:
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    result = predict_tile(tile_work(config, SHARED), tile, ModelTable(kiss_max_observations=50))
    info = result.diagnostics["variables"]["tas"]
    assert info["n_observed"] > 50 and info["model"] == "svgp"
    assert info["fit"]["stop_reason"] == "shared hyperparameters from 4 sampled tiles"
    assert info["fit"]["iterations"] == 0
    kernel = info["hyperparameters"]["kernel"]
    assert kernel["outputscale"] == pytest.approx(0.8, rel=1e-6)
    assert info["hyperparameters"]["noise"] == pytest.approx(0.01, rel=1e-6)
    assert np.isfinite(result.predictions["tas"]).all()


def test_below_the_threshold_kiss_conditions_on_the_same_shared_values(config) -> None:
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    result = predict_tile(tile_work(config, SHARED), tile)
    info = result.diagnostics["variables"]["tas"]
    assert info["model"] == "kiss"
    assert info["fit"]["stop_reason"] == "shared hyperparameters from 4 sampled tiles"
    assert info["hyperparameters"]["noise"] == pytest.approx(0.01, rel=1e-6)


@pytest.mark.parametrize("model_type", ["kiss", "svgp"])
def test_max_iter_reaches_the_subsample_fit(config, model_type: str) -> None:
    """model.max_iter bounds the starting exact fit of kiss and svgp tiles: 1 iteration and
    60 start (and so end) elsewhere; the same budget twice gives the same tile."""
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)

    def fitted(max_iter: int) -> dict:
        model = dataclasses.replace(config.model, type=model_type, max_iter=max_iter)
        result = predict_tile(tile_work(dataclasses.replace(config, model=model)), tile)
        return result.diagnostics["variables"]["tas"]["hyperparameters"]

    one = fitted(1)
    assert one == fitted(1)
    assert one["kernel"] != fitted(60)["kernel"]
