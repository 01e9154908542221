"""One pass over a variable's stored chunks on the driver before a run starts: it counts the
observations (too few to fit, or infinite values, are refused), and names a chunk that
cannot be read, with its file, instead of failing later inside a Ray task."""

from __future__ import annotations

import itertools
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xarray as xr
import zarr

from pipeline.errors import InputError
from pipeline.inputs import is_netcdf
from pipeline.storage import Location, as_location

MIN_OBSERVATIONS = 3  # fewer finite values than this leave nothing to fit (inputs, tiles)
FILL_LIKE = 1e20  # values this large are unmasked fill values (CMIP's 1e20, netCDF's 9.97e36)
SLAB_CELLS = 2**24  # cells per read of an unchunked (contiguous) netCDF variable
SCAN_THREADS = min(8, os.cpu_count() or 1)


def scan_input(
    ds: xr.Dataset, variables: tuple[str, ...], source: str | Location, cut: bool = False
) -> None:
    """Read every variable of the input at `source` once (`cut`: `ds` is the part input.sel
    selects) and refuse the ones that are damaged or have nothing to fit."""
    for var in variables:
        check_values(var, scan_variable(ds, var, source, cut))


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


def scan_variable(
    ds: xr.Dataset, var: str, source: str | Location, cut: bool = False
) -> ValueCounts:
    """Read `var` once, stored chunk by stored chunk (in threads), and count its values;
    a chunk that cannot be read is refused, naming it and its file in the store `source`
    (or, `cut` by input.sel, its cells in the selection)."""
    variable = ds[var].variable
    block = _read_block(variable)
    grid = [range(math.ceil(n / b)) for n, b in zip(variable.shape, block, strict=True)]

    def count(index: tuple[int, ...]) -> ValueCounts:
        region = tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))
        try:
            values = np.asarray(variable[region].values)
        except Exception as error:  # a damaged chunk fails in its codec, with any error type
            message = _damaged_message(var, as_location(source), index, region, error, cut)
            raise InputError(message) from error
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
    var: str,
    place: Location,
    index: tuple[int, ...],
    region: tuple[slice, ...],
    error: Exception,
    cut: bool,
) -> str:
    """Name the unreadable chunk: its index and file (zarr), or its cells in the file
    (netCDF) or in the part input.sel selects."""
    cells = ", ".join(f"{r.start}:{r.stop}" for r in region)
    if cut:
        where = f"cells [{cells}] of the part input.sel selects from {place.url!r}"
        fix = "restore the input from a copy or rewrite it"
    elif is_netcdf(place.url):
        where = f"cells [{cells}] (read {index}) of file {place.url!r}"
        fix = "restore the file or rewrite it"
    else:
        array = zarr.open_array(place.zarr_store(), path=var, mode="r")
        key = array.metadata.encode_chunk_key(index)
        where = f"chunk {index} (cells [{cells}]), file {place.child(var).child(key).url!r}"
        fix = "restore that chunk from a copy or rewrite the variable"
    return (
        f"variable {var!r} cannot be read at {where}: {type(error).__name__}: {error}; "
        f"the data are damaged: {fix}"
    )
