"""The kernel family, chosen by the data where the spec names none (model.kernel omitted).

Before any tile, each of a few tiles spread over the plan fits every candidate family
(one Matérn smoothness for every input column, in the spec's isotropic grouping) by
maximum likelihood on the observations nearest its core (`fit_points`, at most
KERNEL_CHOICE_POINTS), per variable; the
family with the largest summed log marginal likelihood per observation is the run's, for
every tile, so neighbouring tiles never differ in kind. Smoothness is a short-range
property: the compact windows the tiles fit on hold the short lags that decide it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.config import AxisKernel
from pipeline.covariates import residualised
from pipeline.grid import read_covariates, read_window, window_inputs
from pipeline.tiling import Tile
from pipeline.value_scan import MIN_OBSERVATIONS
from pipeline.work import ModelPlan, TileWork

CANDIDATES = ("matern12", "matern32", "matern52")
KERNEL_CHOICE_TILES = 4  # tiles spread over the plan that each fit every candidate
KERNEL_CHOICE_POINTS = 500  # observations nearest each one's core: a compact patch


def with_family(plan: ModelPlan, family: str) -> ModelPlan:
    """The plan with `family` for every input column."""
    kernels = (AxisKernel(family),) * len(plan.columns)
    return replace(plan, model=replace(plan.model, kernels=kernels))


def family_likelihoods(work: TileWork, tile: Tile) -> dict[str, float]:
    """Per candidate, the log marginal likelihood per observation of an ExactGP fitted on
    the tile's observations nearest its core, summed over the variables it can fit."""
    from gpkernels import ExactGP
    from pipeline.models import build_kernel, nearest_to_core, tensors
    from pipeline.tasks import constant_observations

    source, plan = work.source, work.plan
    ds = source.open()
    x = window_inputs(source, tile, ds)
    covariates = read_covariates(source, tile, ds)
    totals = dict.fromkeys(CANDIDATES, 0.0)
    for var in source.variables:
        values = read_window(source, tile, ds, var).reshape(-1)
        observed = np.flatnonzero(np.isfinite(values))
        if observed.size < max(MIN_OBSERVATIONS, 10) or constant_observations(values[observed]):
            continue
        points = min(plan.model.fit_points, KERNEL_CHOICE_POINTS)
        used = nearest_to_core(observed, tile, plan.halo, points, tile.index)
        y = values[used]
        if covariates is not None:  # the families compete on what the covariates leave
            y = residualised(y, covariates[used], source.covariates)
        tx, ty = tensors(plan, work.device, x[used], y)
        for family in CANDIDATES:
            model = ExactGP(build_kernel(with_family(plan, family)), mean=plan.model.tile_mean)
            model.fit(tx, ty, max_iter=plan.model.max_iter, seed=tile.index)
            totals[family] += model.fit_report.log_marginal_likelihood / used.size
    return totals


def choose_family(per_tile: list[dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The family with the largest summed likelihood over the sampled tiles, and the sums."""
    sums = {family: float(sum(t[family] for t in per_tile)) for family in CANDIDATES}
    return max(sums, key=sums.__getitem__), sums
