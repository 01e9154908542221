"""Reading input grids: open a zarr or netCDF store lazily, turn coordinates into numbers, and
check the data on the driver before a run starts, so bad input fails there with a message that
names the fix instead of deep inside a Ray task."""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from pipeline.config import PipelineConfig
from pipeline.errors import InputError

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
# Kept here rather than imported, as pipeline.tasks and pipeline.grid load torch:
MIN_OBSERVATIONS = 3  # fewer finite values than this leave nothing to fit (inputs, tiles)
REGULAR_RTOL = 1e-4  # steps this close count as regular: float32 coordinates drift by ~1e-5
FLOAT32_UNITS = 4  # rounding of a float32 coordinate, in units of its last place
FILL_LIKE = 1e20  # values this large are unmasked fill values (CMIP's 1e20, netCDF's 9.97e36)
LISTED = 5  # missing steps named in a message
SLAB_CELLS = 2**24  # cells per read of an unchunked (contiguous) netCDF variable
SCAN_THREADS = min(8, os.cpu_count() or 1)
ONE_DAY = timedelta(days=1)


def open_input(path: str) -> xr.Dataset:
    """Open a zarr store or netCDF file lazily (nothing is read until indexed)."""
    if not Path(path).exists():
        raise InputError(f"input {path!r} does not exist: check input.path in the spec")
    if _is_netcdf(path):
        return xr.open_dataset(path, chunks=None)
    with warnings.catch_warnings():  # a store without consolidated metadata is fine here
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        return xr.open_zarr(path, chunks=None)


def _is_netcdf(path: str) -> bool:
    return path.endswith(NETCDF_SUFFIXES)


def is_cftime(values: np.ndarray) -> bool:
    """Whether `values` are cftime datetimes (a 360_day, noleap, julian ... calendar)."""
    return (
        values.dtype == object and values.size > 0 and isinstance(values.flat[0], cftime.datetime)
    )


def coordinate_values(coord: xr.DataArray) -> np.ndarray:
    """A 1-D coordinate as float64: datetimes (cftime ones in their own calendar) become
    days since the first value."""
    values = coord.values
    if np.issubdtype(values.dtype, np.datetime64):
        return (values - values[0]) / np.timedelta64(1, "D")
    if is_cftime(values):
        return np.array([(v - values[0]) / ONE_DAY for v in values], dtype=np.float64)
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(
            f"coordinate {coord.name!r} has dtype {values.dtype}; it must be numeric or "
            "datetime (numpy or cftime): fix the coordinate or its units attribute"
        )
    return values.astype(np.float64)


def check_input(ds: xr.Dataset, config: PipelineConfig) -> None:
    """Refuse a dataset the run cannot use: missing variables, dims or station coordinates,
    coordinates the model cannot take, and variables that are damaged or have nothing to fit."""
    _check_names(ds, config)
    needs_lattice = config.model.type == "kiss" and not config.model.multitask
    for dim in config.dims:
        if dim != config.station_dim:
            check_axis(ds[dim], regular=needs_lattice)
    for name in config.station_coords:
        _check_finite(ds[name], coordinate_values(ds[name]))
    for var in config.variables:
        check_values(var, scan_variable(ds, var, config.input_path))


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


def check_axis(coord: xr.DataArray, regular: bool) -> None:
    """A grid dim's coordinate must be finite, distinct and sorted (either way); `regular`
    (the kiss model's lattice) also needs even steps, to grid.py's tolerance."""
    values = coordinate_values(coord)
    _check_finite(coord, values)
    steps = np.diff(values)
    if not steps.size:
        return  # a single cell
    if not steps.any():
        raise InputError(
            f"coordinate {coord.name!r} has the same value {_label(coord.values[0])} at all "
            f"{values.size} cells: a GP needs distinct positions; give each cell its own "
            f"coordinate, or select one cell (ds.isel({coord.name}=[0]))"
        )
    if not steps.all():
        _refuse_duplicates(coord, steps)
    if not ((steps > 0).all() or (steps < 0).all()):
        _refuse_unsorted(coord, steps)
    if regular and not is_regular(values):
        raise InputError(_irregular_message(coord, values))


def _check_finite(coord: xr.DataArray, values: np.ndarray) -> None:
    """A coordinate with NaN (or NaT) values leaves cells with no position."""
    missing = np.flatnonzero(~np.isfinite(values))
    if missing.size:
        raise InputError(
            f"coordinate {coord.name!r} has {missing.size:,} NaN (or NaT) value(s), first at "
            f"position {missing[0]}: every cell needs a position; fill them or drop those cells"
        )


def _refuse_duplicates(coord: xr.DataArray, steps: np.ndarray) -> None:
    repeats = np.flatnonzero(steps == 0)
    first = repeats[0]
    raise InputError(
        f"coordinate {coord.name!r} repeats values ({repeats.size:,} duplicate(s); first "
        f"{_label(coord.values[first])} at positions {first} and {first + 1}): each cell needs "
        f"its own position; drop the duplicates (ds.drop_duplicates({coord.name!r}))"
    )


def _refuse_unsorted(coord: xr.DataArray, steps: np.ndarray) -> None:
    turn = int(np.flatnonzero(np.sign(steps) != np.sign(steps[0]))[0])
    rises = steps[0] > 0
    values = coord.values
    raise InputError(
        f"coordinate {coord.name!r} is not sorted: it {'rises' if rises else 'falls'} to "
        f"{_label(values[turn])} at position {turn}, then {'falls' if rises else 'rises'} to "
        f"{_label(values[turn + 1])}: sort the input (ds.sortby({coord.name!r}))"
    )


def evenly_spaced(values: np.ndarray) -> np.ndarray | None:
    """The exactly even axis that `values` are, up to float32 rounding, or None.

    Each value may be off by REGULAR_RTOL of a step or a few float32 units of its size
    (coordinates stored as float32), never more: one missing step of a long series shifts
    the values by half a step from any even line, so it is never snapped away."""
    if values.size < 3:
        return values
    step = (values[-1] - values[0]) / (values.size - 1)
    even = values[0] + step * np.arange(values.size)
    rounding = FLOAT32_UNITS * np.finfo(np.float32).eps * np.abs(values).max()
    tolerance = REGULAR_RTOL * abs(step) + rounding
    return even if step != 0 and np.all(np.abs(values - even) <= tolerance) else None


def is_regular(values: np.ndarray) -> bool:
    """Whether an axis is a lattice: evenly spaced (to float32 rounding), or with every step
    within REGULAR_RTOL of the first (grid.window_lattice's test)."""
    if values.size < 3 or evenly_spaced(values) is not None:
        return True
    steps = np.diff(values)
    return bool(np.allclose(steps, steps[0], rtol=REGULAR_RTOL, atol=0))


def _irregular_message(coord: xr.DataArray, values: np.ndarray) -> str:
    """Why an axis is no lattice: the steps it misses if most of its steps are the smallest
    and the rest multiples of it (a series with gaps), otherwise the range of its steps."""
    steps = np.abs(np.diff(values))
    step = steps.min()
    multiples = np.round(steps / step).astype(int)
    fix = (
        "the kiss model needs a regular grid; set model.type: exact (it takes irregular "
        "axes), or make the axis regular"
    )
    unit = " day(s)" if _is_time(coord) else ""
    count = int((multiples - 1).sum())
    gappy = np.mean(multiples == 1) >= 0.5 and np.allclose(
        steps, multiples * step, rtol=REGULAR_RTOL, atol=0
    )
    if not (count and gappy):
        uneven = int(np.argmax(~np.isclose(steps, steps[0], rtol=REGULAR_RTOL, atol=0)))
        return (
            f"coordinate {coord.name!r} is not regularly spaced: steps from {step:g} to "
            f"{steps.max():g}{unit}, the first uneven one after position {uneven} "
            f"({_label(coord.values[uneven])}): {fix} (e.g. interpolate onto one)"
        )
    missing = list(itertools.islice(_missing_steps(coord.values, multiples), LISTED))
    more = f" and {count - len(missing):,} more" if count > len(missing) else ""
    return (
        f"coordinate {coord.name!r} is missing {count:,} step(s) of {step:g}{unit}: "
        f"{', '.join(missing)}{more}; {fix} by adding the missing steps as NaN cells "
        f"(ds.reindex({coord.name}=...) onto every step)"
    )


def _missing_steps(values: np.ndarray, multiples: np.ndarray) -> Iterator[str]:
    """Labels of the steps absent between neighbours `multiples` steps apart."""
    for i in np.flatnonzero(multiples > 1):
        gap = values[i + 1] - values[i]
        for j in range(1, multiples[i]):
            yield _label(values[i] + gap * j / multiples[i])


def _is_time(coord: xr.DataArray) -> bool:
    return np.issubdtype(coord.dtype, np.datetime64) or is_cftime(coord.values)


def _label(value: object) -> str:
    """A coordinate value as a person writes it: ISO dates (no midnight), or a short number."""
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if isinstance(value, (pd.Timestamp, cftime.datetime)):
        return value.isoformat().removesuffix("T00:00:00")
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


@dataclass(frozen=True)
class ValueCounts:
    """What one pass over a variable found: its cells, finite and infinite values, and the
    range of the finite ones (NaN when there are none)."""

    cells: int
    finite: int
    infinite: int
    minimum: float
    maximum: float

    def __add__(self, other: ValueCounts) -> ValueCounts:
        return ValueCounts(
            self.cells + other.cells,
            self.finite + other.finite,
            self.infinite + other.infinite,
            np.fmin(self.minimum, other.minimum),
            np.fmax(self.maximum, other.maximum),
        )


def check_values(var: str, counts: ValueCounts) -> None:
    """Refuse infinite values and a variable with too few observations to fit; warn of
    values so large they must be an unmasked fill value."""
    if counts.infinite:
        raise InputError(
            f"variable {var!r} has {counts.infinite:,} infinite value(s) out of "
            f"{counts.cells:,} cells: mark them missing (NaN, or the variable's _FillValue) "
            "or check the data's fill value and scale_factor"
        )
    if counts.finite < MIN_OBSERVATIONS:
        raise InputError(
            f"variable {var!r} has {counts.finite:,} observed (finite) cells out of "
            f"{counts.cells:,}: nothing to fit (a GP needs at least {MIN_OBSERVATIONS}); "
            "check input.variables or the data's fill value"
        )
    largest = max(abs(counts.minimum), abs(counts.maximum))
    if largest >= FILL_LIKE:
        warnings.warn(
            f"variable {var!r} has values from {counts.minimum:g} to {counts.maximum:g}: "
            f"{largest:g} looks like a fill value read as data; set the variable's _FillValue "
            "(or missing_value) attribute to it so those cells read as missing",
            RuntimeWarning,
            stacklevel=2,
        )


def scan_variable(ds: xr.Dataset, var: str, path: str) -> ValueCounts:
    """Read `var` once, stored chunk by stored chunk (in threads), and count its values;
    a chunk that cannot be read is refused, naming it and its file in the store `path`."""
    variable = ds[var].variable
    block = _read_block(variable)
    grid = [range(math.ceil(n / b)) for n, b in zip(variable.shape, block, strict=True)]

    def count(index: tuple[int, ...]) -> ValueCounts:
        region = tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))
        try:
            values = np.asarray(variable[region].values)
        except Exception as error:  # a damaged chunk fails in its codec, with any error type
            raise InputError(_damaged_message(var, path, index, region, error)) from error
        return _counts(values)

    indices = list(itertools.product(*grid))
    with ThreadPoolExecutor(max_workers=max(1, min(SCAN_THREADS, len(indices)))) as pool:
        return sum(pool.map(count, indices), ValueCounts(0, 0, 0, np.nan, np.nan))


def _read_block(variable: xr.Variable) -> tuple[int, ...]:
    """Cells per read along each dim: the stored shard or chunk (zarr, chunked netCDF), or
    slabs along the first dim for a contiguous netCDF variable."""
    encoding = variable.encoding
    stored = encoding.get("shards") or encoding.get("chunks") or encoding.get("chunksizes")
    if stored:
        return tuple(int(c) for c in stored)
    rest = math.prod(variable.shape[1:])
    return (max(1, min(variable.shape[0], SLAB_CELLS // max(rest, 1))), *variable.shape[1:])


def _counts(values: np.ndarray) -> ValueCounts:
    finite = np.isfinite(values)
    observed = values[finite]
    low, high = (observed.min(), observed.max()) if observed.size else (np.nan, np.nan)
    return ValueCounts(
        values.size, int(observed.size), int(np.isinf(values).sum()), float(low), float(high)
    )


def _damaged_message(
    var: str, path: str, index: tuple[int, ...], region: tuple[slice, ...], error: Exception
) -> str:
    """Name the unreadable chunk: its index and file (zarr), or its cells in the file (netCDF)."""
    cells = ", ".join(f"{r.start}:{r.stop}" for r in region)
    if _is_netcdf(path):
        where = f"cells [{cells}] (read {index}) of file {path!r}"
        fix = "restore the file or rewrite it"
    else:
        key = zarr.open_array(path, path=var, mode="r").metadata.encode_chunk_key(index)
        where = f"chunk {index} (cells [{cells}]), file {str(Path(path) / var / key)!r}"
        fix = "restore that chunk from a copy or rewrite the variable"
    return (
        f"variable {var!r} cannot be read at {where}: {type(error).__name__}: {error}; "
        f"the data are damaged: {fix}"
    )
