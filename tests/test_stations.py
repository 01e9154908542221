"""Scattered station data through the pipeline on a real local Ray: SVGP, exact and multitask."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jobs.spec import SpecError, parse_spec
from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.runner import run_pipeline

pytestmark = pytest.mark.usefixtures("ray_cluster")

DAYS, STATIONS = 60, 25
BLOCK = (slice(22, 30), slice(None))  # an eight-day temperature outage at every station


def truth(t: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * t / 20) * np.cos(2 * (lat - 40)) + 0.5 * np.sin(
        3 * (lon + 74) + t / 8
    )


@pytest.fixture(scope="module")
def stations(tmp_path_factory):
    """Daily temperature and a correlated dew point at 25 stations; 15% of readings missing,
    and an outage where temperature is missing everywhere but dew point observed."""
    rng = np.random.default_rng(7)
    lat = rng.uniform(40, 42, STATIONS)
    lon = rng.uniform(-75, -73, STATIONS)
    t = np.arange(DAYS, dtype=float)
    f = truth(t[:, None], lat[None], lon[None])
    temp = f + 0.1 * rng.standard_normal(f.shape)
    dewp = 0.9 * f + 0.1 * np.cos(t[:, None] / 5) + 0.1 * rng.standard_normal(f.shape)
    temp[rng.random(f.shape) < 0.15] = np.nan
    dewp[rng.random(f.shape) < 0.15] = np.nan
    temp[BLOCK] = np.nan
    ds = xr.Dataset(
        {
            "temp": (("time", "station"), temp, {"units": "degC"}),
            "dewp": (("time", "station"), dewp, {"units": "degC"}),
        },
        coords={
            "time": np.datetime64("2024-01-01") + np.arange(DAYS) * np.timedelta64(1, "D"),
            "station": [f"S{i:02d}" for i in range(STATIONS)],
            "lat": ("station", lat),
            "lon": ("station", lon),
        },
    )
    path = tmp_path_factory.mktemp("stations") / "stations.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=True)
    return str(path), f


def config(input_path: str, output_path: str, model: ModelConfig, variables) -> PipelineConfig:  # noqa: ANN001
    return PipelineConfig(
        input_path=input_path,
        variables=tuple(variables),
        dims=("time", "station"),
        output_path=output_path,
        tile=(30, 2**31 - 1),
        halo=(5, 0),
        model=model,
        max_in_flight=2,
        station_dim="station",
        station_coords=("lat", "lon"),
    )


def block_rmse(path: str, f: np.ndarray) -> float:
    out = xr.open_zarr(path)
    return float(np.sqrt(np.mean((out["temp"].values[BLOCK] - f[BLOCK]) ** 2)))


KERNELS = (AxisKernel("matern32"),) * 3


def test_svgp_fills_every_station_reading_with_mean_and_std(stations, tmp_path) -> None:
    input_path, f = stations
    out = str(tmp_path / "svgp.zarr")
    model = ModelConfig(kernels=KERNELS, type="svgp", inducing=128, fit_points=300)
    summary = run_pipeline(config(input_path, out, model, ["temp"]), progress=False)
    result = xr.open_zarr(out)
    assert summary.tiles == 2 and summary.cells == DAYS * STATIONS
    assert result["temp"].dims == ("time", "station")
    np.testing.assert_allclose(result["lat"].values, xr.open_zarr(input_path)["lat"].values)
    mean, std = result["temp"].values, result["temp_std"].values
    assert np.isfinite(mean).all() and (std > 0).all()
    assert float(np.sqrt(np.mean((mean - f) ** 2))) < 0.15
    z = (mean - f) / np.sqrt(std**2 + 0.1**2)
    assert 0.85 < float(np.mean(np.abs(z) < 1.96)) <= 1.0


@pytest.mark.parametrize("kind", ["exact", "svgp"])
def test_multitask_fills_a_block_from_the_other_variable(stations, tmp_path, kind) -> None:
    """Temperature is missing everywhere for eight days while dew point was read."""
    input_path, f = stations
    base = ModelConfig(kernels=KERNELS, type=kind, inducing=128, fit_points=300, max_points=1500)
    single = str(tmp_path / "single.zarr")
    run_pipeline(config(input_path, single, base, ["temp"]), progress=False)
    joint = str(tmp_path / "joint.zarr")
    multitask = ModelConfig(**{**base.__dict__, "multitask": True})
    run_pipeline(config(input_path, joint, multitask, ["temp", "dewp"]), progress=False)
    result = xr.open_zarr(joint)
    assert {"temp", "temp_std", "dewp", "dewp_std"} <= set(result.data_vars)
    assert block_rmse(joint, f) < 0.7 * block_rmse(single, f)


def spec(**model) -> dict:  # noqa: ANN003
    return {
        "input": {
            "path": "x.zarr",
            "variables": ["temp"],
            "dims": ["time", "station"],
            "stations": {"dim": "station", "coords": ["lat", "lon"]},
        },
        "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern32"}, **model},
        "tiling": {"tile": {"time": 30}, "halo": {"time": 5}},
        "output": {"path": "y.zarr"},
    }


def test_station_specs_default_to_svgp_and_refuse_kiss_and_station_tiling() -> None:
    cfg = parse_spec(spec()).to_pipeline_config()
    assert cfg.model.type == "svgp" and cfg.input_columns == ("time", "lat", "lon")
    assert cfg.halo == (5, 0)
    with pytest.raises(SpecError, match="kiss needs a regular grid.*use svgp"):
        parse_spec(spec(type="kiss"))
    bad = spec()
    bad["tiling"]["tile"]["station"] = 5
    with pytest.raises(SpecError, match="less the station dim, which is never tiled"):
        parse_spec(bad)
    bad = spec()
    bad["model"]["kernel"] = {"time": "matern32", "station": "matern32"}
    with pytest.raises(SpecError, match=r"give the columns \[.time., .lat., .lon.\]"):
        parse_spec(bad)
