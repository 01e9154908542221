"""Phase 1 on one sampled tile: fit hyperparameters, score the other tiles' fits, calibrate.

Shared hyperparameters are learned on a few sampled tiles (Ray tasks, see runner.py) and
then used by every tile. With one range each tile fits and calibrates its own set and the
driver takes medians (hyperparameters.pool). With several ranges the parts trade variance
and range against each other, so tiles that fit equally well can disagree by orders of
magnitude part by part, and medians taken part by part make a set that no tile fitted.
There every sampled tile scores every tile's fit by its likelihood, the driver keeps the
best-supported one (hyperparameters.best_supported), and each sampled tile calibrates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gpkernels import ExactGP
from pipeline.covariates import residualised
from pipeline.grid import read_covariates, read_window, window_axes, window_inputs, window_lattice
from pipeline.models import MODELS, Problem, build_kernel, nearest_to_core_centre, tensors
from pipeline.tiling import Tile
from pipeline.value_scan import MIN_OBSERVATIONS
from pipeline.work import ModelPlan, TileWork


@dataclass(frozen=True)
class _FitData:
    """One variable of a sampled tile as phase 1 sees it: every observation (less the
    domain trend and the covariates' least-squares part) as arrays and tensors, the rows
    fitted on, and the window's lattice (what the calibration's kiss model is built on)."""

    inputs: np.ndarray
    values: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    used: torch.Tensor
    lattice: Callable


def _variables(work: TileWork, tile: Tile) -> dict[str, _FitData | None]:
    """Per variable, what phase 1 learns from on `tile`; None when too few or constant."""
    from pipeline.tasks import constant_observations

    source, plan = work.source, work.plan
    ds = source.open()
    x = window_inputs(source, tile, ds)
    covariates = read_covariates(source, tile, ds)
    found: dict[str, _FitData | None] = {}
    for var in source.variables:
        values = read_window(source, tile, ds, var).reshape(-1)
        trend = plan.trend(var)
        if trend is not None:
            values = values - trend.at(x)
        observed = np.flatnonzero(np.isfinite(values))
        if observed.size < max(MIN_OBSERVATIONS, 10) or constant_observations(values[observed]):
            found[var] = None  # too few, or constant: no hyperparameters to learn
            continue
        values = values[observed].astype(np.float64)
        if covariates is not None:  # learn from what the covariates leave, as tiles do
            values = residualised(values, covariates[observed], source.covariates)
        tx, ty = tensors(plan, work.device, x[observed], values)
        used = _phase_one_points(plan, tile, observed, tx)
        found[var] = _FitData(
            x[observed],
            values,
            tx,
            ty,
            used,
            lambda: window_lattice(window_axes(source, tile, ds), source.dims),
        )
    return found


def fit_tile_hyperparameters(
    work: TileWork, tile: Tile, calibrate: bool | None = None
) -> dict[str, dict | None]:
    """Per variable, an ExactGP's hyperparameters fitted on the tile's phase-1 points
    (L-BFGS, `_phase_one_points`), in the data's units, widened by the tile's own
    calibration when `calibrate` (the spec's calibrate_variance by default); None when too
    few or constant."""
    plan = work.plan
    calibrate = plan.model.calibrate_variance if calibrate is None else calibrate
    found: dict[str, dict | None] = {}
    for var, data in _variables(work, tile).items():
        if data is None:
            found[var] = None
            continue
        model = ExactGP(build_kernel(plan), mean=plan.model.tile_mean)
        model.fit(
            data.x[data.used], data.y[data.used], max_iter=plan.model.max_iter, seed=tile.index
        )
        found[var] = model.shared_hyperparameters()
        if calibrate:
            found[var] = _calibrated(work, tile, data, found[var])
    return found


def tile_likelihoods(
    work: TileWork, tile: Tile, candidates: dict[str, list[dict]]
) -> dict[str, list[float] | None]:
    """Per variable, each candidate set's log marginal likelihood per observation on the
    tile's phase-1 points; None when the tile has nothing to learn from."""
    plan = work.plan
    scores: dict[str, list[float] | None] = {}
    for var, data in _variables(work, tile).items():
        if data is None or not candidates.get(var):
            scores[var] = None
            continue
        x, y = data.x[data.used], data.y[data.used]
        scores[var] = []
        for values in candidates[var]:
            model = ExactGP(build_kernel(plan), mean=plan.model.tile_mean)
            model.set_shared_hyperparameters(values, x, y)
            with torch.no_grad():
                lml = float(model.log_marginal_likelihood(x, y))
            scores[var].append(lml / y.numel())
    return scores


def tile_variance_factors(
    work: TileWork, tile: Tile, shared: dict[str, dict]
) -> dict[str, float | None]:
    """Per variable, the factor by which the tile's own moved gaps widen the `shared` set
    (KissGP.calibrate_variance); None when the tile has nothing to learn from."""
    factors: dict[str, float | None] = {}
    for var, data in _variables(work, tile).items():
        if data is None:
            factors[var] = None
            continue
        factors[var] = _calibrated(work, tile, data, shared[var])["variance_factor"]
    return factors


def _phase_one_points(
    plan: ModelPlan, tile: Tile, observed: np.ndarray, x: torch.Tensor
) -> torch.Tensor:
    """The rows of the tile's observations (`x`, at window cells `observed`) phase 1 fits:
    the `fit_points` nearest the core's centre, one compact cluster, whose short lags are
    what gaps near data are predicted from (a spread subsample's longer lags lengthened
    OSTIA's range and left its cloud gaps at 0.73 coverage, against 0.87).

    With two ranges a spread subsample does identify the long one, but on OSTIA that long
    range (the pole-to-equator gradient, far above a tiny noise) left the stationary-grid
    CG unconverged after 1,000 iterations: RMSE 0.60 K and coverage 0.28, against 0.096
    and 0.959 from the cluster (where the long part keeps a small share). The cluster
    stays until that solve has a preconditioner for such sums.
    """
    nearest = nearest_to_core_centre(observed, tile, plan.model.fit_points)
    return torch.as_tensor(np.searchsorted(observed, nearest), device=x.device)


def _calibrated(work: TileWork, tile: Tile, data: _FitData, fitted: dict) -> dict:
    """`fitted` with outputscale and noise widened as the kiss tile's own calibration on
    its moved gaps asks (`KissGP.calibrate_variance`), with the factor."""
    problem = Problem(data.inputs, data.values, data.inputs[:0], tile.index, data.lattice)
    model = MODELS.row("kiss", False).build(work.plan, problem)
    model.set_shared_hyperparameters(fitted, data.x, data.y)
    factor = model.calibrate_variance(data.x, data.y)
    return {**model.shared_hyperparameters(), "variance_factor": factor}
