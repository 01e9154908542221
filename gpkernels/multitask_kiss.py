"""ICM on a KISS interpolation grid: several variables, scattered points, any of them missing.

cov(f_s(x), f_t(x')) ~ B[s, t] w(x)^T K_UU w(x') with K_UU a Kronecker product on a
regular grid of m cells and w(x) the cubic-convolution weights. With the per-entry
noise N and W_f the interpolation rows of every observed (point, task) entry:

    K = W_f (B kron K_UU) W_f^T + N,   C = B kron K_UU,   G = W_f^T N^-1 W_f (block diagonal)
    log|K| = log|N| + log|I + G C|,    y^T K^-1 y = y^T N^-1 y - b^T C (I + G C)^-1 b

with b = W_f^T N^-1 y. Everything is a dense (T m) x (T m) problem in float64, whatever
the number of points: exact SKI likelihood, means and variances, gradients by autograd.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from gpkernels.base import FitReport, check_prediction_input
from gpkernels.columns import standardise_columns, to_output_units
from gpkernels.initial import subsample_for_init
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import Kernel, axis_column, product_factors
from gpkernels.kiss import interpolation_lattice
from gpkernels.linalg import LOG_2PI
from gpkernels.multitask import (
    MultitaskExactGP,
    TaskCovariance,
    check_multitask_data,
    icm_hyperparameters,
)
from gpkernels.ongrid import Lattice
from gpkernels.optim import adam_until_calm
from gpkernels.params import PositiveParameter
from gpkernels.structured import toeplitz

HINT = "give a unit-variance product of one 1-D kernel per input column, e.g. Product([...])"


class MultitaskKissGP(nn.Module):
    """ICM GP regression through a KISS grid, with MultitaskExactGP's facade.

    `kernel` has unit variance (B carries each task's variance) and one factor per
    input column. The grid has `grid_shape` cells (chosen so that tasks x cells stays
    within `dense_limit` when None). `fit` starts from a MultitaskExactGP on
    `init_points` rows, then runs Adam on the full likelihood.
    """

    def __init__(
        self,
        kernel: Kernel,
        num_tasks: int,
        rank: int = 1,
        grid_shape: Sequence[int] | None = None,
        dense_limit: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.fit_report: FitReport | None = None  # how the last `fit` went
        self.kernel = kernel
        self.tasks = TaskCovariance(num_tasks, rank, seed)
        self.noise = PositiveParameter(torch.full((num_tasks,), 0.1), floor=1e-6)
        self.num_tasks = num_tasks
        self.rank = rank
        self.grid_shape = tuple(grid_shape) if grid_shape is not None else None
        self.dense_limit = dense_limit
        self.seed = seed
        self.y_mean = torch.zeros(num_tasks)
        self.y_scale = torch.ones(num_tasks)
        self.diagnostics: dict = {}
        self._cache: dict | None = None

    # -- data --------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Standardise y per task, interpolate x, and sum each task's W^T W and W^T y."""
        check_multitask_data(x, y, self.num_tasks)
        product_factors(self.kernel, x.shape[1], HINT)  # refuse non-separable kernels early
        self.to(device=x.device, dtype=x.dtype)
        z, self.y_mean, self.y_scale = standardise_columns(y.to(x))
        shape = self.grid_shape or self._default_grid_shape(x)
        lattice = interpolation_lattice(x, shape)
        interp = Interpolation.build(x, lattice.starts, lattice.spacings, lattice.shape)
        grams, wty, yty, counts = [], [], [], []
        for task in range(self.num_tasks):
            seen = torch.isfinite(z[:, task])
            rows = interp.rows(seen)
            values = z[seen, task].double()
            grams.append(rows.gram(torch.float64))
            wty.append(rows.transpose_matmul(values[:, None].to(rows.weight))[:, 0].double())
            yty.append(values @ values)
            counts.append(int(seen.sum()))
        self.diagnostics = {
            "path": "multitask interpolated (B kron K_UU, dense (T m) x (T m) in float64)",
            "grid_shape": list(lattice.shape),
        }
        return {
            "lattice": lattice,
            "grams": grams,
            "wty": wty,
            "yty": torch.stack(yty),
            "counts": torch.tensor(counts, dtype=torch.float64, device=x.device),
        }

    def _default_grid_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        per_task = self.dense_limit // self.num_tasks
        per_axis = max(8, int(per_task ** (1.0 / x.shape[1])))
        return (per_axis,) * x.shape[1]

    # -- likelihood --------------------------------------------------------------------
    def _system(self, data: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """C = B kron K_UU, I + G C and b, all float64 (T m) sized."""
        lattice: Lattice = data["lattice"]
        device = data["yty"].device
        factors = product_factors(self.kernel, len(lattice.shape), HINT)
        k_uu = None
        for axis, factor in enumerate(factors):
            lags = lattice.lags(axis, torch.float64, device)
            column = axis_column(factor, axis, lags.to(self.noise.raw.dtype), len(lattice.shape))
            block = toeplitz(column.double())
            k_uu = block if k_uu is None else torch.kron(k_uu, block)
        cov = torch.kron(self.tasks.matrix.double().to(device), k_uu)
        noise = self.noise.value.double()
        m = k_uu.shape[0]
        g_times_c = torch.cat(
            [data["grams"][t] @ cov[t * m : (t + 1) * m] / noise[t] for t in range(self.num_tasks)]
        )
        eye = torch.eye(g_times_c.shape[0], dtype=torch.float64, device=device)
        b = torch.cat([data["wty"][t] / noise[t] for t in range(self.num_tasks)])
        return cov, eye + g_times_c, b

    def _standardised_lml(self, data: dict) -> torch.Tensor:
        cov, system, b = self._system(data)
        noise = self.noise.value.double()
        solved = torch.linalg.solve(system, b[:, None])[:, 0]
        quad = (data["yty"] / noise).sum() - b @ (cov @ solved)
        logdet = (data["counts"] * noise.log()).sum() + torch.linalg.slogdet(system)[1]
        n = data["counts"].sum()
        return -0.5 * quad - 0.5 * logdet - 0.5 * n * LOG_2PI

    def log_marginal_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(observed y | x) of the SKI model, in the units of y (differentiable)."""
        data = self._prepare(x, y)
        return self._standardised_lml(data) - (data["counts"] * self.y_scale.double().log()).sum()

    # -- training ------------------------------------------------------------------------
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        max_iter: int = 100,
        lr: float = 0.1,
        tol: float = 1e-4,
        init_points: int = 300,
        init_iter: int = 50,
    ) -> MultitaskKissGP:
        """A MultitaskExactGP on `init_points` rows (up to `init_iter` L-BFGS steps), then
        Adam on the full likelihood (up to `max_iter` steps, or until calm to `tol`).

        Returns the model; `fit_report` tells how Adam stopped (iterations: its steps).
        """
        start = time.perf_counter()
        self._init_from_subsample(x, y, init_points, init_iter)
        data = self._prepare(x, y)
        total = float(data["counts"].sum())
        result = adam_until_calm(
            lambda: -self._standardised_lml(data) / total,
            [p for p in self.parameters() if p.requires_grad],
            max_iter,
            lr,
            tol,
            "MultitaskKissGP",
        )
        self.condition(x, y)
        self.fit_report = FitReport(
            result.iterations,
            result.converged,
            result.reason,
            self._cache["lml"],
            0.0,
            time.perf_counter() - start,
        )
        return self

    def _init_from_subsample(
        self, x: torch.Tensor, y: torch.Tensor, points: int, max_iter: int
    ) -> None:
        """Kernel, B and noise from an exact ICM fit (sharing the kernel module) of up to
        `max_iter` L-BFGS steps on a subsample of `points` rows."""
        idx = subsample_for_init(x, points, self.seed)
        exact = MultitaskExactGP(self.kernel, self.num_tasks, self.rank, self.seed)
        exact.fit(x[idx], y[idx], max_iter=max_iter)
        self.tasks.load_state_dict(exact.tasks.state_dict())
        self.noise.load_state_dict(exact.noise.state_dict())

    # -- prediction ----------------------------------------------------------------------
    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> MultitaskKissGP:
        """Posterior over the grid values of every task: mean (T m) and covariance."""
        data = self._prepare(x, y)
        cov, system, b = self._system(data)
        mean_u = cov @ torch.linalg.solve(system, b[:, None])[:, 0]
        # (C^-1 + G)^-1 = C (I + G C)^-1, symmetric up to rounding
        posterior = torch.linalg.solve(system.T, cov.T).T
        lml = self._standardised_lml(data) - (data["counts"] * self.y_scale.double().log()).sum()
        self._cache = {
            "lattice": data["lattice"],
            "mean_u": mean_u,
            "cov_u": 0.5 * (posterior + posterior.T),
            "lml": float(lml),
        }
        return self

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 65536
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances (m, T) of every task at x, in each task's units."""
        cache = self._cache
        check_prediction_input(cache, x, len(cache["lattice"].shape) if cache else None)
        lattice: Lattice = cache["lattice"]
        m = lattice.size
        means, variances = [], []
        for xb in torch.split(x, block_size):
            interp = Interpolation.build(xb, lattice.starts, lattice.spacings, lattice.shape)
            weight = interp.weight.double()
            mean, var = [], []
            for t in range(self.num_tasks):
                index = interp.index + t * m
                mean.append((cache["mean_u"][index] * weight).sum(1))
                block = cache["cov_u"][index[:, :, None], index[:, None, :]]
                var.append(torch.einsum("bi,bij,bj->b", weight, block, weight))
            means.append(torch.stack(mean, 1))
            variances.append(torch.stack(var, 1))
        noise = self.noise.value if include_noise else None
        return to_output_units(means, variances, noise, self.y_mean, self.y_scale, x.dtype)

    def hyperparameters(self) -> dict:
        return icm_hyperparameters(self)
