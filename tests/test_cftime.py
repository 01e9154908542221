"""Climate-model calendars (360_day, noleap, ...): time is days in the data's own calendar, and
a run on a real local Ray gives what it gives on the same data with time in plain days."""

from __future__ import annotations

import cftime
import numpy as np
import pytest
import xarray as xr

from jobs.plots import _step_index
from pipeline.config import AxisKernel, Forecast, ModelConfig, PipelineConfig
from pipeline.coordinates import coordinate_values
from pipeline.errors import InputError
from pipeline.inputs import check_input, open_input
from pipeline.runner import run_pipeline
from pipeline.target import forecast_stores, resolve_forecast

MATERN32 = (AxisKernel("matern32"),)

pytestmark = pytest.mark.usefixtures("ray_cluster")

DIMS = ("time", "lat", "lon")
DAYS = 8
# Both cross the end of February, where the calendars differ from the standard one.
STARTS = {"360_day": "2000-02-27", "noleap": "2000-02-25"}
MODEL = ModelConfig(kernels=MATERN32 * 3, fit_points=200, max_iter=30)


def cftime_days(calendar: str, days: int = DAYS) -> np.ndarray:
    return xr.date_range(
        STARTS[calendar], periods=days, freq="D", calendar=calendar, use_cftime=True
    ).values


def field(time: np.ndarray) -> xr.Dataset:
    """A smooth field on an 8 x 10 x 10 grid with a fifth of its cells missing."""
    t, lat, lon = np.arange(DAYS), np.linspace(40, 44.5, 10), np.linspace(5, 9.5, 10)
    values = (
        280
        + np.sin(t / 3)[:, None, None]
        + np.cos(lat / 2)[None, :, None]
        + 0.5 * np.sin(lon)[None, None, :]
    )
    values[np.random.default_rng(1).random(values.shape) < 0.2] = np.nan
    data = xr.Variable(DIMS, values.astype("float32"), {"units": "K"})
    return xr.Dataset({"tas": data}, coords={"time": time, "lat": lat, "lon": lon})


def config_for(input_path: str, output_path: str, **changes: object) -> PipelineConfig:
    base = dict(
        input_path=input_path,
        variables=("tas",),
        dims=DIMS,
        output_path=output_path,
        tile=(4, 10, 10),
        halo=(2, 0, 0),
        model=MODEL,
        max_in_flight=2,
    )
    base.update(changes)
    return PipelineConfig(**base)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """The same field with a 360_day, a noleap and a plain numeric (days) time axis."""
    folder = tmp_path_factory.mktemp("calendars")
    times = {calendar: cftime_days(calendar) for calendar in STARTS}
    times["days"] = np.arange(DAYS, dtype=float)
    paths = {}
    for name, time in times.items():
        paths[name] = str(folder / f"{name}.zarr")
        field(time).to_zarr(paths[name], zarr_format=3, consolidated=False)
    return paths


@pytest.fixture(scope="module")
def plain_run(stores, tmp_path_factory) -> xr.Dataset:
    out = str(tmp_path_factory.mktemp("plain") / "out.zarr")
    run_pipeline(config_for(stores["days"], out), progress=False)
    return xr.open_zarr(out)


@pytest.mark.parametrize(
    ("calendar", "start"),
    [("360_day", "2000-02-29"), ("noleap", "2000-02-28"), ("all_leap", "2001-02-28")],
)
def test_days_count_in_the_data_calendar(calendar, start) -> None:
    time = xr.date_range(start, periods=3, freq="D", calendar=calendar, use_cftime=True)
    days = coordinate_values(xr.DataArray(time.values, dims="time", name="time"))
    np.testing.assert_array_equal(days, [0.0, 1.0, 2.0])


def test_julian_months_count_their_days() -> None:
    time = xr.date_range("1900-02-01", periods=3, freq="MS", calendar="julian", use_cftime=True)
    days = coordinate_values(xr.DataArray(time.values, dims="time", name="time"))
    np.testing.assert_array_equal(days, [0.0, 29.0, 60.0])  # 1900 is a julian leap year


def test_a_missing_360_day_step_is_named_in_its_calendar() -> None:
    time = np.delete(cftime_days("360_day", DAYS + 1), 3)  # 2000-02-30
    with pytest.raises(InputError, match="missing 1 step\\(s\\) of 1 day\\(s\\): 2000-02-30;"):
        check_input(field(time), config_for("in.zarr", "out.zarr"))


@pytest.mark.parametrize("calendar", list(STARTS))
def test_a_run_keeps_the_calendar_and_equals_a_run_in_plain_days(
    stores, plain_run, tmp_path, calendar
) -> None:
    out = str(tmp_path / "out.zarr")
    run_pipeline(config_for(stores[calendar], out), progress=False)
    result = xr.open_zarr(out)
    assert isinstance(result["time"].values[0], cftime.datetime)
    assert result["time"].values[0].calendar == calendar
    np.testing.assert_array_equal(result["time"].values, cftime_days(calendar))
    for name in ("tas", "tas_std"):
        assert np.isfinite(result[name].values).all()
        np.testing.assert_allclose(result[name].values, plain_run[name].values, rtol=1e-6)


def test_a_forecast_steps_on_in_the_360_day_calendar(stores, tmp_path) -> None:
    """The steps after 2000-02-29 are 2000-02-30 and 2000-03-01; the values are those of
    the same forecast on a plain numeric time axis."""
    forecast = Forecast("time", steps=2, issue_time="2000-02-29T00:00Z")
    runs = {}
    for name in ("360_day", "days"):
        issue = forecast if name == "360_day" else Forecast("time", 2, issue_time="2")
        folder = tmp_path / name
        config = config_for(stores[name], str(folder), forecast=issue, tile=(2, 10, 10))
        run_pipeline(config, progress=False)
        (store,) = forecast_stores(folder).values()
        runs[name] = xr.open_zarr(store)
    result = runs["360_day"]
    days = cftime_days("360_day")
    np.testing.assert_array_equal(result["time"].values, days[3:5])
    assert result["forecast_reference_time"].values[()] == days[2]
    np.testing.assert_array_equal(result["forecast_period"].values, np.array([1, 2], "m8[D]"))
    assert list(forecast_stores(tmp_path / "360_day")) == [days[2]]
    for name in ("tas", "tas_std"):
        np.testing.assert_allclose(result[name].values, runs["days"][name].values, rtol=1e-6)


def test_a_360_day_issue_time_that_is_no_standard_date(stores) -> None:
    forecast = Forecast("time", steps=2, issue_time="2000-02-30")
    ds = open_input(stores["360_day"])
    resolved, output_path = resolve_forecast(forecast, "f", ds)
    assert resolved.issue == "2000-02-30T00:00:00"
    assert resolved.history == 4 and resolved.step == 1.0
    assert output_path.endswith("20000230T000000Z.zarr")


def test_plot_at_a_date_of_its_own_calendar() -> None:
    """`gpgrid plot --at 2000-02-30` finds the step of a 360_day axis; a date outside is refused."""
    time = xr.DataArray(cftime_days("360_day", DAYS), dims="time", name="time")
    assert _step_index(time, "2000-02-30") == list(map(str, time.values)).index(
        "2000-02-30 00:00:00"
    )
    with pytest.raises(InputError, match="outside 'time'"):
        _step_index(time, "2003-01-01")
