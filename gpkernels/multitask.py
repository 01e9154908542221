"""Multitask GPs by the intrinsic coregionalisation model (ICM): several variables, one grid.

cov(f_s(x), f_t(x')) = B[s, t] k(x, x') with B = W W^T + diag(v) (rank-r plus diagonal),
so correlated variables lend each other strength where one has gaps and another does not.
Each task has its own noise and its own standardisation (the variables may have
different units); observations are an (n, T) array with NaN where a task is missing.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from gpkernels.base import FitReport, check_prediction_input
from gpkernels.columns import standardise_columns, to_output_units
from gpkernels.exact import _GaussianLogDensity, maximise_dense_lml
from gpkernels.kernels import Kernel
from gpkernels.linalg import robust_cholesky
from gpkernels.params import PositiveParameter


class TaskCovariance(nn.Module):
    """B = W W^T + diag(v), T x T: the covariance between tasks (ICM's coregionalisation)."""

    def __init__(self, num_tasks: int, rank: int = 1, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= rank <= num_tasks:
            raise ValueError(f"rank must be between 0 and num_tasks={num_tasks}; got {rank}")
        gen = torch.Generator().manual_seed(seed)
        self.mixing = nn.Parameter(0.5 * torch.randn(num_tasks, rank, generator=gen).double())
        self.diagonal = PositiveParameter(torch.full((num_tasks,), 0.5), floor=1e-6)

    @property
    def matrix(self) -> torch.Tensor:
        return self.mixing @ self.mixing.T + torch.diag(self.diagonal.value)

    def correlation(self) -> torch.Tensor:
        b = self.matrix.detach()
        scale = b.diagonal().sqrt()
        return b / torch.outer(scale, scale)


def check_multitask_data(x: torch.Tensor, y: torch.Tensor, num_tasks: int) -> None:
    """Refuse x that is not (n, d) and finite, or y that is not (n, num_tasks)."""
    if x.ndim != 2 or y.ndim != 2 or y.shape != (x.shape[0], num_tasks):
        raise ValueError(
            f"x must be (n, d) and y (n, {num_tasks}) with NaN where a task is "
            f"missing; got x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite; drop rows with NaN coordinates")


def icm_hyperparameters(model: nn.Module) -> dict:
    """An ICM model's kernel, task covariance B (standardised units), per-task noise (data
    units) and per-task means."""
    return {
        "kernel": model.kernel.describe(),
        "task_covariance": model.tasks.matrix.detach().cpu().tolist(),
        "task_correlation": model.tasks.correlation().cpu().tolist(),
        "noise": (model.noise.value.detach() * model.y_scale**2).cpu().tolist(),
        "mean": model.y_mean.cpu().tolist(),
    }


def _observed_entries(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and task index of every finite entry of y (n, T)."""
    rows, tasks = torch.nonzero(torch.isfinite(y), as_tuple=True)
    return rows, tasks


class MultitaskExactGP(nn.Module):
    """ICM GP regression solved exactly by dense Cholesky over every observed (point, task).

    `kernel` should have unit variance (no `Scale`): B carries each task's variance.
    `fit(x, y)` learns the kernel, B and the per-task noise by L-BFGS on the marginal
    likelihood; `predict(x)` returns (m, T) means and variances for every task.
    """

    def __init__(self, kernel: Kernel, num_tasks: int, rank: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.kernel = kernel
        self.tasks = TaskCovariance(num_tasks, rank, seed)
        self.noise = PositiveParameter(torch.full((num_tasks,), 0.1), floor=1e-6)
        self.num_tasks = num_tasks
        self.y_mean = torch.zeros(num_tasks)
        self.y_scale = torch.ones(num_tasks)
        self.jitter = 0.0
        self.fit_report: FitReport | None = None  # how the last `fit` went
        self._cache: dict | None = None

    def _standardise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task standardised y (NaN kept), after checking shapes and coverage."""
        check_multitask_data(x, y, self.num_tasks)
        self.to(device=x.device, dtype=x.dtype)
        z, self.y_mean, self.y_scale = standardise_columns(y)
        return z

    def _covariance(self, x: torch.Tensor, rows: torch.Tensor, tasks: torch.Tensor):  # noqa: ANN202
        points = x[rows]
        b = self.tasks.matrix.to(x.dtype)
        cov = b[tasks][:, tasks] * self.kernel(points, points)
        return cov + torch.diag(self.noise.value.to(x.dtype)[tasks])

    def _standardised_lml(self, x: torch.Tensor, z: torch.Tensor, warn: bool = True) -> tuple:
        rows, tasks = _observed_entries(z)
        values = z[rows, tasks]
        cov = self._covariance(x, rows, tasks)
        with torch.no_grad():
            factor, jitter = robust_cholesky(cov, warn=warn)
            alpha = torch.cholesky_solve(values[:, None], factor)[:, 0]
        return _GaussianLogDensity.apply(cov, values, factor, alpha), factor, alpha, jitter

    def log_marginal_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(observed y | x), in the units of y (differentiable)."""
        z = self._standardise(x, y)
        lml, *_ = self._standardised_lml(x, z)
        rows, tasks = _observed_entries(z)
        return lml - self.y_scale.log()[tasks].sum()

    def fit(self, x: torch.Tensor, y: torch.Tensor, max_iter: int = 100) -> MultitaskExactGP:
        """Learn kernel, task covariance and noise by up to `max_iter` L-BFGS steps, then
        condition on (x, y). Returns the model; `fit_report` tells how L-BFGS stopped."""
        start = time.perf_counter()
        z = self._standardise(x, y)
        result, max_jitter = maximise_dense_lml(self, x, z, int(torch.isfinite(z).sum()), max_iter)
        self.condition(x, y)
        self.fit_report = FitReport(
            result.iterations,
            result.converged,
            result.reason,
            self._cache["lml"],
            max_jitter,
            time.perf_counter() - start,
        )
        return self

    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> MultitaskExactGP:
        """Cache the factor and the weights of every observed entry."""
        z = self._standardise(x, y)
        lml, factor, alpha, jitter = self._standardised_lml(x, z)
        rows, tasks = _observed_entries(z)
        self.jitter = jitter
        self._cache = {
            "points": x[rows],
            "tasks": tasks,
            "factor": factor,
            "alpha": alpha,
            "lml": float(lml - self.y_scale.log()[tasks].sum()),
        }
        return self

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances (m, T) of every task at x, in each task's units."""
        cache = self._cache
        check_prediction_input(cache, x, cache["points"].shape[1] if cache else None)
        points, tasks = cache["points"], cache["tasks"]
        b = self.tasks.matrix.to(x.dtype)
        means, variances = [], []
        for xb in torch.split(x.to(points), block_size):
            k = self.kernel(xb, points)  # (m, N)
            mean, var = [], []
            for t in range(self.num_tasks):
                cross = b[t, tasks] * k
                v = torch.linalg.solve_triangular(cache["factor"], cross.T, upper=False)
                mean.append(cross @ cache["alpha"])
                var.append(b[t, t] * self.kernel.diag(xb) - (v * v).sum(0))
            means.append(torch.stack(mean, 1))
            variances.append(torch.stack(var, 1))
        noise = self.noise.value if include_noise else None
        return to_output_units(means, variances, noise, self.y_mean, self.y_scale, x.dtype)

    def hyperparameters(self) -> dict:
        return icm_hyperparameters(self)
