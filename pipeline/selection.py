"""`input.sel`: the part of the input a run uses (a pressure level, a bounding box, a time
range), picked by coordinate labels each time the input is opened, on the driver and in
every task alike, so that a (time, level, lat, lon) archive needs no pre-cut copy and
nothing outside the selection is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pipeline.errors import InputError


@dataclass(frozen=True)
class Selection:
    """Per dim, one label (`picks`: the dim is dropped) or an inclusive `[low, high]` range
    of labels (`ranges`), in whichever direction the coordinate runs."""

    picks: tuple[tuple[str, object], ...] = ()
    ranges: tuple[tuple[str, object, object], ...] = ()

    @classmethod
    def from_mapping(cls, sel: Mapping[str, object]) -> Selection:
        """From the spec's `input.sel`: a list of two labels is a range, anything else a pick."""
        picks = tuple((d, v) for d, v in sel.items() if not isinstance(v, (list, tuple)))
        ranges = tuple((d, v[0], v[1]) for d, v in sel.items() if isinstance(v, (list, tuple)))
        return cls(picks, ranges)

    def __bool__(self) -> bool:
        return bool(self.picks or self.ranges)

    def record(self) -> dict[str, object]:
        """The selection as the spec gives it, for JSON (the run's plan, where another
        selection is another run, and the store's attributes); from_mapping reads it back."""
        return {
            **dict(self.picks),
            **{dim: [low, high] for dim, low, high in self.ranges},
        }

    def apply(self, ds: xr.Dataset) -> xr.Dataset:
        """`ds` cut to the selection (lazily: indexing reads nothing); InputError naming
        the dim and the coordinate's values when a label is not there or a range is empty."""
        for dim, _ in (*self.picks, *((d, None) for d, _, _ in self.ranges)):
            if dim not in ds.dims or dim not in ds.coords:
                raise InputError(
                    f"input.sel names {dim!r}, which is not a dim with a coordinate in the "
                    f"input (it has {sorted(map(str, ds.dims))}): fix input.sel"
                )
        for dim, value in self.picks:
            ds = _pick(ds, dim, value)
        for dim, low, high in self.ranges:
            ds = _range(ds, dim, low, high)
        return ds


def _pick(ds: xr.Dataset, dim: str, value: object) -> xr.Dataset:
    """`ds` at one label of `dim` (the dim dropped, its coordinate kept as a scalar)."""
    try:
        picked = ds.sel({dim: value})
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"input.sel.{dim}: {value!r} is not a value of {dim!r}; it holds "
            f"{_summary(ds[dim])}: fix input.sel.{dim}"
        ) from None
    if dim in picked.dims:  # a label matching several cells (a repeated value, a date)
        raise InputError(
            f"input.sel.{dim}: {value!r} matches {picked.sizes[dim]} cells of {dim!r}, not "
            f"one: give one value, or a range [low, high] and keep {dim!r} in input.dims"
        )
    for name, variable in ds.variables.items():  # stored chunk sizes along the dims left
        if dim in variable.dims:
            _drop_dim_of_chunks(picked[name].encoding, dim, variable.dims.index(dim))
    return picked


def _drop_dim_of_chunks(encoding: dict, dim: str, axis: int) -> None:
    """Stored chunk (and shard) sizes in `encoding` without the picked dim's entry, so
    readers that follow the stored layout still match the variable's dims."""
    for key in ("chunks", "shards", "chunksizes"):
        if encoding.get(key) is not None:
            sizes = tuple(encoding[key])
            encoding[key] = sizes[:axis] + sizes[axis + 1 :]
    if isinstance(encoding.get("preferred_chunks"), dict):
        encoding["preferred_chunks"] = {
            d: size for d, size in encoding["preferred_chunks"].items() if d != dim
        }


def _range(ds: xr.Dataset, dim: str, low: object, high: object) -> xr.Dataset:
    """`ds` over the labels of `dim` from `low` to `high` inclusive, either direction."""
    index = ds.indexes[dim]
    descending = len(index) > 1 and not index.is_monotonic_increasing
    if len(index) > 1 and not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
        raise InputError(
            f"input.sel.{dim}: {dim!r} is not sorted, so a range of it is not one block: "
            "sort the input along it, or drop the range"
        )
    bounds = slice(high, low) if descending else slice(low, high)
    try:
        cut = ds.sel({dim: bounds})
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"input.sel.{dim}: [{low!r}, {high!r}] cannot be compared with {dim!r}'s values "
            f"({_summary(ds[dim])}; {error}): give labels of the coordinate's kind"
        ) from None
    if cut.sizes[dim] == 0:
        raise InputError(
            f"input.sel.{dim}: [{low!r}, {high!r}] selects no cells; {dim!r} holds "
            f"{_summary(ds[dim])}: give [low, high] inside that range"
        )
    return cut


def _summary(coordinate: xr.DataArray) -> str:
    """A coordinate's values in a few words: all of a few, else its first and last."""
    values = np.asarray(coordinate.values)
    if values.size <= 6:
        return ", ".join(str(v) for v in values)
    return f"{values.size:,} values from {values[0]} to {values[-1]}"
