"""Reading input grids: open a zarr or netCDF store lazily and turn coordinates into numbers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")


def open_input(path: str) -> xr.Dataset:
    """Open a zarr store or netCDF file lazily (nothing is read until indexed)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"input {path!r} does not exist: check input.path in the spec")
    if path.endswith(NETCDF_SUFFIXES):
        return xr.open_dataset(path, chunks=None)
    with warnings.catch_warnings():  # a store without consolidated metadata is fine here
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        return xr.open_zarr(path, chunks=None)


def coordinate_values(coord: xr.DataArray) -> np.ndarray:
    """A 1-D coordinate as float64: datetimes become days since the first value."""
    values = coord.values
    if np.issubdtype(values.dtype, np.datetime64):
        return (values - values[0]) / np.timedelta64(1, "D")
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(
            f"coordinate {coord.name!r} has dtype {values.dtype}; it must be numeric or datetime64"
        )
    return values.astype(np.float64)


def check_input(
    ds: xr.Dataset,
    variables: tuple[str, ...],
    dims: tuple[str, ...],
    station_dim: str | None = None,
    station_coords: tuple[str, ...] = (),
) -> None:
    """Refuse a dataset that lacks the spec's variables, dims or station coordinates."""
    for var in variables:
        if var not in ds.data_vars:
            raise KeyError(
                f"variable {var!r} is not in the input; it has {sorted(map(str, ds.data_vars))}: "
                "fix input.variables"
            )
        if set(ds[var].dims) != set(dims):
            raise ValueError(
                f"variable {var!r} has dims {ds[var].dims}, the spec says {dims}: fix input.dims"
            )
    for dim in dims:
        if dim not in ds.coords and dim != station_dim:
            raise KeyError(f"dim {dim!r} has no coordinate in the input: add one or fix input.dims")
    for name in station_coords:
        if name not in ds.coords or ds[name].dims != (station_dim,):
            found = ds[name].dims if name in ds.coords else "missing"
            raise KeyError(
                f"station coordinate {name!r} must be a coordinate along {station_dim!r}; "
                f"found {found}: fix input.stations.coords"
            )
        coordinate_values(ds[name])  # numeric or refused
