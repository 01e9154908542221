"""Predicting on a new grid (target.kind grid) through a real Ray, against the same job on the
input's own grid."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jobs.run import run_job
from jobs.spec import SpecError, parse_spec
from pipeline.synthetic import SyntheticGrid, write_synthetic

pytestmark = pytest.mark.usefixtures("ray_cluster")


def spec(input_path, output_path, target: dict | None = None) -> dict:  # noqa: ANN001
    out = {
        "input": {"path": str(input_path), "variables": ["tas"], "dims": ["time", "lat", "lon"]},
        "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern32"}},
        "tiling": {
            "tile": {"time": 4, "lat": 12, "lon": 12},
            "halo": {"time": 0, "lat": 4, "lon": 4},
            "blend": {},  # a new grid is never blended: compare like with like
        },
        "output": {"path": str(output_path)},
    }
    if target:
        out["target"] = target
    return out


def test_a_finer_grid_agrees_with_the_input_grid_where_they_meet(tmp_path) -> None:
    """Lat and lon at half the spacing: at the cells shared with the input grid the means
    equal the same-grid run's, and the new cells in between are filled smoothly."""
    source = write_synthetic(
        str(tmp_path / "in.zarr"), SyntheticGrid(shape=(4, 24, 24), seed=3), (4, 24, 24)
    )
    same = run_job(parse_spec(spec(tmp_path / "in.zarr", tmp_path / "same.zarr")), progress=False)
    fine = {"start": 30.0, "step": 0.05, "size": 47}, {"start": -100.0, "step": 0.05, "size": 47}
    target = {"kind": "grid", "grid": {"lat": fine[0], "lon": fine[1]}}
    job = parse_spec(spec(tmp_path / "in.zarr", tmp_path / "fine.zarr", target))
    summary = run_job(job, progress=False)
    out, ref = xr.open_zarr(summary.output_path), xr.open_zarr(same.output_path)
    assert out["tas"].shape == (4, 47, 47) and summary.cells == 4 * 47 * 47
    np.testing.assert_allclose(out["lat"].values, 30.0 + 0.05 * np.arange(47))
    assert np.isfinite(out["tas"].values).all() and (out["tas_std"].values > 0).all()
    shared = out.isel(lat=slice(0, None, 2), lon=slice(0, None, 2))
    scale = float(source["tas_true"].std())
    assert np.abs(shared["tas"].values - ref["tas"].values).max() < 0.02 * scale
    ratio = shared["tas_std"].values / ref["tas_std"].values
    assert 0.8 < np.median(ratio) < 1.25
    between = out["tas"].isel(lat=slice(1, None, 2), lon=slice(0, None, 2)).values
    below, above = ref["tas"].values[:, :-1], ref["tas"].values[:, 1:]
    outside = np.maximum(np.minimum(below, above) - between, between - np.maximum(below, above))
    assert np.quantile(outside, 0.99) < 0.1 * scale


def test_a_new_grid_beyond_the_data_is_refused(tmp_path) -> None:
    write_synthetic(
        str(tmp_path / "in.zarr"), SyntheticGrid(shape=(2, 12, 12), seed=1), (2, 12, 12)
    )
    target = {"kind": "grid", "grid": {"lat": {"start": 29.0, "step": 0.1, "size": 10}}}
    with pytest.raises(ValueError, match="beyond the input's 30 to 31.1: gpgrid does not extrap"):
        run_job(parse_spec(spec(tmp_path / "in.zarr", tmp_path / "o.zarr", target)), progress=False)
    blended = spec(tmp_path / "in.zarr", tmp_path / "o.zarr", target)
    blended["tiling"]["blend"] = {"lat": 2}
    with pytest.raises(SpecError, match="target.kind grid cannot be combined"):
        parse_spec(blended)


def test_station_data_cannot_be_regridded() -> None:
    new_time = {"time": {"start": 0, "step": 1, "size": 2}}
    stations = spec("in.zarr", "o.zarr", {"kind": "grid", "grid": new_time})
    stations["input"] = {
        "path": "in.zarr",
        "variables": ["tas"],
        "dims": ["time", "station"],
        "stations": {"dim": "station", "coords": ["lat", "lon"]},
    }
    stations["model"]["kernel"] = {"time": "matern32", "lat": "matern32", "lon": "matern32"}
    stations["tiling"] = {"tile": {"time": 10}, "halo": {"time": 2}}
    with pytest.raises(SpecError, match="station data have no grid"):
        parse_spec(stations)


def test_a_new_grid_may_touch_the_data_ends_to_rounding() -> None:
    from pipeline.target import check_new_grid

    lat = np.float32(30.1) + np.float32(0.1) * np.arange(5, dtype=np.float32)
    ds = xr.Dataset(coords={"lat": lat.astype(np.float64)})
    check_new_grid(
        (("lat", 30.1, 0.05, 9),), ds
    )  # 30.1 .. 30.5 within float32 rounding of the data's ends
