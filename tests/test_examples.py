"""Example jobs end to end on real data, on a real local Ray, into real zarr stores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jobs.examples import nyc_airports

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_nyc_airports_example_writes_filled_series_with_std(tmp_path) -> None:
    """Three weeks of hourly weather: two held-out days of temperature are filled from dew
    point and humidity to within a few degrees F, and every hour gets a mean and a std."""
    scores = nyc_airports.main(["--out", str(tmp_path), "--days", "21"])
    out = xr.open_zarr(tmp_path / "nyc_filled.zarr")
    assert out["temp"].dims == ("time", "station") and out.sizes == {"time": 504, "station": 3}
    assert list(out["station"].values) == ["EWR", "JFK", "LGA"]
    for var in nyc_airports.VARIABLES:
        assert np.isfinite(out[var].values).all() and (out[f"{var}_std"].values > 0).all()
    assert scores["n"] == 48  # days 5 and 15, at EWR and JFK
    assert scores["rmse"] < 3.0  # 1.6 degF measured over four weeks
    assert scores["coverage95"] > 0.8
