"""A grid job's whole-domain trend (model.mean: domain): fitted once per variable before
the tiles, on observations drawn across the whole grid; every tile takes its posterior mean
as its prior mean and its GP models what the trend leaves.

The trend's own posterior variance is not added to the tiles' std: it is conditioned on a
subsample, so near data it is far larger than the data leave it, and what it does not
know is in the residuals each tile's GP learns its variance from (adding it counted that
twice: 99.9% coverage on the Heaton twin). The trend is evaluated on a coarse lattice over
the grid (at most LATTICE_NODES nodes, the grid's first and last cells included) and read
back by linear interpolation, so what travels to the tiles is small at any grid size. See
gpkernels.trend for the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from pipeline.covariates import residualised
from pipeline.grid import axis_coordinates, covariates_at, snapped
from pipeline.value_scan import MIN_OBSERVATIONS
from pipeline.work import ModelPlan, TileWork, WindowSource

SCAN_PER_POINT = 64  # the strided read the points are drawn from: this many cells per point
LATTICE_NODES = 2**15  # nodes of the coarse lattice the trend is evaluated on


@dataclass(frozen=True)
class TrendField:
    """The trend's posterior mean on a lattice (`axes`: each dim's coordinates in GP input
    units, ascending), and the fitted hyperparameters."""

    axes: tuple[np.ndarray, ...]
    mean: np.ndarray
    hyperparameters: dict

    def at(self, x: np.ndarray) -> np.ndarray:
        """The trend at GP inputs x (n, d), linear between lattice nodes; inputs past the
        lattice (a new grid's edge) take its nearest edge."""
        low = np.array([a[0] for a in self.axes])
        high = np.array([a[-1] for a in self.axes])
        return RegularGridInterpolator(self.axes, self.mean)(np.clip(x, low, high))


def fit_trends(work: TileWork) -> dict[str, TrendField | None]:
    """Every variable's trend (run as one Ray task before the tiles)."""
    ds = work.source.open()
    return {v: fit_trend(work.source, work.plan, ds, v, work.device) for v in work.source.variables}


def fit_trend(
    source: WindowSource, plan: ModelPlan, ds: xr.Dataset, var: str, device: str
) -> TrendField | None:
    """`var`'s trend from `plan.model.trend_points` observations drawn (seeded) from a
    strided read of the whole grid; None when too few are observed."""
    from gpkernels.trend import DomainTrend
    from pipeline.models import build_kernel, tensors, trend_kernel

    dims = source.dims
    sizes = tuple(ds.sizes[d] for d in dims)
    points = plan.model.trend_points
    picks = _strided(sizes, SCAN_PER_POINT * points)
    values = ds[var].isel(dict(zip(dims, picks, strict=True))).transpose(*dims).values
    axes = [_grid_axis(source, ds, d)[p] for d, p in zip(dims, picks, strict=True)]
    observed = np.flatnonzero(np.isfinite(values).reshape(-1))
    if observed.size < max(MIN_OBSERVATIONS, 10):
        return None
    gen = np.random.default_rng(0)
    chosen = np.sort(gen.choice(observed, min(points, observed.size), replace=False))
    x = _inputs(axes, chosen, values.shape)
    y = values.reshape(-1)[chosen]
    if source.covariates:  # the trend is of what the covariates leave, as the tiles see it
        selection = dict(zip(dims, picks, strict=True))
        at = covariates_at(ds, source.covariates, dims, selection, values.shape)
        y = residualised(y, at[chosen], source.covariates)
    tx, ty = tensors(plan, device, x, y)
    trend = DomainTrend(trend_kernel(plan), build_kernel(plan, scales=1))
    trend.fit(tx, ty, max_iter=plan.model.max_iter)
    nodes = _strided(sizes, LATTICE_NODES)
    lattice = [_grid_axis(source, ds, d)[p] for d, p in zip(dims, nodes, strict=True)]
    shape = tuple(len(a) for a in lattice)
    mean, _ = trend.predict(tensors(plan, device, _inputs(lattice, None, shape))[0])
    found = {**trend.hyperparameters(), "points": int(chosen.size)}
    found["fit"] = trend.fit_report.as_dict()
    return _ascending(lattice, mean.double().cpu().numpy(), found)


def _ascending(lattice: list[np.ndarray], mean: np.ndarray, found: dict) -> TrendField:
    """The field with every descending axis (latitude from north) turned ascending."""
    shape = tuple(len(a) for a in lattice)
    flips = tuple(i for i, a in enumerate(lattice) if a.size > 1 and a[1] < a[0])
    axes = tuple(a[::-1] if i in flips else a for i, a in enumerate(lattice))
    return TrendField(axes, np.flip(mean.reshape(shape), flips), found)


def _strided(sizes: tuple[int, ...], cells: int) -> tuple[np.ndarray, ...]:
    """Per dim, evenly strided indices (first and last included) whose lattice has about
    `cells` cells at most: one common stride, larger along no dim than its size."""
    stride = max(1.0, (math.prod(sizes) / cells) ** (1 / len(sizes)))
    picks = []
    for n in sizes:
        step = max(1, min(int(math.ceil(stride)), n))
        picks.append(np.unique(np.r_[np.arange(0, n, step), n - 1]))
    return tuple(picks)


def _grid_axis(source: WindowSource, ds: xr.Dataset, dim: str) -> np.ndarray:
    """A dim's coordinates over the whole input, in GP input units."""
    return snapped(axis_coordinates(source, ds, dim, slice(0, ds.sizes[dim])))


def _inputs(axes: list[np.ndarray], flat: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """GP inputs of the lattice cells `flat` (C-order indices into `shape`; None: all)."""
    index = np.unravel_index(np.arange(math.prod(shape)) if flat is None else flat, shape)
    return np.stack([a[i] for a, i in zip(axes, index, strict=True)], axis=1)
