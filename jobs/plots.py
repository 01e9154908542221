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
