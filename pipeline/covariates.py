"""A tile's mean regressed on covariates (model.covariates, universal kriging).

The regressors are an intercept and each covariate standardised over the cells the model
takes (a covariate constant there is dropped: the intercept holds it). Least squares gives
the start, whose residuals the GP's hyperparameters are fitted on and the model is
conditioned on; gpkernels.regression then turns that into the GLS coefficients, with their
uncertainty in the variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gpkernels.regression import gls_fit

INTERCEPT = "intercept"


@dataclass(frozen=True)
class Design:
    """The regressors at the data (n, p) and at the targets (m, p), their names, and the
    least-squares coefficients of the data's values on them (the GLS's start)."""

    data: np.ndarray
    targets: np.ndarray
    names: tuple[str, ...]
    start: np.ndarray

    @classmethod
    def fit(
        cls, covariates: np.ndarray, targets: np.ndarray, y: np.ndarray, names: Sequence[str]
    ) -> Design:
        """The design of `covariates` (n, q) at the data with values `y`, and at the targets
        (m, q), each standardised over the data."""
        centre, spread = covariates.mean(0), covariates.std(0)
        kept = spread > 1e-12 * np.maximum(np.abs(centre), 1.0)
        scaled = [(c[:, kept] - centre[kept]) / spread[kept] for c in (covariates, targets)]
        data, at_targets = (np.column_stack([np.ones(len(c)), c]) for c in scaled)
        start = np.linalg.lstsq(data, y.astype(np.float64), rcond=None)[0]
        kept_names = (INTERCEPT, *(n for n, k in zip(names, kept, strict=True) if k))
        return cls(data, at_targets, kept_names, start)

    def residuals(self, y: np.ndarray) -> np.ndarray:
        """`y` less its least-squares fit: what the GP models."""
        return y - self.data @ self.start


def residualised(values: np.ndarray, covariates: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Observed `values` less their least-squares fit on the covariates at those cells:
    what phase-1 and kernel-choice fits learn hyperparameters from."""
    return Design.fit(covariates, covariates[:0], values, names).residuals(values)


def universal_moments(
    model,  # noqa: ANN001 - a conditioned gpkernels model offering `kriged`
    design: Design,
    residuals: torch.Tensor,
    targets: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The model's mean and variance at `targets` (of the residuals it was conditioned on)
    made universal kriging's: the GLS coefficients' mean added, and their uncertainty; with
    the coefficients (per standard deviation of each covariate over the tile) and their std."""
    h = torch.as_tensor(design.data, dtype=torch.float64, device=residuals.device)
    h_targets = torch.as_tensor(design.targets, dtype=torch.float64, device=residuals.device)
    fit = gls_fit(model, h, residuals)
    mean, var = fit.moments(mean, var, targets, h_targets)
    mean = mean + (h_targets @ torch.as_tensor(design.start).to(h_targets)).to(mean)
    coefficients = design.start + fit.delta.cpu().numpy()
    report = {
        "names": list(design.names),
        "coefficients": coefficients.tolist(),
        "std": np.sqrt(np.diag(fit.covariance.cpu().numpy())).tolist(),
    }
    return mean, var, report
