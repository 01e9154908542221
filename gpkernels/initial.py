"""Starting hyperparameters for the scalable models: an exact GP fitted on a small subsample.

Adam then refines sensible values instead of walking from defaults.
"""

from __future__ import annotations

import warnings

import torch

from gpkernels.base import FitReport, GPModel, LengthscaleWarning
from gpkernels.exact import ExactGP
from gpkernels.kernels import stationary_factors
from gpkernels.linalg import NumericalWarning


def subsample_for_init(x: torch.Tensor, points: int, seed: int) -> torch.Tensor:
    """`points` row indices: half at random, half the nearest neighbours of a random row.

    Distances are in units of each column's typical spacing, range / n^(1/d).
    """
    n, d = x.shape
    if n <= points:
        return torch.arange(n, device=x.device)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen).to(x.device)
    spread = order[: points // 2]
    spacing = (x.max(0).values - x.min(0).values).clamp_min(1e-12) / n ** (1.0 / d)
    centre = x[order[-1]]
    dist = (((x - centre) / spacing) ** 2).sum(1)
    dist[spread] = float("inf")
    cluster = torch.topk(dist, points - spread.numel(), largest=False).indices
    return torch.cat([spread, cluster])


def init_from_subsample(
    model: GPModel,
    x: torch.Tensor,
    y: torch.Tensor,
    points: int,
    seed: int,
    max_iter: int = 50,
) -> FitReport | None:
    """Set `model`'s hyperparameters to an exact GP's (sharing its modules) fitted by up to
    `max_iter` L-BFGS steps on a subsample; returns that fit's report (None when the kernel
    has no stationary part to fit and nothing ran).

    Half the subsample is spread at random over the data (long-range structure), half
    is one compact cluster of nearest neighbours (short range and the noise, which
    sparse random points cannot tell apart).
    """
    if not stationary_factors(model.kernel):
        return None
    idx = subsample_for_init(x, points, seed)
    exact = ExactGP(model.kernel, model.likelihood, model.normalize_y, model.mean)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NumericalWarning)
        report = exact.fit(x[idx], y[idx], max_iter=max_iter).fit_report
    if model.normalize_y:  # the subsample was standardised by its own variance, not y's
        ratio = (exact.y_scale / max(model._target_scaling(x, y)[1], 1e-30)) ** 2
        with torch.no_grad():
            model.kernel.outputscale = model.kernel.outputscale * ratio
            floor = model.likelihood.noise_param.floor
            model.likelihood.noise = torch.clamp(model.likelihood.noise * ratio, min=1.01 * floor)
    # A collapsed lengthscale is reported by the model's own fit, on its final values.
    trouble = [
        str(w.message)
        for w in caught
        if issubclass(w.category, NumericalWarning)
        and not issubclass(w.category, LengthscaleWarning)
    ]
    if trouble:  # one summary instead of one warning per line-search step
        warnings.warn(
            f"the initial exact fit on {len(idx)} points reported: {trouble[-1]}",
            NumericalWarning,
            stacklevel=3,
        )
    return report
