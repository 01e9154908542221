"""KISS-GP: GP regression through a regular grid, with structured solves instead of dense ones.

Two paths, chosen from the data:

- on-grid: every input sits on a cell of a regular lattice (gridded data with gaps).
  K = S K_grid S^T + noise I is the exact kernel matrix, solved through the gap block
  of the full grid's Kronecker inverse (see ongrid.py); variances are exact on
  complete grids and by local kriging otherwise (local.py).
- interpolated, small grid: scattered inputs on a grid of at most `dense_grid_limit`
  cells. K = W K_UU W^T + noise I with cubic-convolution W; since only W^T W and W^T y
  enter, every solve is an m x m dense one in float64: exact likelihood, exact SKI
  posterior mean and variance.
- interpolated, large grid: the same K, never formed: pivoted-Cholesky-preconditioned
  CG, stochastic Lanczos log-determinants, LOVE variances (see scattered.py).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import torch

from gpkernels.base import FitReport, GPModel
from gpkernels.initial import init_from_subsample
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import (
    Kernel,
    axis_column,
    axis_factors,
    is_separable,
    lag_table,
    periodic_factors,
    stationary_factors,
)
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import LOG_2PI, NumericalWarning
from gpkernels.local import local_variances
from gpkernels.ongrid import (
    Lattice,
    OnGridLogLikelihood,
    OnGridProblem,
    complete_grid_variances,
    detect_lattice,
)
from gpkernels.optim import adam_until_calm
from gpkernels.scattered import ScatteredProblem, love_root, ski_diagonal
from gpkernels.solvers import rademacher
from gpkernels.stationary_grid import condition_stationary_grid
from gpkernels.structured import toeplitz

# Default noise floor, in units of the data variance: iterative solves slow down as
# noise / variance shrinks, and real data are never noise-free to 1e-4.
NOISE_FLOOR = 1e-4
# Interpolated-path variances: warn when the last quarter of the Lanczos steps still
# lowered a variance by more than this fraction (the rank was too small).
LANCZOS_CHANGE_WARNING = 0.01
# Hidden cells scored to calibrate the variance scale (a 95% quantile needs a few hundred).
CALIBRATION_CELLS = 2000


def interpolation_lattice(x: torch.Tensor, cells_per_axis: Sequence[int]) -> Lattice:
    """A grid over the data's range widened by 5% per side, plus the two cells cubic
    interpolation needs beyond each end (so nearby test points can be predicted too)."""
    starts, spacings = [], []
    for dim, m in enumerate(cells_per_axis):
        lo, hi = float(x[:, dim].min()), float(x[:, dim].max())
        margin = 0.05 * max(hi - lo, 1e-12)
        lo, hi = lo - margin, hi + margin
        h = (hi - lo) / (m - 5)
        starts.append(lo - 2 * h)
        spacings.append(h)
    return Lattice(tuple(starts), tuple(spacings), tuple(cells_per_axis))


class KissGP(GPModel):
    """Structured (KISS) GP regression with ExactGP's `fit` / `predict` facade.

    `kernel` must be separable: Scale(Product(one factor per input column)), e.g.
    `separable(["matern32", "matern32", "matern32"])`. Gridded inputs take the exact
    on-grid path automatically; scattered ones are interpolated onto a grid of
    `grid_shape` cells (chosen from the data when None): solved densely up to
    `dense_grid_limit` cells, iteratively beyond (CG with a pivoted Cholesky
    preconditioner of rank `preconditioner_rank`, variances by LOVE of rank
    `love_rank`). `interpolate_onto` forces the interpolated path onto a given lattice:
    gridded data on its nodes (e.g. their own lattice padded by two cells) can then be
    predicted between the cells. See the module docstring.
    """

    def __init__(
        self,
        kernel: Kernel,
        likelihood: GaussianLikelihood | None = None,
        normalize_y: bool = True,
        grid_shape: Sequence[int] | None = None,
        lattice: Lattice | None = None,
        num_probes: int = 16,
        lanczos_steps: int = 30,
        cg_tol: float | None = None,
        max_cg_iter: int = 1000,
        dense_grid_limit: int = 1000,
        exact_gap_limit: int = 1024,
        neighbours: int = 256,
        preconditioner_rank: int = 32,
        love_rank: int = 512,
        seed: int = 0,
        interpolate_onto: Lattice | None = None,
        mean: str = "constant",
        calibrate: bool = False,
    ) -> None:
        if likelihood is None:
            likelihood = GaussianLikelihood(floor=NOISE_FLOOR)
        super().__init__(kernel, likelihood, normalize_y, mean)
        self.grid_shape = tuple(grid_shape) if grid_shape is not None else None
        self.lattice = lattice
        self.num_probes = num_probes
        self.lanczos_steps = lanczos_steps
        self.cg_tol = cg_tol
        self.max_cg_iter = max_cg_iter
        self.dense_grid_limit = dense_grid_limit
        self.exact_gap_limit = exact_gap_limit
        self.neighbours = neighbours
        self.preconditioner_rank = preconditioner_rank
        self.love_rank = love_rank
        self.seed = seed
        self.interpolate_onto = interpolate_onto
        self.calibrate = calibrate
        self.diagnostics: dict = {}
        self._cache: dict | None = None

    # -- structure -----------------------------------------------------------------
    def _columns(self, lattice: Lattice, dtype: torch.dtype, device: torch.device) -> list:
        _, factors = axis_factors(self.kernel, len(lattice.shape))
        return [
            axis_column(f, axis, lattice.lags(axis, dtype, device), len(lattice.shape))
            for axis, f in enumerate(factors)
        ]

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Standardise y, pick the path, and precompute what does not depend on hyperparameters."""
        z = self._standardise(x, y)
        separable = is_separable(self.kernel, x.shape[1])
        if not separable and (self.interpolate_onto is not None or self.grid_shape is not None):
            axis_factors(self.kernel, x.shape[1])  # interpolation needs a separable kernel
        if self.interpolate_onto is not None:
            lattice = None
        elif self.lattice is not None and self.lattice.cell_index(x) is not None:
            lattice = self.lattice
        else:
            lattice = detect_lattice(x) if self.grid_shape is None else None
            if self.lattice is not None and lattice is None:
                warnings.warn(
                    f"the inputs are not on the given lattice {self.lattice} (nor on any "
                    "regular one): interpolating onto a grid instead, which is slower and "
                    "less exact; snap the coordinates to the lattice",
                    NumericalWarning,
                    stacklevel=3,
                )
        gen = torch.Generator().manual_seed(self.seed)
        if not separable and lattice is None:
            raise ValueError(
                "a non-separable kernel (e.g. isotropic over several columns) needs gridded "
                "inputs: put the observations on the cells of a regular grid, or use a "
                "separable kernel (one factor per column)"
            )
        if lattice is not None:
            observed = lattice.cell_index(x)
            if torch.unique(observed).numel() != observed.numel():
                raise ValueError("two observations share a grid cell: average them first")
            if not separable:
                self.diagnostics = {
                    "path": "on-grid, stationary kernel (exact kernel, S K S^T, FFT)",
                    "grid_shape": list(lattice.shape),
                    "preconditioner": "circulant of the doubled grid",
                    "jitter": 0.0,
                }
                return {"path": "stationary", "z": z, "lattice": lattice, "observed": observed}
            self.diagnostics = {
                "path": "on-grid (exact kernel, S K S^T)",
                "grid_shape": list(lattice.shape),
                "preconditioner": "gap complement of the full-grid Kronecker inverse",
                "jitter": 0.0,
            }
            n_missing = lattice.size - observed.numel()
            problem = OnGridProblem(
                lattice,
                observed,
                z,
                rademacher(n_missing, self.num_probes, gen, z),
                self._cg_tolerance(x.dtype),
                self.max_cg_iter,
                self.lanczos_steps,
                self.exact_gap_limit,
                self.diagnostics,
            )
            return {"path": "grid", "z": z, "problem": problem}
        lattice = self.interpolate_onto or interpolation_lattice(
            x, self.grid_shape or self._default_grid_shape(x)
        )
        interp = Interpolation.build(x, lattice.starts, lattice.spacings, lattice.shape)
        if lattice.size > self.dense_grid_limit:
            self.diagnostics = {
                "path": "interpolated (W K_UU W^T, iterative)",
                "grid_shape": list(lattice.shape),
                "jitter": 0.0,
            }
            problem = ScatteredProblem(
                interp,
                lattice.shape,
                z,
                self.num_probes,
                self._cg_tolerance(x.dtype),
                self.max_cg_iter,
                self.preconditioner_rank,
                self.seed,
                self.diagnostics,
            )
            return {"path": "scattered", "z": z, "lattice": lattice, "problem": problem}
        self.diagnostics = {
            "path": "interpolated (W K_UU W^T, dense m x m in float64)",
            "grid_shape": list(lattice.shape),
            "preconditioner": "none (direct solve)",
            "jitter": 0.0,
        }
        zz = z.double()
        return {
            "path": "interp",
            "z": z,
            "lattice": lattice,
            "interp": interp,
            "gram": interp.gram(torch.float64),
            "wty": interp.transpose_matmul(zz[:, None])[:, 0].double(),
            "yty": float(zz @ zz),
        }

    def _cg_tolerance(self, dtype: torch.dtype) -> float:
        """The relative residual solves stop at: `cg_tol`, else what the dtype can reach."""
        return self.cg_tol or (1e-4 if dtype == torch.float32 else 1e-6)

    def _default_grid_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        per_axis = max(8, int(self.dense_grid_limit ** (1.0 / x.shape[1])))
        return (per_axis,) * x.shape[1]

    # -- marginal likelihood -------------------------------------------------------
    def _standardised_lml(self, data: dict) -> torch.Tensor:
        outputscale = self.kernel.outputscale
        noise = self.likelihood.noise
        z = data["z"]
        if data["path"] == "grid":
            problem = data["problem"]
            columns = self._columns(problem.lattice, z.dtype, z.device)
            return OnGridLogLikelihood.apply(problem, outputscale, noise, *columns)
        if data["path"] == "scattered":
            columns = self._columns(data["lattice"], z.dtype, z.device)
            return data["problem"].log_likelihood(columns, outputscale, noise)
        if data["path"] == "stationary":
            raise ValueError(
                "the whole-grid marginal likelihood needs a separable kernel; a non-separable "
                "one learns its hyperparameters from the exact fit on a subsample only"
            )
        k_uu, system = self._interp_system(data)
        n, m = z.shape[0], k_uu.shape[0]
        noise64 = noise.double()
        solved = torch.linalg.solve(system, data["wty"][:, None])[:, 0]
        quad = (data["yty"] - data["wty"] @ (k_uu @ solved)) / noise64
        logdet = (n - m) * noise64.log() + torch.linalg.slogdet(system)[1]
        return (-0.5 * quad - 0.5 * logdet - 0.5 * n * LOG_2PI).to(z.dtype)

    def _interp_system(self, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """K_UU and noise I + W^T W K_UU, both m x m float64."""
        lattice = data["lattice"]
        columns = self._columns(lattice, torch.float64, data["z"].device)
        k_uu = toeplitz(columns[0])
        for column in columns[1:]:
            k_uu = torch.kron(k_uu, toeplitz(column))
        k_uu = self.kernel.outputscale.double() * k_uu
        eye = torch.eye(k_uu.shape[0], dtype=torch.float64, device=k_uu.device)
        return k_uu, self.likelihood.noise.double() * eye + data["gram"] @ k_uu

    def log_marginal_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) at the current hyperparameters, in the units of y (differentiable)."""
        data = self._prepare(x, y)
        return self._standardised_lml(data) - x.shape[0] * math.log(self.y_scale)

    # -- training ------------------------------------------------------------------
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        max_iter: int = 100,
        lr: float = 0.1,
        tol: float = 1e-4,
        init_from_data: bool = True,
        init_points: int = 400,
    ) -> KissGP:
        """Learn hyperparameters by Adam on the marginal likelihood, then condition on (x, y).

        Starts from an exact GP fitted (L-BFGS) to at most `init_points` points, so
        Adam refines sensible values instead of walking from defaults. Stops after
        `max_iter` steps, or once the loss changed by less than `tol` (relative) over
        five steps in a row. Non-separable kernels keep the subsample fit (no Adam).
        """
        start = time.perf_counter()
        if init_from_data:
            init_from_subsample(self, x, y, init_points, self.seed)
        data = self._prepare(x, y)
        if data["path"] == "stationary":
            self._fit_calibrated_condition(x, y)
            reason = f"exact fit on {min(init_points, x.shape[0])} points (non-separable kernel)"
            report = FitReport(0, True, reason, float("nan"), 0.0, time.perf_counter() - start)
            return self._reviewed(report, x)
        params = [p for p in self.parameters() if p.requires_grad]
        result = adam_until_calm(
            lambda: -self._standardised_lml(data) / x.shape[0],
            params,
            max_iter,
            lr,
            tol,
            "KissGP",
        )
        if data["path"] == "grid":
            self._fit_calibrated_condition(x, y)
        else:
            self.condition(x, y)
        report = FitReport(
            result.iterations,
            result.converged,
            result.reason,
            -result.loss * x.shape[0] - x.shape[0] * math.log(self.y_scale),
            0.0,
            time.perf_counter() - start,
        )
        return self._reviewed(report, x)

    def _fit_calibrated_condition(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Condition on (x, y), first calibrating the variance scale when asked."""
        note = None
        if self.calibrate:
            self.calibrate_variance(x, y)
            note = self.diagnostics["variance_calibration"]
        self.condition(x, y)
        if note is not None:
            self.diagnostics["variance_calibration"] = note

    @torch.no_grad()
    def calibrate_variance(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Rescale outputscale and noise so that 95% intervals cover 95% of gaps shaped like
        the data's own; returns the factor (1: already calibrated).

        The missing-cell mask, moved by half the grid along every axis, hides that many
        observed cells; the model conditions on the rest and predicts at most
        `CALIBRATION_CELLS` of them. The factor is (q / 1.96)^2 with q the 95% quantile
        of their |z| (split-conformal calibration of the variance scale; a variance
        scale by cross-validation is robust where the kernel is misspecified, Bachoc
        2013). Gridded inputs only; kept within [1/4, 4].
        """
        lattice = self.lattice if self.lattice is not None else detect_lattice(x)
        if lattice is None:
            raise ValueError("calibrate_variance needs gridded inputs")
        cells = lattice.cell_index(x)
        observed = torch.zeros(lattice.size, dtype=torch.bool, device=x.device)
        observed[cells] = True
        grid = observed.reshape(lattice.shape)
        moved = torch.roll(~grid, [n // 2 for n in lattice.shape], list(range(grid.dim())))
        hidden = (moved & grid).reshape(-1)[cells]
        if int(hidden.sum()) < 100 or int((~hidden).sum()) < 100:
            self.diagnostics["variance_calibration"] = "skipped: too few cells to hide"
            return 1.0
        gen = torch.Generator().manual_seed(self.seed)
        scored = torch.nonzero(hidden)[:, 0]
        scored = scored[torch.randperm(scored.numel(), generator=gen)[:CALIBRATION_CELLS]]
        self.condition(x[~hidden], y[~hidden])
        mean, var = self.predict(x[scored], include_noise=True)
        z = (y[scored] - mean).abs() / var.clamp_min(1e-30).sqrt()
        factor = (float(torch.quantile(z.double(), 0.95)) / 1.959964) ** 2
        factor = min(max(factor, 0.25), 4.0)
        self.kernel.outputscale = self.kernel.outputscale * factor
        self.likelihood.noise = torch.clamp(
            self.likelihood.noise * factor, min=1.01 * self.likelihood.noise_param.floor
        )
        self.diagnostics["variance_calibration"] = (
            f"x{factor:.3f} from {scored.numel()} of {int(hidden.sum())} cells under the moved gaps"
        )
        return factor

    # -- prediction ----------------------------------------------------------------
    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> KissGP:
        """Solve for the posterior at the current hyperparameters and cache it."""
        data = self._prepare(x, y)
        if data["path"] == "grid":
            self._cache = self._condition_grid(data)
        elif data["path"] == "stationary":
            self._cache = self._condition_stationary(data)
        elif data["path"] == "scattered":
            self._cache = self._condition_scattered(data)
        else:
            self._cache = self._condition_interp(data)
            lml = self._standardised_lml(data) - x.shape[0] * math.log(self.y_scale)
            self._cache["lml"] = float(lml)
        return self

    def _condition_grid(self, data: dict) -> dict:
        problem: OnGridProblem = data["problem"]
        z = data["z"]
        scale, noise = self.kernel.outputscale, self.likelihood.noise
        op = problem.operator(self._columns(problem.lattice, z.dtype, z.device), scale, noise)
        eig = op.grid.eig()
        inverse = 1.0 / (scale * eig.eigenvalues() + noise)
        alpha = problem.solve_mean(op, eig, inverse)
        mean_grid = op.grid.matmul(op.embed(alpha[:, None]))[:, 0]
        cache = {"path": "grid", "lattice": problem.lattice, "mean": mean_grid}
        if problem.missing.numel() == 0:
            cache["var"] = complete_grid_variances(eig, scale, noise)
            self.diagnostics["variance"] = "exact (complete grid, Kronecker eigendecomposition)"
        else:
            table = lag_table(self.kernel, problem.lattice.spacings, problem.lattice.shape)
            cache["local"] = self._local_kriging(problem.lattice, problem.observed, table)
        return cache

    def _condition_stationary(self, data: dict) -> dict:
        lattice, observed = data["lattice"], data["observed"]
        scale, noise = self.kernel.outputscale.detach(), self.likelihood.noise.detach()
        mean, table, solve = condition_stationary_grid(
            self.kernel,
            scale,
            noise,
            lattice,
            observed,
            data["z"],
            self._cg_tolerance(data["z"].dtype),
            self.max_cg_iter,
        )
        self.diagnostics.update(solve)
        return {
            "path": "grid",
            "lattice": lattice,
            "mean": mean,
            "local": self._local_kriging(lattice, observed, table),
        }

    def _local_kriging(self, lattice: Lattice, observed: torch.Tensor, table: torch.Tensor) -> dict:
        """What `local_variances` needs at the current hyperparameters (observed: flat cells)."""
        mask = torch.zeros(lattice.size, dtype=torch.bool, device=observed.device)
        mask[observed] = True
        self.diagnostics["variance"] = f"local kriging, {self.neighbours} nearest observations"
        return {
            "table": table,
            "outputscale": self.kernel.outputscale.detach(),
            "noise": self.likelihood.noise.detach(),
            "observed": mask.reshape(lattice.shape),
            "lengthscale_cells": self._lengthscale_cells(lattice),
            "neighbours": self.neighbours,
            "period_cells": self._period_cells(lattice),
        }

    def _lengthscale_cells(self, lattice: Lattice) -> list[float]:
        """Each axis's correlation length in cells (for neighbourhood shapes)."""
        cells = []
        for axis, h in enumerate(lattice.spacings):
            found = [f for f in stationary_factors(self.kernel) if _reads(f, axis)]
            if found:
                scales = found[0].lengthscale
                position = found[0].dims.index(axis) if found[0].dims and scales.numel() > 1 else 0
                scale = float(scales.reshape(-1)[position])
            else:
                scale = h
            cells.append(max(scale / h, 0.5))
        return cells

    def _period_cells(self, lattice: Lattice) -> list[float | None]:
        """Each axis's period in cells where its kernel has a periodic part (else None)."""
        cells: list[float | None] = []
        for axis, h in enumerate(lattice.spacings):
            found = [f for f in periodic_factors(self.kernel) if _reads(f, axis)]
            period = float(found[0].period_param.value) / h if found else 0
            cells.append(period if period >= 2 else None)
        return cells

    def _condition_interp(self, data: dict) -> dict:
        k_uu, system = self._interp_system(data)
        u = torch.linalg.solve(system, data["wty"][:, None])[:, 0]
        noise = self.likelihood.noise.double()
        eye = torch.eye(k_uu.shape[0], dtype=torch.float64, device=k_uu.device)
        posterior = k_uu @ torch.linalg.solve(system, noise * eye)
        posterior = 0.5 * (posterior + posterior.T)
        return {
            "path": "interp",
            "lattice": data["lattice"],
            "mean_u": k_uu @ u,
            "cov_u": posterior,
        }

    def _condition_scattered(self, data: dict) -> dict:
        problem: ScatteredProblem = data["problem"]
        z, lattice = data["z"], data["lattice"]
        columns = self._columns(lattice, z.dtype, z.device)
        op = problem.operator(columns, self.kernel.outputscale, self.likelihood.noise)
        pre = op.preconditioner(self.preconditioner_rank)
        alpha = problem.solve_mean(op, pre)
        lanczos = love_root(op, self.love_rank, self.seed)
        rank = lanczos.root.shape[1]
        self.diagnostics.update(
            variance=f"Lanczos (LOVE-style), rank {rank}",
            variance_last_quarter_change=lanczos.last_quarter_change,
        )
        if lanczos.last_quarter_change > LANCZOS_CHANGE_WARNING:
            warnings.warn(
                f"KissGP variances may be overstated: the last {rank - 3 * rank // 4} of {rank} "
                "Lanczos steps still lowered variances by up to "
                f"{lanczos.last_quarter_change:.1%}; "
                "raise love_rank",
                NumericalWarning,
                stacklevel=4,
            )
        return {
            "path": "scattered",
            "lattice": lattice,
            "mean_u": op.grid_matmul(problem.interp.transpose_matmul(alpha[:, None]))[:, 0],
            "root": lanczos.root,
            "columns": columns,
            "outputscale": self.kernel.outputscale.detach(),
        }

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 65536
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance at x (of f, or of y with `include_noise`), in blocks."""
        ndim = len(self._cache["lattice"].shape) if self._cache else 0
        self._check_prediction_input(self._cache, x, ndim)
        lattice: Lattice = self._cache["lattice"]
        means, variances = [], []
        for xb in torch.split(x, block_size):
            mean, var = self._predict_block(xb, lattice)
            means.append(mean)
            variances.append(var)
        return self._finish_prediction(means, variances, x, include_noise)

    def _predict_block(
        self, xb: torch.Tensor, lattice: Lattice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._cache
        if cache["path"] == "grid":
            cells = lattice.cell_index(xb)
            if cells is None:
                raise ValueError(
                    "a model fitted on gridded data predicts on cells of its grid "
                    f"{lattice}; some points are off it"
                )
            if "var" in cache:
                return cache["mean"][cells], cache["var"][cells]
            var = local_variances(**cache["local"], targets=cells)[cells]
            return cache["mean"][cells], var
        interp = Interpolation.build(xb, lattice.starts, lattice.spacings, lattice.shape)
        if cache["path"] == "scattered":
            weight = interp.weight.to(cache["mean_u"].dtype)
            mean = (cache["mean_u"][interp.index] * weight).sum(1)
            prior = ski_diagonal(cache["columns"], cache["outputscale"], interp)
            projected = (cache["root"][interp.index] * weight[..., None]).sum(1)
            return mean, (prior - (projected * projected).sum(1)).clamp_min(0.0)
        weight = interp.weight.double()
        mean = (cache["mean_u"][interp.index] * weight).sum(1)
        cov = cache["cov_u"][interp.index[:, :, None], interp.index[:, None, :]]
        var = torch.einsum("bi,bij,bj->b", weight, cov, weight)
        return mean, var


def _reads(kernel: Kernel, column: int) -> bool:
    """Whether a kernel part reads the input column (parts over all columns read every one)."""
    return kernel.columns is None or column in kernel.columns
