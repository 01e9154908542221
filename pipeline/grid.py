"""Reading a tile's window: values and coordinates, around a wrapped dim and into a forecast.

Tiles are planned over the target grid. Along a wrapped dim (a global longitude) a
window may run past either end and is read around the circle. Along a forecast's dim
the target is the `steps` cells after the data: a window's negative indices are the
history (read from the input) and its cells from 0 on are the future (NaN, to predict).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from gpkernels import Lattice
from pipeline.coordinates import coordinate_values, evenly_spaced
from pipeline.errors import InputError
from pipeline.target import new_axes
from pipeline.tiling import Tile
from pipeline.work import WindowSource


def _selection(source: WindowSource, region: tuple[slice, ...], ds: xr.Dataset) -> dict:
    """Input indices per dim for a region of the target grid (the part inside the data)."""
    out = {}
    for dim, part in zip(source.dims, region, strict=True):
        n = ds.sizes[dim]
        if source.forecast is not None and dim == source.forecast.dim:
            past = source.history(dim)
            out[dim] = slice(part.start + past, min(part.stop, 0) + past)
        elif part.start < 0 or part.stop > n:
            out[dim] = np.arange(part.start, part.stop) % n
        else:
            out[dim] = part
    return out


def _future_cells(source: WindowSource, region: tuple[slice, ...]) -> tuple[int, int]:
    """(axis, cells) of a region that lie after the data along the forecast dim."""
    if source.forecast is None:
        return 0, 0
    axis = source.dims.index(source.forecast.dim)
    part = region[axis]
    return axis, max(part.stop, 0) - max(part.start, 0)


def read_window(source: WindowSource, tile: Tile, ds: xr.Dataset, var: str) -> np.ndarray:
    """The window's values of `var` in the run's dim order, NaN where the forecast predicts."""
    values = ds[var].isel(_selection(source, tile.window, ds)).transpose(*source.dims).values
    axis, future = _future_cells(source, tile.window)
    if future:
        shape = list(values.shape)
        shape[axis] = future
        values = np.concatenate([values, np.full(shape, np.nan, values.dtype)], axis=axis)
    return values


def read_covariates(source: WindowSource, tile: Tile, ds: xr.Dataset) -> np.ndarray | None:
    """The window's covariates (cells in C order over the dims, one column each), or None
    without any."""
    if not source.covariates:
        return None
    selection = _selection(source, tile.window, ds)
    return covariates_at(ds, source.covariates, source.dims, selection, tile.window_shape)


def covariates_at(
    ds: xr.Dataset,
    names: tuple[str, ...],
    dims: tuple[str, ...],
    selection: dict,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Covariates at the cells that `selection` (indices per dim) picks, `shape` of them,
    in C order over `dims`, one column each; a covariate over fewer dims is repeated along
    the others."""
    columns = []
    for name in names:
        covariate = ds[name]
        own = [d for d in dims if d in covariate.dims]
        values = covariate.isel({d: selection[d] for d in own}).transpose(*own).values
        expanded = values.reshape([values.shape[own.index(d)] if d in own else 1 for d in dims])
        columns.append(np.broadcast_to(expanded, shape).reshape(-1))
    return np.stack(columns, axis=1).astype(np.float64)


def never_observed(source: WindowSource, tile: Tile, ds: xr.Dataset, var: str) -> np.ndarray:
    """Cells of the tile's output region with no observation anywhere along
    `never_observed_along` (all of its data, e.g. every month): land in a sea field."""
    along = source.never_observed_along
    selection = _selection(source, tile.output_region, ds)
    past = source.history(along)
    selection[along] = slice(0, past) if past else slice(None)
    seen = ds[var].isel(selection).transpose(*source.dims).notnull().any(along).values
    return np.broadcast_to(np.expand_dims(~seen, source.dims.index(along)), tile.output_shape)


def axis_coordinates(source: WindowSource, ds: xr.Dataset, dim: str, window: slice) -> np.ndarray:
    """A dim's coordinates over a window (days for datetimes). Past the end of a wrapped dim
    they continue by its period, and into a forecast by its step, so the window stays regular."""
    values = coordinate_values(ds[dim])
    past = source.history(dim)
    if past:
        index = np.arange(window.start, window.stop) + past
        extrapolated = values[past - 1] + source.forecast.step * (index - past + 1)
        return np.where(index < past, values[np.minimum(index, past - 1)], extrapolated)
    n = len(values)
    if window.start >= 0 and window.stop <= n:
        return values[window]
    index = np.arange(window.start, window.stop)
    period = n * float(np.median(np.diff(values)))
    return values[index % n] + period * np.floor_divide(index, n)


def snapped(values: np.ndarray) -> np.ndarray:
    """Coordinates that are regular to float32 precision made exactly regular (so that grid
    models find every cell on their lattice); others unchanged."""
    even = evenly_spaced(values)
    return values if even is None else even


def window_axes(source: WindowSource, tile: Tile, ds: xr.Dataset) -> list[np.ndarray]:
    """Physical coordinates of the window along each dim (days for datetimes)."""
    return [
        snapped(axis_coordinates(source, ds, dim, window))
        for dim, window in zip(source.dims, tile.window, strict=True)
    ]


def window_inputs(source: WindowSource, tile: Tile, ds: xr.Dataset) -> np.ndarray:
    """GP inputs of every window cell in C order over the dims (columns: input_columns)."""
    per_dim = []
    for dim, window in zip(source.dims, tile.window, strict=True):
        if dim == source.station_dim:
            positions = [coordinate_values(ds[c])[window] for c in source.station_coords]
            per_dim.append(np.stack(positions, axis=1))
        else:
            per_dim.append(snapped(axis_coordinates(source, ds, dim, window))[:, None])
    index = np.meshgrid(*[np.arange(len(v)) for v in per_dim], indexing="ij")
    return np.concatenate([v[i.reshape(-1)] for v, i in zip(per_dim, index, strict=True)], 1)


def window_lattice(axes: list[np.ndarray], dims: tuple[str, ...]) -> Lattice:
    """The window as a regular lattice; irregular coordinates are refused (use the exact model).

    A descending axis (latitude from north to south) gives a negative step here, which
    `Lattice` turns into the same nodes in ascending order."""
    starts, spacings = [], []
    for dim, values in zip(dims, axes, strict=True):
        even = evenly_spaced(values)
        if even is None:
            steps = np.diff(values)
            raise InputError(
                f"coordinate {dim!r} is not regularly spaced (steps from {steps.min()} to "
                f"{steps.max()}): the kiss model needs a regular grid; set model.type: exact"
            )
        starts.append(float(even[0]))
        spacings.append(float(even[1] - even[0]) if even.size > 1 else 1.0)
    return Lattice(tuple(starts), tuple(spacings), tuple(len(v) for v in axes))


def target_region(source: WindowSource, tile: Tile, ds: xr.Dataset) -> tuple[slice, ...]:
    """The cells of a new target grid that this tile owns: along each regridded dim those
    whose coordinate falls in the tile core's cells (halfway to the neighbouring cells;
    the first and last tiles take everything beyond)."""
    new = new_axes(source.regrid)
    region = []
    for dim, core in zip(source.dims, tile.core, strict=True):
        if dim not in new:
            region.append(core)
            continue
        old = coordinate_values(ds[dim])
        low = -np.inf if core.start == 0 else (old[core.start - 1] + old[core.start]) / 2
        high = np.inf if core.stop == len(old) else (old[core.stop - 1] + old[core.stop]) / 2
        first, stop = np.searchsorted(new[dim], [low, high], side="left")
        region.append(slice(int(first), int(stop)))
    return tuple(region)


def target_inputs(source: WindowSource, region: tuple[slice, ...], ds: xr.Dataset) -> np.ndarray:
    """GP inputs of a new grid's cells over `region`, in C order over the dims."""
    new = new_axes(source.regrid)
    per_dim = [
        new[dim][part] if dim in new else snapped(axis_coordinates(source, ds, dim, part))
        for dim, part in zip(source.dims, region, strict=True)
    ]
    return np.stack(np.meshgrid(*per_dim, indexing="ij"), -1).reshape(-1, len(per_dim))
