"""A global longitude: tiles at one end read across the date line to the other."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.runner import run_pipeline
from pipeline.tiling import plan_tiles

MATERN32 = (AxisKernel("matern32"),)

pytestmark = pytest.mark.usefixtures("ray_cluster")

NLON, NLAT, NT = 96, 24, 3


def global_field(lon_offset: float = 0.0) -> xr.Dataset:
    """A field smooth around the globe, observed with a gap that straddles the date line."""
    lon = (np.arange(NLON) * 3.75 + lon_offset) % 360
    lat = -45 + 3.75 * np.arange(NLAT)
    t = np.arange(NT, dtype=float)
    rad = np.deg2rad(lon)
    f = (np.sin(rad)[None, None] + 0.5 * np.cos(3 * rad)[None, None]) * np.cos(np.deg2rad(lat))[
        None, :, None
    ] + 0.1 * t[:, None, None]
    noise = 0.05 * np.random.default_rng(1).standard_normal(f.shape)
    obs = f + noise
    gap = (lon > 350) | (lon < 12)  # the date line region, in the data's own longitudes
    obs[:, 8:16, gap] = np.nan
    return xr.Dataset(
        {"sst": (("time", "lat", "lon"), obs), "sst_true": (("time", "lat", "lon"), f)},
        coords={"time": t, "lat": lat, "lon": lon},
    )


def run(ds: xr.Dataset, folder, name: str, wrap: bool, blend=()) -> xr.Dataset:  # noqa: ANN001
    source = str(folder / f"{name}_in.zarr")
    ds.to_zarr(source, zarr_format=3, consolidated=True)
    config = PipelineConfig(
        input_path=source,
        variables=("sst",),
        dims=("time", "lat", "lon"),
        output_path=str(folder / f"{name}.zarr"),
        tile=(3, 24, 24),
        halo=(0, 6, 12),
        model=ModelConfig(kernels=MATERN32 * 3, max_points=900),
        max_in_flight=2,
        wrap=("lon",) if wrap else (),
        blend=blend,
    )
    run_pipeline(config, progress=False)
    return xr.open_zarr(config.output_path)


def test_windows_at_the_ends_reach_around(tmp_path) -> None:
    tiles = plan_tiles((3, 24, 96), (3, 24, 24), (0, 6, 12), wrap=(False, False, True))
    assert tiles[0].window[2] == slice(-12, 36) and tiles[-1].window[2] == slice(60, 108)
    with pytest.raises(ValueError, match="needs tile \\+ 2 x halo <= 96"):
        plan_tiles((3, 24, 96), (3, 24, 80), (0, 6, 12), wrap=(False, False, True))


def test_the_date_line_is_filled_as_if_it_were_anywhere_else(tmp_path) -> None:
    """Wrapped, the gap across the date line is filled as well as the same data rotated
    by half the globe (gap mid-grid, no wrap needed); clipped, the edge tiles lose half
    their context and do worse."""
    data = global_field()
    rotated = data.roll(lon=NLON // 2, roll_coords=True)
    rotated = rotated.assign_coords(lon=180 + 3.75 * np.arange(NLON))  # 180 ... 536.25
    wrapped = run(data, tmp_path, "wrapped", wrap=True)
    clipped = run(data, tmp_path, "clipped", wrap=False)
    middle = run(rotated, tmp_path, "middle", wrap=False).roll(lon=-(NLON // 2))
    gap = np.isnan(data["sst"].values)
    truth = data["sst_true"].values

    def rmse(out: xr.Dataset) -> float:
        return float(np.sqrt(np.mean((out["sst"].values - truth)[gap] ** 2)))

    assert rmse(wrapped) < 1.2 * rmse(middle)
    assert rmse(wrapped) < 0.8 * rmse(clipped)
    blended = run(data, tmp_path, "blended", wrap=True, blend=(0, 3, 6))
    assert rmse(blended) < 1.2 * rmse(middle)
    assert np.isfinite(blended["sst"].values).all() and (blended["sst_std"].values > 0).all()
