"""Forecast jobs and schedules on a real local Ray: issue times, history cut-off, no duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from jobs.run import run_job, schedule_forecasts
from jobs.spec import parse_spec
from pipeline.errors import InputError
from pipeline.target import forecast_stores, open_forecasts

pytestmark = pytest.mark.usefixtures("ray_cluster")

START = pd.Timestamp("2026-01-01")
DAYS = 40


def seasonal_input(path, days: int = DAYS, seed: int = 0) -> xr.Dataset:  # noqa: ANN001
    """Daily temperatures on an 8 x 8 grid: a weekly cycle whose amplitude varies in space,
    plus a slow drift and noise (a field a periodic + Matérn time kernel can carry forward)."""
    gen = np.random.default_rng(seed)
    t = np.arange(days)
    lat, lon = np.linspace(40, 47, 8), np.linspace(5, 12, 8)
    amplitude = 3 + 0.2 * (lat[:, None] - 43) + 0.1 * (lon[None, :] - 8)
    cycle = np.sin(2 * np.pi * t / 7)[:, None, None] * amplitude[None]
    drift = 0.02 * t[:, None, None] + 0.1 * np.sin(lon / 3)[None, None, :]
    values = 280 + cycle + drift + 0.1 * gen.standard_normal((days, 8, 8))
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), values.astype("float32"), {"units": "K"})},
        coords={"time": START + pd.to_timedelta(t, "D"), "lat": lat, "lon": lon},
    )
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return ds


def forecast_spec(input_path, output_path, **schedule) -> dict:  # noqa: ANN001
    spec = {
        "input": {"path": str(input_path), "variables": ["tas"], "dims": ["time", "lat", "lon"]},
        "target": {"kind": "forecast", "steps": 5},
        "model": {
            "type": "kiss",
            "kernel": {"time": "matern52 + periodic(7)", "lat": "matern32", "lon": "matern32"},
        },
        "tiling": {
            "tile": {"time": 5, "lat": 8, "lon": 8},
            "halo": {"time": 28, "lat": 0, "lon": 0},
        },
        "output": {"path": str(output_path), "std": "observation"},  # scored against readings
    }
    if schedule:
        spec["schedule"] = schedule
    return spec


class FakeClock:
    """Time that only moves when the scheduler sleeps."""

    def __init__(self, now: datetime) -> None:
        self.time = now

    def now(self) -> datetime:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.time += timedelta(seconds=max(seconds, 0))


def test_forecast_reads_only_data_up_to_its_issue_time(tmp_path) -> None:
    """Issued on day 29, the forecast covers days 30-34, is close to the truth with calibrated
    intervals, and does not change when the data after the issue time change."""
    truth = seasonal_input(tmp_path / "in.zarr")
    spec = parse_spec(forecast_spec(tmp_path / "in.zarr", tmp_path / "fc"))
    summary = run_job(spec, progress=False, issue_time="2026-01-30")
    out = xr.open_zarr(summary.output_path)
    assert summary.output_path.endswith("20260130T000000Z.zarr")
    expected = pd.date_range("2026-01-31", periods=5, freq="D")
    np.testing.assert_array_equal(out["time"].values, expected.values)
    assert out["forecast_reference_time"].values == np.datetime64("2026-01-30")
    assert out["forecast_period"].values[0] == np.timedelta64(1, "D")
    future = truth["tas"].sel(time=expected).values
    error = out["tas"].values - future
    assert np.sqrt(np.mean(error**2)) < 0.5  # the weekly cycle's amplitude is 3 K
    assert np.mean(np.abs(error) < 1.96 * out["tas_std"].values) > 0.85

    changed = truth.copy(deep=True)
    changed["tas"][30:] = 400.0  # what the forecast must not see
    changed.to_zarr(tmp_path / "in.zarr", mode="w", zarr_format=3, consolidated=False)
    again = run_job(
        parse_spec({**forecast_spec(tmp_path / "in.zarr", tmp_path / "fc2")}),
        progress=False,
        issue_time="2026-01-30",
    )
    np.testing.assert_array_equal(xr.open_zarr(again.output_path)["tas"].values, out["tas"].values)


def test_schedule_runs_three_ticks_and_never_repeats_after_a_restart(tmp_path) -> None:
    seasonal_input(tmp_path / "in.zarr")
    spec = parse_spec(
        forecast_spec(tmp_path / "in.zarr", tmp_path / "fc", cron="0 0 * * *", missed="skip")
    )
    clock = FakeClock(datetime(2026, 1, 20, 0, 30, tzinfo=UTC))
    issued = schedule_forecasts(spec, max_ticks=3, clock=clock)
    days = [datetime(2026, 1, d, tzinfo=UTC) for d in (20, 21, 22)]
    assert issued == days
    forecasts = open_forecasts(tmp_path / "fc")
    np.testing.assert_array_equal(
        forecasts["forecast_reference_time"].values,
        np.array([np.datetime64(d.replace(tzinfo=None), "ns") for d in days]),
    )
    assert forecasts["tas"].shape == (3, 5, 8, 8)
    assert np.isfinite(forecasts["tas"].values).all()
    # each forecast starts the day after its issue time
    first_valid = forecasts["time"].isel(forecast_period=0).values
    np.testing.assert_array_equal(
        first_valid - forecasts["forecast_reference_time"].values, 3 * [np.timedelta64(1, "D")]
    )

    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "fc").rglob("*.json")}
    restarted = FakeClock(datetime(2026, 1, 22, 6, 0, tzinfo=UTC))  # day 22 is already done
    assert schedule_forecasts(spec, max_ticks=1, clock=restarted) == [
        datetime(2026, 1, 23, tzinfo=UTC)
    ]
    assert sorted(forecast_stores(tmp_path / "fc")) == [*days, datetime(2026, 1, 23, tzinfo=UTC)]
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "fc").rglob("*.json")}
    assert {p: after[p] for p in written} == written  # the first three were not touched


def test_tiles_shorter_than_the_forecast_all_read_the_history(tmp_path) -> None:
    """Three steps cut into tiles of two: the second tile (the third step) also reads back
    from the issue time, so no step is left unpredicted."""
    seasonal_input(tmp_path / "in.zarr")
    spec = forecast_spec(tmp_path / "in.zarr", tmp_path / "fc")
    spec["target"]["steps"] = 3
    spec["tiling"]["tile"]["time"] = 2
    summary = run_job(parse_spec(spec), progress=False, issue_time="2026-01-30")
    out = xr.open_zarr(summary.output_path)
    assert summary.tiles == 2
    assert out["tas"].shape == (3, 8, 8) and np.isfinite(out["tas"].values).all()


def test_numeric_issue_times_keep_every_digit() -> None:
    """A numeric time axis: the issue time is recorded and named in full, not rounded."""
    from pipeline.config import Forecast
    from pipeline.target import resolve_forecast

    times = 1_234_560.0 + np.arange(10)
    ds = xr.Dataset({"v": (("time",), np.zeros(10))}, coords={"time": times})
    resolved, output_path = resolve_forecast(Forecast("time", 3, "1234566"), "fc", ds)
    assert resolved.issue == "1234566.0" and resolved.history == 7
    assert output_path.endswith("fc/1234566.zarr")
    assert resolved.issue_time is None  # the plan keeps the resolved time only


def test_an_interrupted_forecast_resumes_after_data_are_appended(tmp_path) -> None:
    """New steps after the issue time do not change what the forecast read: it resumes."""
    seasonal_input(tmp_path / "in.zarr", days=DAYS)
    spec = forecast_spec(tmp_path / "in.zarr", tmp_path / "fc")
    spec["target"]["issue_time"] = str((START + pd.Timedelta(days=DAYS - 1)).date())
    spec["tiling"]["tile"] = {"time": 5, "lat": 4, "lon": 8}
    first = run_job(parse_spec(spec), progress=False)
    record = sorted(Path(f"{first.output_path}.gpgrid", "tiles").glob("*.json"))[0]
    record.unlink()
    Path(f"{first.output_path}.gpgrid", "complete.json").unlink()
    seasonal_input(tmp_path / "in.zarr", days=DAYS + 10)  # ten more days, same history
    again = run_job(parse_spec(spec), progress=False)
    assert again.output_path == first.output_path and again.resumed_tiles == 1
    changed = xr.open_zarr(tmp_path / "in.zarr").load()
    changed["tas"][DAYS - 1] += 5.0
    for var in changed.variables.values():
        var.encoding = {}
    changed.to_zarr(tmp_path / "in.zarr", mode="w", zarr_format=3, consolidated=False)
    record = sorted(Path(f"{first.output_path}.gpgrid", "tiles").glob("*.json"))[0]
    record.unlink()
    Path(f"{first.output_path}.gpgrid", "complete.json").unlink()
    with pytest.raises(InputError, match=r"changed since .*'tas' data were rewritten"):
        run_job(parse_spec(spec), progress=False)
