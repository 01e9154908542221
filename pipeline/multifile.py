"""Inputs spread over many local netCDF files (a file per day or per month, as archives
ship them), named by a pattern such as `data/sst_*.nc`: opened as one dataset, combined
along their coordinates, read lazily (each task reads only the files its window needs)."""

from __future__ import annotations

import glob

import xarray as xr

from pipeline.errors import InputError

PATTERN_CHARACTERS = "*?["


def is_pattern(path: str) -> bool:
    """Whether a local path is a glob pattern of several files."""
    return any(c in path for c in PATTERN_CHARACTERS)


def pattern_files(pattern: str) -> list[str]:
    """The files `pattern` matches, sorted; InputError when there are none."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise InputError(
            f"input {pattern!r} matches no files: check input.path (a pattern such as "
            "data/sst_*.nc, relative to the spec's folder)"
        )
    return files


def open_netcdf_files(pattern: str) -> xr.Dataset:
    """The files `pattern` matches as one lazy dataset (dask arrays, a chunk per file),
    combined by their coordinates; InputError when they do not form one grid."""
    files = pattern_files(pattern)
    try:
        return xr.open_mfdataset(
            files,
            combine="by_coords",
            chunks={},
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
            parallel=False,
        )
    except (ValueError, KeyError, OSError) as error:
        raise InputError(
            f"the {len(files)} files matching input {pattern!r} do not combine into one "
            f"grid ({error}): they must share every coordinate but the one they split, "
            "and not overlap along it"
        ) from None
