"""Quick-look PNGs: the input with its gaps beside the predicted mean and standard deviation.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no GUI backend), which
also keeps the import light.
"""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.coordinates import coordinate_values, is_cftime
from pipeline.errors import InputError
from pipeline.multifile import is_pattern
from pipeline.store import std_name
from pipeline.target import cftime_at


def quicklook(
    source: xr.Dataset,
    output: xr.Dataset,
    variable: str,
    path: str | Path,
    time_index: int = 0,
    input_title: str = "input (gaps blank)",
) -> Path:
    """Input, mean and std side by side (and the truth, where the input carries it as
    `<variable>_true`), saved as a PNG. Fields of three or more dims are shown at step
    `time_index` of the first; 2-D fields (a lat x lon grid, or time x station) whole,
    with non-numeric coordinates (station names) as positions."""
    field = output[variable]
    step = {field.dims[0]: time_index} if field.ndim > 2 else {}
    observed = source[variable].isel(step)
    mean, std = field.isel(step), output[std_name(variable)].isel(step)
    units = source[variable].attrs.get("units", "")
    vmin, vmax = float(mean.min()), float(mean.max())
    panels = [
        (observed, input_title, "viridis", (vmin, vmax)),
        (mean, "GP predictive mean", "viridis", (vmin, vmax)),
        (std, "GP predictive std", "magma", (None, None)),
    ]
    truth_name = f"{variable}_true"
    if truth_name in source:
        panels.insert(1, (source[truth_name].isel(step), "truth", "viridis", (vmin, vmax)))
    fig = Figure(figsize=(5 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (panel, title, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        row_dim, col_dim = panel.dims
        mesh = ax.pcolormesh(
            _positions(panel[col_dim]),
            _positions(panel[row_dim]),
            panel.values,
            cmap=cmap,
            vmin=lo,
            vmax=hi,
            shading="nearest",
        )
        fig.colorbar(mesh, ax=ax, label=units)
        ax.set(title=title, xlabel=col_dim, ylabel=row_dim)
    where = ""
    if step:
        (first,) = step
        where = f" at {first} = {str(output[first].values[time_index])[:19]}"
    fig.suptitle(f"{variable}{where}")
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def _positions(coord: xr.DataArray) -> np.ndarray:
    """A coordinate's values where they are numbers or times, else 0, 1, 2, ..."""
    values = coord.values
    if np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.datetime64):
        return values
    return np.arange(values.size)


def plot_store(
    store: str | Path,
    variable: str | None = None,
    at: str | None = None,
    out: str | Path | None = None,
) -> Path:
    """Quick-look of an output store beside the job's input: at step `at` of its first dim
    (an index or a coordinate value such as 2006-07-16; default the first) when it has
    three or more dims, whole when it has two."""
    output = xr.open_zarr(store)
    names = [v for v in output.data_vars if not str(v).endswith("_std")]
    variable = variable or names[0]
    if variable not in names:
        raise InputError(
            f"variable {variable!r} is not in {str(store)!r}; it has {names}: pick one with "
            "--variable"
        )
    source_path = output.attrs.get("gpgrid_input")
    if not source_path:
        raise InputError(
            f"{str(store)!r} records no input: was it written by gpgrid? plot needs a gpgrid store"
        )
    if not (is_pattern(source_path) or Path(source_path).exists()):
        raise InputError(
            f"{str(store)!r} was made from the input {source_path!r}, which is not there any "
            "more: put the input back at that path (the plot shows its gaps beside the "
            "predictions)"
        )
    _warn_if_unfinished(store)
    from pipeline.inputs import open_input
    from pipeline.selection import Selection

    selection = output.attrs.get("gpgrid_input_sel")
    source = open_input(source_path, selection and Selection.from_mapping(json.loads(selection)))
    if output[variable].ndim <= 2:
        out = Path(out or Path(str(store).rstrip("/")).with_suffix(f".{variable}.png"))
        return quicklook(source, output, variable, out)
    first = output[variable].dims[0]
    index = _step_index(output[first], at)
    value = output[first].values[index]
    title = "input (gaps blank)"
    if "forecast_reference_time" in output.coords:
        title = "the data at this time (after the issue time: not read)"
    if value in source[first].values:
        shown = source.sel({first: [value]})
    else:  # a forecast step past the data: show its last step
        shown, title = source.isel({first: [-1]}), "the data's last step"
    out = Path(out or Path(str(store).rstrip("/")).with_suffix(f".{variable}.{index}.png"))
    return quicklook(shown, output.isel({first: [index]}), variable, out, 0, title)


def _warn_if_unfinished(store: str | Path) -> None:
    """A store whose run has not finished has blank (NaN) tiles: say so, with the count."""
    from pipeline.journal import finished_tiles, is_complete

    if not is_complete(str(store)):
        done = len(finished_tiles(str(store)))
        warnings.warn(
            f"{str(store)!r} is not finished ({done} tiles written): unwritten tiles plot "
            "blank; rerun its job to finish it",
            UserWarning,
            stacklevel=3,
        )


def _step_index(coord: xr.DataArray, at: str | None) -> int:
    """Position along a coordinate from an index ('3') or a value ('2006-07-16', '12.5')."""
    if at is None:
        return 0
    if at.lstrip("-").isdigit():
        index = int(at)
        if not -coord.size <= index < coord.size:
            raise InputError(
                f"--at {index} is outside {coord.name!r}: give a step from 0 to {coord.size - 1}"
            )
        return index % coord.size
    span = f"from {coord.values[0]} to {coord.values[-1]}"
    try:
        target = _position(coord, at)
    except (TypeError, ValueError):
        raise InputError(
            f"--at {at!r} is neither an index nor a value of {coord.name!r} ({span})"
        ) from None
    positions = coordinate_values(coord)
    step = float(np.median(np.abs(np.diff(positions)))) if positions.size > 1 else 0.0
    if not positions.min() - step <= target <= positions.max() + step:
        raise InputError(f"--at {at!r} is outside {coord.name!r} ({span}): give a value in it")
    return int(np.argmin(np.abs(positions - target)))


def _position(coord: xr.DataArray, at: str) -> float:
    """`at` in the coordinate's numbers (days since its first value for times, in its own
    calendar for cftime ones), as coordinate_values gives them."""
    first = coord.values[0]
    if np.issubdtype(coord.dtype, np.datetime64):
        return (np.datetime64(at) - first) / np.timedelta64(1, "D")
    if is_cftime(coord.values):
        return (cftime_at(at, first.calendar) - first) / timedelta(days=1)
    return float(at)
