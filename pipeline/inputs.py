"""Reading input grids: open a zarr or netCDF store lazily, and check on the driver, before a
run starts, that it holds what the spec names in a shape the model can take, so bad input
fails there with a message that names the fix instead of deep inside a Ray task."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from pipeline.config import PipelineConfig
from pipeline.coordinates import check_axis, check_finite, coordinate_values
from pipeline.errors import InputError
from pipeline.multifile import is_pattern, open_netcdf_files
from pipeline.selection import Selection
from pipeline.storage import Location, as_location

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")


def open_input(source: str | Location, selection: Selection | None = None) -> xr.Dataset:
    """Open a zarr store, netCDF file or pattern of netCDF files lazily (nothing is read
    until indexed), on a local disk or, for zarr, through fsspec (object storage, http);
    cut to `selection` (input.sel) when given."""
    ds = _open(as_location(source))
    return selection.apply(ds) if selection else ds


def _open(place: Location) -> xr.Dataset:
    """The whole input at `place`, lazily."""
    if place.is_local and is_pattern(place.url):
        return open_netcdf_files(place.url)
    if place.is_local and not place.exists():
        raise InputError(f"input {place.url!r} does not exist: check input.path in the spec")
    if is_netcdf(place.url):
        if not place.is_local:
            raise InputError(
                f"input {place.url!r} is a netCDF file on remote storage, which gpgrid reads "
                "only from a local disk: copy it to one, or convert it to zarr"
            )
        return xr.open_dataset(place.url, chunks=None)
    with warnings.catch_warnings():  # a store without consolidated metadata is fine here
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        try:
            return xr.open_zarr(place.zarr_store(), chunks=None)
        except FileNotFoundError:
            if place.is_local:
                raise
            raise InputError(
                f"input {place.url!r} is not a zarr store there (nothing found, or no "
                "metadata): check input.path and input.storage_options in the spec"
            ) from None


def is_netcdf(path: str) -> bool:
    return path.endswith(NETCDF_SUFFIXES)


def check_input(ds: xr.Dataset, config: PipelineConfig) -> None:
    """Refuse a dataset the run cannot use: missing variables, dims or station coordinates,
    and coordinates the model cannot take (its values are checked by value_scan)."""
    _check_names(ds, config)
    _check_covariates(ds, config)
    needs_lattice = config.model.type == "kiss" and not config.model.multitask
    for dim in config.dims:
        if dim != config.station_dim:
            check_axis(ds[dim], regular=needs_lattice)
    for name in config.station_coords:
        check_finite(ds[name], coordinate_values(ds[name]))


def _check_names(ds: xr.Dataset, config: PipelineConfig) -> None:
    """The spec's variables, dims and station coordinates must be in the dataset."""
    for var in config.variables:
        if var not in ds.data_vars:
            raise InputError(
                f"variable {var!r} is not in the input; it has {sorted(map(str, ds.data_vars))}: "
                "fix input.variables"
            )
        if set(ds[var].dims) != set(config.dims):
            raise InputError(
                f"variable {var!r} has dims {ds[var].dims}, the spec says {config.dims}: "
                "fix input.dims"
            )
    for dim in config.dims:
        if dim not in ds.coords and dim != config.station_dim:
            raise InputError(
                f"dim {dim!r} has no coordinate in the input: add one or fix input.dims"
            )
    for name in config.station_coords:
        if name not in ds.coords or ds[name].dims != (config.station_dim,):
            found = ds[name].dims if name in ds.coords else "missing"
            raise InputError(
                f"station coordinate {name!r} must be a coordinate along {config.station_dim!r}; "
                f"found {found}: fix input.stations.coords"
            )


def _check_covariates(ds: xr.Dataset, config: PipelineConfig) -> None:
    """Each covariate must be a numeric variable of the input over some of the run's dims,
    finite on every cell: the mean needs it wherever a cell is read or predicted."""
    for name in config.model.covariates:
        if name not in ds.data_vars:
            raise InputError(
                f"covariate {name!r} is not in the input; it has "
                f"{sorted(map(str, ds.data_vars))}: fix model.covariates"
            )
        covariate = ds[name]
        if not set(covariate.dims) <= set(config.dims) or not np.issubdtype(
            covariate.dtype, np.number
        ):
            raise InputError(
                f"covariate {name!r} has dims {covariate.dims} and dtype {covariate.dtype}: "
                f"it must be numeric over some of input.dims {config.dims}: fix the variable "
                "or model.covariates"
            )
        missing = int(covariate.isnull().sum())
        if missing:
            raise InputError(
                f"covariate {name!r} is missing (NaN) at {missing:,} of its "
                f"{covariate.size:,} cells: a covariate must be known everywhere; fill it "
                "(e.g. from its nearest cells) or drop it from model.covariates"
            )
