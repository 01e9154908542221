"""The grid a run predicts: the input's own grid, or the steps after it (a forecast).

A forecast is issued at a time: it reads only the data at or before that time and
predicts the `steps` cells that follow them. Each issue time gets its own store,
`<output folder>/<issue time>.zarr`, with CF coordinates `forecast_reference_time`
(the issue time, a scalar) and `forecast_period` (lead time along the forecast dim);
`open_forecasts` stacks a folder's finished forecasts along the issue time.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cftime
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from pipeline.config import Forecast
from pipeline.coordinates import coordinate_values, is_cftime
from pipeline.errors import InputError
from pipeline.journal import is_complete, read_plan
from pipeline.work import WindowSource

FORECAST_COORDS = ("forecast_reference_time", "forecast_period")
MIN_HISTORY = 2
EDGE_SLACK = 1e-3  # of a step: a new grid may touch the data's ends to rounding
# Calendars whose times xarray decodes to numpy datetimes; others are cftime datetimes.
REAL_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")


def resolve_forecast(
    forecast: Forecast, output_folder: str, ds: xr.Dataset
) -> tuple[Forecast, str]:
    """The forecast with its issue time, history and step fixed from the data, and its
    store's path in `output_folder`."""
    times = ds[forecast.dim]
    values = coordinate_values(times)
    if np.any(np.diff(values) <= 0):
        raise InputError(
            f"the forecast dim {forecast.dim!r} must increase along the data: sort the input"
        )
    issue = _issue_value(forecast.issue_time, times)
    history = int(np.searchsorted(times.values, issue, side="right"))
    if history < MIN_HISTORY:
        raise InputError(
            f"issue time {forecast.issue_time} leaves {history} step(s) of data before it (the "
            f"data start at {_label(times.values[0])}): choose a later target.issue_time"
        )
    step = float(np.median(np.diff(values[:history])))
    # The resolved issue time replaces how it was asked for (ISO with or without a zone,
    # from a schedule or the command line), so the plan of one issue time is one plan.
    resolved = replace(forecast, issue_time=None, issue=_label(issue), history=history, step=step)
    return resolved, f"{output_folder.rstrip('/')}/{_stamp(issue)}.zarr"


def _issue_value(issue_time: str | None, times: xr.DataArray) -> np.generic:
    """The issue time in the coordinate's own type (the last time in the data when None)."""
    if issue_time is None:
        return times.values[-1]
    try:
        if np.issubdtype(times.dtype, np.datetime64):
            stamp = pd.Timestamp(issue_time)
            if stamp.tzinfo is not None:
                stamp = stamp.tz_convert("UTC").tz_localize(None)
            return np.datetime64(stamp, "ns")
        if is_cftime(times.values):
            return cftime_at(issue_time, times.values[0].calendar)
        return np.float64(issue_time)
    except ValueError:
        raise InputError(
            f"target.issue_time {issue_time!r} is not a time like the data's "
            f"{_label(times.values[-1])}: give an ISO 8601 time, e.g. 2000-01-01T00:00 (in "
            "the data's calendar, in UTC)"
        ) from None


def cftime_at(text: str, calendar: str) -> cftime.datetime:
    """An ISO 8601 time (UTC, or without a zone) in a cftime calendar, where dates such as
    2000-02-30 (360_day) exist."""
    local = text.removesuffix("Z").removesuffix("+00:00")
    return xr.date_range(local, periods=1, calendar=calendar, use_cftime=True)[0]


def _label(value: np.generic | cftime.datetime) -> str:
    """An issue time as text that reads back exactly: ISO 8601, or the number in full."""
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, cftime.datetime):
        return value.isoformat()
    return repr(float(value))


def _stamp(value: np.generic | cftime.datetime) -> str:
    """A file-name-safe form of an issue time, to the second: 20000101T000000Z, or the number."""
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).strftime("%Y%m%dT%H%M%SZ")
    if isinstance(value, cftime.datetime):
        return value.strftime("%Y%m%dT%H%M%SZ")
    return np.format_float_positional(float(value), trim="-")


def new_axes(regrid: tuple[tuple[str, float, float, int], ...]) -> dict[str, np.ndarray]:
    """The coordinates of a new target grid, by dim (only the dims given new ones)."""
    return {dim: start + step * np.arange(size) for dim, start, step, size in regrid}


def check_new_grid(regrid: tuple[tuple[str, float, float, int], ...], ds: xr.Dataset) -> None:
    """A new grid must lie within the data along increasing numeric coordinates (no
    extrapolation), so every target cell has data around it."""
    for dim, values in new_axes(regrid).items():
        source = ds[dim].values
        if not np.issubdtype(source.dtype, np.number) or np.any(np.diff(source) <= 0):
            raise InputError(
                f"target.grid for {dim!r} needs the input's {dim!r} coordinate to be numeric "
                f"and increasing: sort the input first (ds.sortby({dim!r})), or predict on "
                "the input's own grid (target.kind: same_grid)"
            )
        low, high = float(source[0]), float(source[-1])
        slack = EDGE_SLACK * (values[1] - values[0] if len(values) > 1 else high - low)
        if values[0] < low - slack or values[-1] > high + slack:
            raise InputError(
                f"target.grid for {dim!r} spans {values[0]:g} to {values[-1]:g}, beyond the "
                f"input's {low:g} to {high:g}: gpgrid does not extrapolate; shrink the grid"
            )


def target_dataset(source: WindowSource, ds: xr.Dataset) -> xr.Dataset:
    """A lazy stand-in for the output grid: its coordinates and the variables' attributes."""
    if source.regrid:
        return _regridded(source, ds)
    if source.forecast is None:
        return ds
    forecast = source.forecast
    dim = forecast.dim
    past = ds[dim].values[: forecast.history]
    steps = np.arange(1, forecast.steps + 1)
    if np.issubdtype(past.dtype, np.datetime64):
        spacing = np.median(np.diff(past).astype("timedelta64[ns]").astype(np.int64))
        future = past[-1] + (steps * spacing).astype("timedelta64[ns]")
        issue = np.datetime64(pd.Timestamp(forecast.issue), "ns")
        lead = (future - issue).astype("timedelta64[ns]")
    elif is_cftime(past):  # the calendar's own arithmetic: 2000-02-30 + 1 day in 360_day
        future = np.array([past[-1] + timedelta(days=forecast.step * k) for k in steps])
        issue = cftime_at(forecast.issue, past[-1].calendar)
        lead = future - issue
    else:
        future = past[-1] + steps * forecast.step
        issue = np.float64(forecast.issue)
        lead = future - issue
    coords = {d: ds[d] for d in source.dims if d != dim and d in ds.coords}
    coords.update({name: ds[name] for name in source.station_coords})
    coords[dim] = xr.Variable(dim, future, ds[dim].attrs)
    coords["forecast_reference_time"] = xr.Variable(
        (), issue, {"standard_name": "forecast_reference_time", "long_name": "issue time"}
    )
    coords["forecast_period"] = xr.Variable(
        dim, lead, {"standard_name": "forecast_period", "long_name": "lead time"}
    )
    return _template(source, ds, coords, {dim: forecast.steps})


def _regridded(source: WindowSource, ds: xr.Dataset) -> xr.Dataset:
    axes = new_axes(source.regrid)
    coords = {
        d: xr.Variable(d, axes[d], ds[d].attrs) if d in axes else ds[d]
        for d in source.dims
        if d in ds.coords
    }
    return _template(source, ds, coords, {d: len(values) for d, values in axes.items()})


def _template(source: WindowSource, ds: xr.Dataset, coords: dict, sizes: dict) -> xr.Dataset:
    """The output grid's stand-in: lazy zeros with the variables' attributes; dims in
    `sizes` take those lengths, the others the input's."""
    shape = tuple(sizes.get(d, ds.sizes[d]) for d in source.dims)
    data_vars = {
        var: xr.Variable(source.dims, da.zeros(shape, dtype=np.float32), ds[var].attrs)
        for var in source.variables
    }
    return xr.Dataset(data_vars, coords=coords)


def _issue_key(label: str, store: Path) -> datetime | cftime.datetime | float:
    """A recorded issue time as a UTC datetime, a cftime datetime in the store's calendar
    (360_day, noleap ...), or a number for numeric time axes."""
    try:
        return float(label)
    except ValueError:
        pass
    issue = zarr.open_array(store, path="forecast_reference_time", mode="r")
    calendar = issue.attrs.get("calendar", "standard")
    if calendar in REAL_CALENDARS:
        return pd.Timestamp(label).to_pydatetime().replace(tzinfo=UTC)
    return cftime_at(label, calendar)


def forecast_stores(folder: str | Path) -> dict[datetime | cftime.datetime | float, Path]:
    """The finished forecast stores in an output folder, by issue time (UTC datetimes,
    cftime datetimes for other calendars, or numbers for numeric time axes)."""
    found: dict[datetime | cftime.datetime | float, Path] = {}
    for store in sorted(Path(folder).glob("*.zarr")):
        if not is_complete(str(store)):
            continue
        issue = (read_plan(str(store)).get("forecast") or {}).get("issue")
        if issue is not None:
            found[_issue_key(issue, store)] = store
    return found


def open_forecasts(folder: str | Path) -> xr.Dataset:
    """Every finished forecast in `folder`, stacked along forecast_reference_time, each
    indexed by lead time (forecast_period); the valid times become a 2-D `time`-like coord."""
    stores = forecast_stores(folder)
    if not stores:
        raise InputError(
            f"no finished forecast stores in {str(folder)!r}: give the output.path of a "
            "forecast job that has run"
        )
    parts = []
    for store in stores.values():
        ds = xr.open_zarr(store)
        dim = ds["forecast_period"].dims[0]
        parts.append(ds.swap_dims({dim: "forecast_period"}).expand_dims("forecast_reference_time"))
    return xr.concat(
        parts, dim="forecast_reference_time", coords="different", compat="equals", join="outer"
    )
