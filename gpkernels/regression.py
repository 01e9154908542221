"""Universal kriging: a prior mean that is a linear combination of regressors (an intercept,
covariates such as elevation) with unknown coefficients, estimated by generalised least
squares, and their uncertainty carried into the predictive variance.

Any conditioned model that offers `kriged(columns)` (simple kriging of other right-hand
sides with its own covariance) takes it: with K the data's covariance, H the regressors
at the data and h, R = k(x, data) K^-1 H their values and simple-kriging predictions at a
target x, the GLS coefficients correct a least-squares start by
    delta = (H^T K^-1 H)^-1 H^T K^-1 r,   r = y - H beta_start,
the mean at x adds (h - R) delta to the simple-kriging mean of r, and the variance adds
(h - R)^T (H^T K^-1 H)^-1 (h - R): near data R follows h and the term vanishes; deep in a
gap R falls to 0 and the coefficients' whole uncertainty counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpkernels.linalg import robust_cholesky


@dataclass(frozen=True)
class KrigedColumns:
    """Simple kriging of columns C (n, p) given at a model's data, with its covariance K
    (standardised units): `solved` is K^-1 C, and `at(x)` is k(x, data) K^-1 C (m, p)."""

    solved: torch.Tensor
    at: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GLSFit:
    """What the GLS adds to a model conditioned on least-squares residuals r: `delta`, the
    coefficients' correction (p,), their covariance (p, p) in the data's units, and the
    regressors' simple kriging (to evaluate at targets)."""

    delta: torch.Tensor
    covariance: torch.Tensor
    kriged: KrigedColumns

    def moments(
        self, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's simple-kriging `mean` and `var` of r at targets x (regressors h)
        made universal: the corrected coefficients' mean, and their variance added."""
        p = self.delta.shape[0]
        gap = h.to(self.delta) - self.kriged.at(x)[:, :p]
        extra = ((gap @ self.covariance) * gap).sum(1)
        return mean + (gap @ self.delta).to(mean), var + extra.clamp_min(0.0).to(var)


def gls_fit(model, h: torch.Tensor, r: torch.Tensor) -> GLSFit:  # noqa: ANN001
    """The GLS correction for a model conditioned on residuals `r` of a least-squares fit
    on regressors `h` (n, p, with an intercept column, so r has mean zero); `model` offers
    `kriged(columns)` and `y_scale` (its covariance is y_scale^2 K)."""
    columns = torch.cat([h, r[:, None]], 1).to(torch.float64)
    kriged = model.kriged(columns)
    p = h.shape[1]
    solved = kriged.solved.to(torch.float64)
    information = columns[:, :p].T @ solved[:, :p]  # H^T K^-1 H
    information = 0.5 * (information + information.T)
    factor, _ = robust_cholesky(information)
    delta = torch.cholesky_solve(columns[:, :p].T @ solved[:, p:], factor)[:, 0]
    covariance = torch.cholesky_inverse(factor) * model.y_scale**2
    return GLSFit(delta, covariance, kriged)
