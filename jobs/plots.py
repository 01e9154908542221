"""Quick-look PNGs: the input with its gaps beside the predicted mean and standard deviation.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no GUI backend), which
also keeps the import light.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.store import std_name


def quicklook(
    source: xr.Dataset, output: xr.Dataset, variable: str, path: str | Path, time_index: int = 0
) -> Path:
    """Input (gaps blank), mean and std at one step of the first dim, saved as a PNG."""
    first_dim = source[variable].dims[0]
    step = {first_dim: time_index}
    observed = source[variable].isel(step)
    mean = output[variable].isel(step)
    std = output[std_name(variable)].isel(step)
    units = source[variable].attrs.get("units", "")
    vmin, vmax = float(mean.min()), float(mean.max())
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = (
        (observed, "input (gaps blank)", "viridis", (vmin, vmax)),
        (mean, "GP predictive mean", "viridis", (vmin, vmax)),
        (std, "GP predictive std", "magma", (None, None)),
    )
    for ax, (field, title, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        row_dim, col_dim = field.dims
        mesh = ax.pcolormesh(
            field[col_dim].values,
            field[row_dim].values,
            field.values,
            cmap=cmap,
            vmin=lo,
            vmax=hi,
            shading="nearest",
        )
        fig.colorbar(mesh, ax=ax, label=units)
        ax.set(title=title, xlabel=col_dim, ylabel=row_dim)
    label = str(source[first_dim].values[time_index])[:19]
    fig.suptitle(f"{variable} at {first_dim} = {label}")
    path = Path(path)
    fig.savefig(path, dpi=90)
    return path


def plot_store(
    store: str | Path,
    variable: str | None = None,
    at: str | None = None,
    out: str | Path | None = None,
) -> Path:
    """Quick-look of an output store at step `at` of its first dim (an index or a
    coordinate value such as 2006-07-16; default the first), beside the job's input."""
    output = xr.open_zarr(store)
    names = [v for v in output.data_vars if not str(v).endswith("_std")]
    variable = variable or names[0]
    if variable not in names:
        raise KeyError(f"variable {variable!r} is not in {str(store)!r}; it has {names}")
    source_path = output.attrs.get("gpgrid_input")
    if not source_path:
        raise ValueError(f"{str(store)!r} records no input: was it written by gpgrid?")
    from pipeline.inputs import open_input

    source = open_input(source_path)
    first = output[variable].dims[0]
    index = _step_index(output[first], at)
    value = output[first].values[index]
    shown = source.sel({first: [value]}) if value in source[first].values else None
    if shown is None:  # a forecast step: show the input's last step instead
        shown = source.isel({first: [-1]})
    out = Path(out or Path(str(store).rstrip("/")).with_suffix(f".{variable}.{index}.png"))
    return quicklook(shown, output.isel({first: [index]}), variable, out, time_index=0)


def _step_index(coord: xr.DataArray, at: str | None) -> int:
    """Position along a coordinate from an index ('3') or a value ('2006-07-16', '12.5')."""
    if at is None:
        return 0
    if at.lstrip("-").isdigit():
        index = int(at)
        if not -coord.size <= index < coord.size:
            raise ValueError(f"step {index} is outside {coord.name!r} (0 to {coord.size - 1})")
        return index % coord.size
    try:
        return int(coord.to_index().get_indexer([coord.dtype.type(at)], method="nearest")[0])
    except (TypeError, ValueError):
        raise ValueError(
            f"{at!r} is neither an index nor a value of {coord.name!r} "
            f"(from {coord.values[0]} to {coord.values[-1]})"
        ) from None
