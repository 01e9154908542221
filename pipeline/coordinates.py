"""Coordinate axes: their values as numbers, and the checks that refuse, before a run starts,
axes a model cannot take (NaN, repeated, constant or unsorted positions; for the kiss model,
uneven steps), with a message naming the coordinate and the fix."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from pipeline.errors import InputError

REGULAR_RTOL = 1e-4  # steps this close count as regular: float32 coordinates drift by ~1e-5
FLOAT32_UNITS = 4  # rounding of a float32 coordinate, in units of its last place
LISTED = 5  # missing steps named in a message
ONE_DAY = timedelta(days=1)


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


def check_axis(coord: xr.DataArray, regular: bool) -> None:
    """A grid dim's coordinate must be finite, distinct and sorted (either way); `regular`
    (the kiss model's lattice) also needs even steps, to grid.py's tolerance."""
    values = coordinate_values(coord)
    check_finite(coord, values)
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


def check_finite(coord: xr.DataArray, values: np.ndarray) -> None:
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
    """Whether an axis is a lattice: evenly spaced to float32 rounding (`evenly_spaced`, the
    one definition the input check and grid.window_lattice share)."""
    return evenly_spaced(values) is not None


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
        uneven = ~np.isclose(steps, steps[0], rtol=REGULAR_RTOL, atol=0)
        if not uneven.any():  # every step close to the first, yet the cells drift off
            drift = values - np.linspace(values[0], values[-1], values.size)
            worst = int(np.argmax(np.abs(drift)))
            return (
                f"coordinate {coord.name!r} is not regularly spaced: its cells drift up to "
                f"{abs(drift[worst] / (values[1] - values[0])):.3g} steps from an even spacing "
                f"(at position {worst}, {_label(coord.values[worst])}): {fix} (e.g. "
                "interpolate onto one)"
            )
        first = int(np.argmax(uneven))
        return (
            f"coordinate {coord.name!r} is not regularly spaced: steps from {step:g} to "
            f"{steps.max():g}{unit}, the first uneven one after position {first} "
            f"({_label(coord.values[first])}): {fix} (e.g. interpolate onto one)"
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
