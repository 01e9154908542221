"""Quick-look PNGs: the input with its gaps beside the predicted mean and standard deviation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402

from pipeline.store import std_name  # noqa: E402


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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    panels = (
        (observed, "input (gaps blank)", "viridis", (vmin, vmax)),
        (mean, "GP predictive mean", "viridis", (vmin, vmax)),
        (std, "GP predictive std", "magma", (None, None)),
    )
    for ax, (field, title, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        field.plot(ax=ax, cmap=cmap, vmin=lo, vmax=hi, cbar_kwargs={"label": units})
        ax.set_title(title)
    label = str(source[first_dim].values[time_index])[:19]
    fig.suptitle(f"{variable} at {first_dim} = {label}")
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
