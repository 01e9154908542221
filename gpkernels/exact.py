"""Exact GP regression by dense Cholesky: the reference every structured model is tested against."""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import nn

from gpkernels.base import FitReport, GPModel
from gpkernels.kernels import Kernel, start_lengthscales
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import LOG_2PI, NumericalWarning, robust_cholesky
from gpkernels.optim import LBFGSResult, lbfgs
from gpkernels.regression import KrigedColumns

INIT_LENGTHSCALE_FRACTIONS = (0.03, 0.1, 0.3, 1.0)
INIT_NOISE_FRACTIONS = (0.01, 0.1, 0.5)
INIT_SUBSAMPLE = 500


class _GaussianLogDensity(torch.autograd.Function):
    """log N(z | 0, K) from a given Cholesky factor, with the closed-form gradient in K.

    d/dK = (alpha alpha^T - K^-1) / 2 costs one Cholesky inverse, about half of what
    autograd through the factorisation costs.
    """

    @staticmethod
    def forward(ctx, cov, z, factor, alpha):  # noqa: ANN001, ANN205
        ctx.save_for_backward(factor, alpha)
        n = z.shape[0]
        return -0.5 * (z @ alpha) - factor.diagonal().log().sum() - 0.5 * n * LOG_2PI

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        factor, alpha = ctx.saved_tensors
        grad_cov = 0.5 * (torch.outer(alpha, alpha) - torch.cholesky_inverse(factor))
        return grad_output * grad_cov, None, None, None


def maximise_dense_lml(
    model: nn.Module, x: torch.Tensor, z: torch.Tensor, n: int, max_iter: int
) -> tuple[LBFGSResult, float]:
    """L-BFGS on `model._standardised_lml(x, z)` / n over all its free parameters.

    Returns the optimiser's result and the largest jitter any factorisation needed,
    which is also reported in a `NumericalWarning`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    max_jitter = 0.0

    def objective() -> torch.Tensor:
        nonlocal max_jitter
        lml, _, _, jitter = model._standardised_lml(x, z, warn=False)
        max_jitter = max(max_jitter, jitter)
        return -lml / n

    result = lbfgs(objective, params, max_iter=max_iter)
    if max_jitter > 0:
        warnings.warn(
            f"fit needed up to {max_jitter:.3g} jitter on the kernel diagonal",
            NumericalWarning,
            stacklevel=3,
        )
    return result, max_jitter


class ExactGP(GPModel):
    """GP regression with a Gaussian likelihood, solved exactly by dense Cholesky.

    The reference every structured model is tested against; for n up to a few
    thousand. See `GPModel` for target standardisation and units.
    """

    def __init__(
        self,
        kernel: Kernel,
        likelihood: GaussianLikelihood | None = None,
        normalize_y: bool = True,
        mean: str = "constant",
    ) -> None:
        super().__init__(kernel, likelihood, normalize_y, mean)
        self._cache: dict[str, torch.Tensor] | None = None
        self.jitter = 0.0

    def _noisy_covariance(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.kernel(x, x)
        return cov + self.likelihood.noise * torch.eye(x.shape[0], dtype=x.dtype, device=x.device)

    def _standardised_lml(self, x: torch.Tensor, z: torch.Tensor, warn: bool = True) -> tuple:
        """log p(z | x) of standardised targets, with the factor, alpha and jitter used."""
        cov = self._noisy_covariance(x)
        with torch.no_grad():
            factor, jitter = robust_cholesky(cov, warn=warn)
            alpha = torch.cholesky_solve(z[:, None], factor)[:, 0]
        lml = _GaussianLogDensity.apply(cov, z, factor, alpha)
        return lml, factor, alpha, jitter

    def log_marginal_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) at the current hyperparameters, in the units of y (differentiable)."""
        z = self._standardise(x, y)
        lml, *_ = self._standardised_lml(x, z)
        return lml - z.shape[0] * math.log(self.y_scale)

    # -- training ------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, z: torch.Tensor, seed: int = 0) -> None:
        """Start lengthscales and noise from the data, not from defaults.

        Lengthscales are tried as fractions of each column's range and the noise as
        fractions of the (standardised) variance; the pair with the best marginal
        likelihood on a subsample of at most 500 points wins.
        """
        if x.shape[0] > INIT_SUBSAMPLE:
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(x.shape[0], generator=gen)[:INIT_SUBSAMPLE].to(x.device)
            x, z = x[idx], z[idx]
        spans = (x.max(0).values - x.min(0).values).clamp_min(1e-3)
        if hasattr(self.kernel, "outputscale"):
            self.kernel.outputscale = 1.0
        best: tuple[float, float, float] | None = None
        for frac in INIT_LENGTHSCALE_FRACTIONS:
            for noise in INIT_NOISE_FRACTIONS:
                start_lengthscales(self.kernel, frac, spans)
                self.likelihood.noise = noise
                try:
                    lml = float(self._standardised_lml(x, z, warn=False)[0])
                except torch.linalg.LinAlgError:
                    continue
                if best is None or lml > best[0]:
                    best = (lml, frac, noise)
        if best is None:
            raise torch.linalg.LinAlgError("no starting hyperparameters gave a factorisable matrix")
        _, frac, noise = best
        start_lengthscales(self.kernel, frac, spans)
        self.likelihood.noise = noise

    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        max_iter: int = 100,
        init_from_data: bool = True,
        seed: int = 0,
    ) -> ExactGP:
        """Learn hyperparameters by L-BFGS on the marginal likelihood, then condition on (x, y)."""
        start = time.perf_counter()
        z = self._standardise(x, y)
        if init_from_data:
            self.init_from_data(x, z, seed=seed)
        result, max_jitter = maximise_dense_lml(self, x, z, z.shape[0], max_iter)
        self.condition(x, y)
        lml = float(self._cache["lml"])
        report = FitReport(
            result.iterations,
            result.converged,
            result.reason,
            lml,
            max_jitter,
            time.perf_counter() - start,
        )
        return self._reviewed(report, x)

    # -- prediction ----------------------------------------------------------------
    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> ExactGP:
        """Cache the Cholesky factor and K^-1 y at the current hyperparameters."""
        z = self._standardise(x, y)
        lml, factor, alpha, jitter = self._standardised_lml(x, z)
        self.jitter = jitter
        self._cache = {
            "x": x,
            "factor": factor,
            "alpha": alpha,
            "lml": lml - z.shape[0] * math.log(self.y_scale),
        }
        return self

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 2048
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance at x (of f, or of y with `include_noise`), in blocks."""
        return self._predict_with(x, self.kernel, include_noise, block_size)

    @torch.no_grad()
    def predict_part(
        self, x: torch.Tensor, part: Kernel, block_size: int = 2048
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean (with the prior mean) and variance at x of one additive part of
        the kernel, e.g. the long-range term of a sum: the data's covariance is the whole
        kernel's, the cross-covariance only the part's. In y's units."""
        return self._predict_with(x, part, False, block_size)

    @torch.no_grad()
    def kriged(self, columns: torch.Tensor) -> KrigedColumns:
        """Simple kriging of other columns (n, p) at the conditioned data, with the same
        covariance (what universal kriging needs, gpkernels.regression)."""
        if self._cache is None:
            raise RuntimeError("call fit(x, y) or condition(x, y) before kriged")
        train_x, factor = self._cache["x"], self._cache["factor"]
        solved = torch.cholesky_solve(columns.to(factor), factor)

        @torch.no_grad()
        def at(x: torch.Tensor) -> torch.Tensor:
            x = x.to(dtype=train_x.dtype, device=train_x.device)
            return torch.cat([self.kernel(xb, train_x) @ solved for xb in torch.split(x, 2048)])

        return KrigedColumns(solved, at)

    def _predict_with(
        self, x: torch.Tensor, cross_kernel: Kernel, include_noise: bool, block_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior moments at x of the process whose covariance with the data (and with
        itself) is `cross_kernel`'s: the whole kernel, or one additive part of it."""
        self._check_prediction_input(
            self._cache, x, self._cache["x"].shape[1] if self._cache else 0
        )
        train_x = self._cache["x"]
        x = x.to(dtype=train_x.dtype, device=train_x.device)
        means, variances = [], []
        for xb in torch.split(x, block_size):
            cross = cross_kernel(xb, train_x)
            means.append(cross @ self._cache["alpha"])
            v = torch.linalg.solve_triangular(self._cache["factor"], cross.T, upper=False)
            variances.append(cross_kernel.diag(xb) - (v * v).sum(0))
        return self._finish_prediction(means, variances, x, include_noise)
