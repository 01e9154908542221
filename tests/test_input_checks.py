"""Bad input is refused on the driver, before the output store exists, by an InputError that
names the coordinate, variable or file and the fix (pipeline.inputs, .coordinates, .value_scan)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.coordinates import check_axis, coordinate_values, is_regular
from pipeline.errors import InputError
from pipeline.grid import snapped, window_lattice
from pipeline.inputs import check_input, open_input
from pipeline.runner import run_pipeline
from pipeline.value_scan import MIN_OBSERVATIONS, scan_input, scan_variable

MATERN32 = (AxisKernel("matern32"),)

DIMS = ("time", "lat", "lon")
SHAPE = (6, 5, 4)


def grid(**coords: object) -> xr.Dataset:
    """A small (time, lat, lon) dataset of finite values; `coords` replace the regular ones."""
    axes = {
        "time": pd.date_range("2000-01-01", periods=SHAPE[0], freq="D"),
        "lat": np.linspace(40.0, 44.0, SHAPE[1]),
        "lon": np.linspace(5.0, 8.0, SHAPE[2]),
    }
    axes.update(coords)
    shape = tuple(len(axes[d]) for d in DIMS)
    values = np.random.default_rng(0).normal(280, 2, shape).astype("float32")
    return xr.Dataset({"tas": (DIMS, values)}, coords=axes)


def config(
    model_type: str = "kiss", path: str = "in.zarr", out: str = "out.zarr"
) -> PipelineConfig:
    return PipelineConfig(
        input_path=path,
        variables=("tas",),
        dims=DIMS,
        output_path=out,
        tile=(3, 5, 4),
        halo=(1, 1, 1),
        model=ModelConfig(kernels=MATERN32 * 3, type=model_type),
    )


def checked(ds: xr.Dataset, run: PipelineConfig) -> None:
    """The driver's checks of a run's input: names and axes, then one pass over the values."""
    check_input(ds, run)
    scan_input(ds, run.variables, run.input_path)


def refused(ds: xr.Dataset, model_type: str = "kiss") -> str:
    with pytest.raises(InputError) as error:
        checked(ds, config(model_type))
    return str(error.value)


def test_irregular_lat_is_refused_under_kiss_and_accepted_under_exact_and_svgp() -> None:
    ds = grid(lat=np.array([40.0, 41.0, 41.7, 43.0, 44.0]))
    message = refused(ds, "kiss")
    assert "'lat' is not regularly spaced" in message and "0.7 to 1.3" in message
    assert "set model.type: exact" in message
    check_input(ds, config("exact"))
    check_input(ds, config("svgp"))
    # float32 rounding (steps uneven by 3e-4 of a step) and a descending axis are regular
    lat = np.linspace(90.0, -90.0, 5).astype("float32")
    lon = (350 + 0.1 * np.arange(4)).astype("float32")
    check_input(grid(lat=lat, lon=lon), config("kiss"))


@pytest.mark.parametrize("model_type", ["kiss", "exact"])
def test_duplicate_coordinate_is_refused(model_type: str) -> None:
    message = refused(grid(lon=np.array([5.0, 6.0, 6.0, 7.0])), model_type)
    assert "'lon' repeats values" in message and "positions 1 and 2" in message
    assert "ds.drop_duplicates('lon')" in message


@pytest.mark.parametrize("model_type", ["kiss", "exact"])
def test_unsorted_coordinate_is_refused(model_type: str) -> None:
    message = refused(grid(lat=np.array([40.0, 41.0, 43.0, 42.0, 44.0])), model_type)
    assert "'lat' is not sorted: it rises to 43 at position 2, then falls to 42" in message
    assert "ds.sortby('lat')" in message


def test_constant_coordinate_is_refused_and_a_single_cell_accepted() -> None:
    message = refused(grid(lon=np.full(4, 7.5)), "exact")
    assert "'lon' has the same value 7.5 at all 4 cells" in message
    assert "give each cell its own coordinate" in message
    check_input(grid(lon=np.array([7.5])), config("kiss"))


def test_nan_coordinate_is_refused() -> None:
    message = refused(grid(lat=np.array([40.0, 41.0, np.nan, 43.0, 44.0])), "exact")
    assert "'lat' has 1 NaN (or NaT) value(s), first at position 2" in message
    assert "fill them or drop those cells" in message


def test_missing_days_under_kiss_are_named_and_exact_accepts_them() -> None:
    days = pd.date_range("2000-01-01", periods=12, freq="D").delete([3, 6, 7, 8, 9, 10])
    ds = grid(time=days)
    message = refused(ds, "kiss")
    assert "'time' is missing 6 step(s) of 1 day(s)" in message
    assert "2000-01-04, 2000-01-07, 2000-01-08, 2000-01-09, 2000-01-10 and 1 more" in message
    assert "set model.type: exact" in message and "make the axis regular" in message
    check_input(ds, config("exact"))


@pytest.mark.parametrize("steps", [100, 8760, 20_000])
def test_one_missing_step_of_a_long_series_is_found(steps: int) -> None:
    """A year of hourly data less one hour is no lattice, however long the series."""
    hours = pd.date_range("2001-01-01", periods=steps, freq="h").delete(steps // 2)
    values = coordinate_values(xr.DataArray(hours, dims="time", name="time"))
    assert not is_regular(values)
    assert np.array_equal(snapped(values), values)
    float32_lon = np.arange(0, 360, 0.25).astype(np.float32).astype(np.float64)
    assert is_regular(float32_lon) and np.array_equal(snapped(float32_lon), np.arange(0, 360, 0.25))


def test_an_axis_drifting_off_any_lattice_is_refused_by_the_check_and_the_lattice_alike() -> None:
    """Every step within 1e-4 of the first, yet the cells drift 0.045 steps off any even
    spacing: the input check and the kiss lattice share one definition and both refuse it,
    while an axis even to float32 rounding passes both."""
    steps = 1 + 0.9e-4 * np.arange(3999) / 4000
    drifting = np.concatenate([[0.0], np.cumsum(steps)])
    coord = xr.DataArray(drifting, dims="x", name="x")
    with pytest.raises(InputError, match=r"'x' is not regularly spaced: its cells drift up to"):
        check_axis(coord, regular=True)
    with pytest.raises(InputError, match="'x' is not regularly spaced"):
        window_lattice([snapped(drifting)], ("x",))
    assert not is_regular(drifting)
    even = (np.arange(4000) * np.float32(0.25)).astype(np.float32).astype(np.float64)
    check_axis(xr.DataArray(even, dims="x", name="x"), regular=True)
    lattice = window_lattice([snapped(even)], ("x",))
    assert is_regular(even) and lattice.spacings == (0.25,)


@pytest.mark.parametrize(("zarr_format", "key"), [(3, "c/1/0/0"), (2, "1.0.0")])
def test_corrupt_chunk_names_variable_chunk_and_file(tmp_path, zarr_format, key) -> None:
    path = tmp_path / "in.zarr"
    grid().to_zarr(
        path, zarr_format=zarr_format, consolidated=False, encoding={"tas": {"chunks": (3, 5, 4)}}
    )
    chunk = path / "tas" / key
    assert chunk.is_file()
    chunk.write_bytes(b"not a zstd frame, just garbage bytes")
    out = tmp_path / "out.zarr"
    with pytest.raises(InputError) as error:
        run_pipeline(config(path=str(path), out=str(out)), progress=False)
    message = str(error.value)
    assert "variable 'tas' cannot be read at chunk (1, 0, 0)" in message
    assert repr(str(chunk)) in message and "restore that chunk" in message
    assert not out.exists()


def test_scan_reads_every_chunk_once_and_counts(tmp_path) -> None:
    ds = grid()
    ds["tas"][0, 0, :3] = np.nan
    path = tmp_path / "in.zarr"
    ds.to_zarr(path, consolidated=False, encoding={"tas": {"chunks": (1, 2, 3)}})
    counts = scan_variable(open_input(str(path)), "tas", str(path))
    values = ds["tas"].values
    assert (counts.cells, counts.finite, counts.infinite) == (values.size, values.size - 3, 0)
    assert counts.minimum == np.nanmin(values) and counts.maximum == np.nanmax(values)
    checked(open_input(str(path)), config(path=str(path)))  # a clean store passes


@pytest.mark.parametrize("observed", [0, 1])
def test_variable_with_too_few_observations_is_refused(observed: int) -> None:
    ds = grid()
    ds["tas"][:] = np.nan
    ds["tas"][0, 0, :observed] = 280.0
    message = refused(ds)
    cells = np.prod(SHAPE)
    assert f"variable 'tas' has {observed} observed (finite) cells out of {cells}" in message
    assert f"nothing to fit (a GP needs at least {MIN_OBSERVATIONS})" in message
    assert "check input.variables or the data's fill value" in message


def test_infinite_values_are_refused() -> None:
    ds = grid()
    ds["tas"][1, 2, :2] = [np.inf, -np.inf]
    message = refused(ds)
    assert "variable 'tas' has 2 infinite value(s) out of 120 cells" in message
    assert "mark them missing" in message


def test_netcdf_scan_and_fill_value_read_as_data_warns(tmp_path) -> None:
    ds = grid()
    ds["tas"][0, 0, 0] = 1e20
    path = tmp_path / "in.nc"
    ds.to_netcdf(path)
    opened = open_input(str(path))
    assert scan_variable(opened, "tas", str(path)).finite == ds["tas"].size
    with pytest.warns(RuntimeWarning, match="1e\\+20 looks like a fill value read as data"):
        checked(opened, config(path=str(path)))
