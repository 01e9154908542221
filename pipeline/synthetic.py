"""Synthetic (time, lat, lon) grids drawn from a known GP, with cloud-like gaps.

The true field is kept beside the gappy observations so predictions can be scored.
torch is imported inside the drawing functions: a driver can hold a recipe and send the
drawing to a Ray worker without loading the solvers itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from pipeline.store import consolidated_v3_allowed

if TYPE_CHECKING:
    import torch

DIMS = ("time", "lat", "lon")
START = np.datetime64("2020-01-01T00:00:00", "s")
DAY = 86400


@dataclass(frozen=True)
class SyntheticGrid:
    """A GP draw's recipe: grid, separable kernel (one per axis, in axis units), noise, gaps."""

    shape: tuple[int, int, int] = (20, 100, 100)
    spacing: tuple[float, float, float] = (1.0, 0.1, 0.1)  # days, degrees, degrees
    kernels: tuple[str, str, str] = ("matern32", "matern32", "matern32")
    lengthscales: tuple[float, float, float] = (3.0, 0.6, 0.6)
    outputscale: float = 4.0  # K^2
    noise_std: float = 0.2  # K
    offset: float = 285.0  # K
    gap_fraction: float = 0.3
    blob_share: float = 0.5  # share of the gaps that are contiguous blobs
    seed: int = 0
    variable: str = "tas"


def draw_field(recipe: SyntheticGrid, generator: torch.Generator) -> np.ndarray:
    """The noise-free field, drawn exactly by circulant embedding."""
    from gpkernels import make_kernel, sample_separable_grid

    axis_kernels = []
    for name, scale in zip(recipe.kernels, recipe.lengthscales, strict=True):
        kernel = make_kernel(name)
        kernel.lengthscale = scale
        axis_kernels.append(kernel)
    field = sample_separable_grid(
        axis_kernels, recipe.shape, recipe.spacing, recipe.outputscale, generator
    )
    return field.numpy() + recipe.offset


def cut_gaps(recipe: SyntheticGrid, generator: torch.Generator) -> np.ndarray:
    """A boolean mask of missing cells: smooth blobs (clouds) plus scattered cells.

    Blobs are the top quantile of a smooth random field, so they are contiguous in
    space and persist for a few time steps; scattered cells make up the rest.
    """
    import torch

    cloud_scales = (2.0 * recipe.spacing[0], 4.0 * recipe.spacing[1], 4.0 * recipe.spacing[2])
    blob_fraction = recipe.gap_fraction * recipe.blob_share
    gaps = cloud_blobs(recipe.shape, recipe.spacing, cloud_scales, blob_fraction, generator)
    rest = np.flatnonzero(~gaps)
    n_scattered = round(recipe.gap_fraction * gaps.size) - int(gaps.sum())
    order = torch.randperm(rest.size, generator=generator).numpy()
    gaps.flat[rest[order[:n_scattered]]] = True
    return gaps


def cloud_blobs(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    scales: tuple[float, ...],
    fraction: float,
    generator: torch.Generator,
) -> np.ndarray:
    """A boolean mask of contiguous blobs covering `fraction` of the grid: the top quantile
    of a smooth random field (Gaussian kernel of `scales` per axis, in `spacing`'s units),
    so that clouds have ragged edges, merge and persist along time as real ones do."""
    from gpkernels import make_kernel, sample_separable_grid

    kernels = []
    for scale in scales:
        kernel = make_kernel("rbf")
        kernel.lengthscale = scale
        kernels.append(kernel)
    field = sample_separable_grid(kernels, shape, spacing, 1.0, generator).numpy()
    return field > np.quantile(field, 1.0 - fraction)


def make_synthetic_dataset(recipe: SyntheticGrid) -> xr.Dataset:
    """Gappy observations `<variable>` and the true field `<variable>_true`, with CF attributes."""
    import torch

    generator = torch.Generator().manual_seed(recipe.seed)
    truth = draw_field(recipe, generator)
    noise = recipe.noise_std * torch.randn(recipe.shape, generator=generator, dtype=torch.float64)
    observed = truth + noise.numpy()
    observed[cut_gaps(recipe, generator)] = np.nan
    nt, ny, nx = recipe.shape
    coords = {
        "time": (
            "time",
            START + np.arange(nt) * np.timedelta64(round(DAY * recipe.spacing[0]), "s"),
            {"standard_name": "time"},
        ),
        "lat": (
            "lat",
            30.0 + recipe.spacing[1] * np.arange(ny),
            {"units": "degrees_north", "standard_name": "latitude"},
        ),
        "lon": (
            "lon",
            -100.0 + recipe.spacing[2] * np.arange(nx),
            {"units": "degrees_east", "standard_name": "longitude"},
        ),
    }
    attrs = {"units": "K", "standard_name": "air_temperature"}
    var = recipe.variable
    return xr.Dataset(
        {
            var: (
                DIMS,
                observed.astype(np.float32),
                {**attrs, "long_name": "near-surface air temperature, observed with gaps"},
            ),
            f"{var}_true": (
                DIMS,
                truth.astype(np.float32),
                {**attrs, "long_name": "near-surface air temperature, noise-free truth"},
            ),
        },
        coords=coords,
        attrs={
            "title": "gpgrid synthetic GP draw",
            "Conventions": "CF-1.8",
            "source": "gpgrid.pipeline.synthetic",
            "gpgrid_recipe": repr(asdict(recipe)),
        },
    )


def write_synthetic(path: str, recipe: SyntheticGrid, chunks: tuple[int, int, int]) -> xr.Dataset:
    """Draw a synthetic dataset and write it as a zarr v3 store; returns the dataset."""
    ds = make_synthetic_dataset(recipe)
    chunks = tuple(min(c, n) for c, n in zip(chunks, recipe.shape, strict=True))
    encoding = {name: {"chunks": chunks} for name in ds.data_vars}
    with consolidated_v3_allowed():
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
    return ds
