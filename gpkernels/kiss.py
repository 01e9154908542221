"""KISS-GP: GP regression through a regular grid, with structured solves instead of dense ones.

Four paths, each one solver class chosen once from the data (`choose_solver`):

- on-grid, separable kernel (`ongrid.SeparableGridSolver`): every input sits on a cell of
  a regular lattice (gridded data with gaps). K = S K_grid S^T + noise I is the exact
  kernel matrix, solved through the gap block of the full grid's Kronecker inverse;
  variances are exact on complete grids and by local kriging otherwise (local.py).
- on-grid, any stationary kernel (`stationary_grid.StationaryGridSolver`): the same K,
  multiplied by FFT, circulant-preconditioned CG; no whole-grid likelihood.
- interpolated, small grid (`dense_interpolated.DenseInterpolatedSolver`): scattered
  inputs on a grid of at most `dense_grid_limit` cells. K = W K_UU W^T + noise I with
  cubic-convolution W; since only W^T W and W^T y enter, every solve is an m x m dense
  one in float64: exact likelihood, exact SKI posterior mean and variance.
- interpolated, large grid (`scattered.IterativeInterpolatedSolver`): the same K, never
  formed: pivoted-Cholesky-preconditioned CG, stochastic Lanczos log-determinants, LOVE
  variances.

KissGP itself keeps the standardisation, the fit loop, the variance calibration and the
`fit` / `predict` facade.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace

import torch

from gpkernels.base import FitReport, GPModel
from gpkernels.dense_interpolated import DenseInterpolatedSolver
from gpkernels.diagnostics import SolverDiagnostics
from gpkernels.initial import init_from_subsample
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import Kernel, axis_factors, is_separable
from gpkernels.kiss_paths import KissSettings, KissSolver, Posterior
from gpkernels.lattice import Lattice, detect_lattice, interpolation_lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import NumericalWarning
from gpkernels.ongrid import SeparableGridSolver
from gpkernels.optim import FitSteps, LBFGSResult
from gpkernels.regression import KrigedColumns
from gpkernels.scattered import IterativeInterpolatedSolver
from gpkernels.stationary_grid import StationaryGridSolver

__all__ = ["KissGP", "choose_solver", "interpolation_lattice"]

# Default noise floor, in units of the data variance: iterative solves slow down as
# noise / variance shrinks, and real data are never noise-free to 1e-4.
NOISE_FLOOR = 1e-4
# Hidden cells scored to calibrate the variance scale (a 95% quantile needs a few hundred).
CALIBRATION_CELLS = 2000
# A hold-out solve whose relative residual stays above this gives means too wrong to
# calibrate by: the factor would measure the solver, not the variances.
CALIBRATION_MAX_RESIDUAL = 1e-2


def _on_grid_lattice(model: KissGP, x: torch.Tensor) -> Lattice | None:
    """The lattice whose cells hold every input (the model's own, else one found in the
    data), or None when the inputs are to be interpolated."""
    if model.interpolate_onto is not None:
        return None
    if model.lattice is not None and model.lattice.cell_index(x) is not None:
        return model.lattice
    lattice = detect_lattice(x) if model.grid_shape is None else None
    if model.lattice is not None and lattice is None:
        warnings.warn(
            f"the inputs are not on the given lattice {model.lattice} (nor on any "
            "regular one): interpolating onto a grid instead, which is slower and "
            "less exact; snap the coordinates to the lattice",
            NumericalWarning,
            stacklevel=5,
        )
    return lattice


def choose_solver(model: KissGP, x: torch.Tensor, z: torch.Tensor) -> KissSolver:
    """The one solver path for inputs x and standardised targets z (module docstring)."""
    settings = model.settings(x.dtype)
    separable = is_separable(model.kernel, x.shape[1])
    if not separable and (model.interpolate_onto is not None or model.grid_shape is not None):
        axis_factors(model.kernel, x.shape[1])  # interpolation needs a separable kernel: refuse
    lattice = _on_grid_lattice(model, x)
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
        grid_solver = SeparableGridSolver if separable else StationaryGridSolver
        return grid_solver(lattice, observed, z, settings)
    lattice = model.interpolate_onto or interpolation_lattice(
        x, model.grid_shape or model.default_grid_shape(x)
    )
    interp = Interpolation.build(x, lattice.starts, lattice.spacings, lattice.shape)
    if lattice.size > model.dense_grid_limit:
        return IterativeInterpolatedSolver(lattice, interp, z, settings)
    return DenseInterpolatedSolver(lattice, interp, z)


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
        # How the latest likelihood or conditioning was solved (None before either).
        self.diagnostics: SolverDiagnostics | None = None
        self.posterior: Posterior | None = None  # the latest `condition`'s result
        self._conditioned: KissSolver | None = None  # the solver it came from

    # -- structure -----------------------------------------------------------------
    def settings(self, dtype: torch.dtype) -> KissSettings:
        """The solver settings for inputs of `dtype`: CG stops at `cg_tol`, else at what the
        dtype can reach."""
        cg_tol = self.cg_tol or (1e-4 if dtype == torch.float32 else 1e-6)
        return KissSettings(
            self.num_probes,
            self.lanczos_steps,
            cg_tol,
            self.max_cg_iter,
            self.exact_gap_limit,
            self.neighbours,
            self.preconditioner_rank,
            self.love_rank,
            self.seed,
        )

    def default_grid_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """An interpolation grid of about `dense_grid_limit` cells, at least 8 per axis."""
        per_axis = max(8, int(self.dense_grid_limit ** (1.0 / x.shape[1])))
        return (per_axis,) * x.shape[1]

    def _solver(self, x: torch.Tensor, y: torch.Tensor) -> KissSolver:
        """Standardise y and choose the path for (x, y)."""
        return choose_solver(self, x, self._standardise(x, y))

    # -- marginal likelihood -------------------------------------------------------
    def log_marginal_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) at the current hyperparameters, in the units of y (differentiable)."""
        value, self.diagnostics = self._solver(x, y).log_marginal_likelihood(
            self.kernel, self.likelihood
        )
        return value - x.shape[0] * math.log(self.y_scale)

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
        init_iter: int = 50,
        optimizer: FitSteps | None = None,
    ) -> KissGP:
        """Learn hyperparameters on the marginal likelihood, then condition on (x, y).

        Starts from an exact GP fitted (up to `init_iter` L-BFGS steps) to at most
        `init_points` points, then refines on all the data with `optimizer`, by default the
        path's own for up to `max_iter` steps: L-BFGS on the on-grid separable path (its
        warm-started CG makes few evaluations cheap), elsewhere Adam at `lr`, stopping once
        the loss changed by less than `tol` (relative) over five steps in a row. Pass e.g.
        `optimizer=AdamSteps(max_iter=30, lr=0.1, tol=0.0)` to choose. No refinement with
        max_iter=0 (or the optimizer's), nor on paths without a whole-grid likelihood
        (non-separable kernels). `fit_report` describes the fits that ran: the subsample's
        alone when no refinement step was taken (with the final model's log marginal
        likelihood on all of the data where the path has one).
        """
        start = time.perf_counter()
        initial = None
        if init_from_data:
            initial = init_from_subsample(self, x, y, init_points, self.seed, max_iter=init_iter)
        solver = self._solver(x, y)
        steps = optimizer or solver.fit_steps(max_iter, lr, tol)
        refined, likelihood_notes = None, None
        if solver.has_likelihood and steps.max_iter > 0:
            refined, likelihood_notes = self._refine(solver, x.shape[0], steps)
        if self.calibrate and solver.on_grid:
            self.calibrate_variance(x, y)
        else:
            self._condition_with(solver)
        if refined is None:
            lml, likelihood_notes = self._final_likelihood(solver, x.shape[0])
        else:
            lml = -refined.loss * x.shape[0] - x.shape[0] * math.log(self.y_scale)
        if likelihood_notes is not None:
            self.diagnostics = replace(
                self.diagnostics,
                log_det_gaps=likelihood_notes.log_det_gaps,
                logdet_method=likelihood_notes.logdet_method,
                cg_work=solver.cg_work,
            )
        points = min(init_points, x.shape[0])
        report = _fit_report(initial, refined, steps.name, points, solver, lml)
        report.seconds = time.perf_counter() - start
        return self._reviewed(report, x)

    def _refine(
        self, solver: KissSolver, n: int, steps: FitSteps
    ) -> tuple[LBFGSResult, SolverDiagnostics]:
        """`steps` on -LML / n; returns how it stopped and its last likelihood's diagnostics."""
        last: list[SolverDiagnostics] = []

        def loss() -> torch.Tensor:
            value, diagnostics = solver.log_marginal_likelihood(self.kernel, self.likelihood)
            last[:] = [diagnostics]
            return -value / n

        params = [p for p in self.parameters() if p.requires_grad]
        return steps.minimise(loss, params, "KissGP"), last[0]

    @torch.no_grad()
    def _final_likelihood(
        self, solver: KissSolver, n: int
    ) -> tuple[float, SolverDiagnostics | None]:
        """The log marginal likelihood (y's units) at the final hyperparameters, NaN where the
        path has none."""
        if not solver.has_likelihood:
            return float("nan"), None
        value, diagnostics = solver.log_marginal_likelihood(self.kernel, self.likelihood)
        return float(value) - n * math.log(self.y_scale), diagnostics

    @torch.no_grad()
    def calibrate_variance(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Widen outputscale and noise so that 95% intervals cover 95% of gaps shaped like
        the data's own; returns the factor (1: already wide enough). The model is then
        conditioned on all of (x, y).

        The missing-cell mask, moved by half the grid along every axis, hides that many
        observed cells; the model conditions on the rest (standardised as all of y is)
        and predicts at most `CALIBRATION_CELLS` of them. The factor is (q / 1.96)^2 with q
        the 95% quantile of their |z| (split-conformal calibration of the variance scale;
        a variance scale by cross-validation is robust where the kernel is misspecified,
        Bachoc 2013). Gridded inputs only; kept within [1, 4]: the hidden cells of one
        tile are few and correlated, so a factor below 1 is as often noise as news, and
        narrowing what maximum likelihood gave is the costly mistake (on the Heaton twin,
        where the kernel is the truth, narrowing left bands at 0.90-0.94).
        """
        lattice = self.lattice if self.lattice is not None else detect_lattice(x)
        if lattice is None:
            raise ValueError("calibrate_variance needs gridded inputs")
        hidden = _under_moved_gaps(lattice, lattice.cell_index(x))
        if int(hidden.sum()) < 100 or int((~hidden).sum()) < 100:
            self.condition(x, y)
            self.diagnostics = replace(
                self.diagnostics, variance_calibration="skipped: too few cells to hide"
            )
            return 1.0
        self._standardise(x, y)  # the full data's scale; the prior mean from the rest only,
        # so that no hidden cell informs its own prediction (a linear trend would)
        self.y_mean, _, self.trend = self._target_scaling(x[~hidden], y[~hidden])
        z = (y - self._prior_mean(x)) / self.y_scale
        gen = torch.Generator().manual_seed(self.seed)
        scored = torch.nonzero(hidden)[:, 0]
        scored = scored[torch.randperm(scored.numel(), generator=gen)[:CALIBRATION_CELLS]]
        posterior = choose_solver(self, x[~hidden], z[~hidden]).condition(
            self.kernel, self.likelihood
        )
        solve = posterior.diagnostics.solve
        if solve is not None and solve.relative_residual > CALIBRATION_MAX_RESIDUAL:
            self.condition(x, y)
            note = (
                f"skipped: the hold-out solve stopped at relative residual "
                f"{solve.relative_residual:.2g} after {solve.iterations} CG iterations"
            )
            self.diagnostics = replace(self.diagnostics, variance_calibration=note)
            return 1.0
        mean, var = posterior.predict(x[scored])
        var = var.to(x.dtype) + self.likelihood.noise.to(x.dtype)
        score = (z[scored] - mean.to(x.dtype)).abs() / var.clamp_min(1e-30).sqrt()
        factor = (float(torch.quantile(score.double(), 0.95)) / 1.959964) ** 2
        factor = min(max(factor, 1.0), 4.0)
        self.kernel.outputscale = self.kernel.outputscale * factor
        self.likelihood.noise = torch.clamp(
            self.likelihood.noise * factor, min=1.01 * self.likelihood.noise_param.floor
        )
        note = (
            f"x{factor:.3f} from {scored.numel()} of {int(hidden.sum())} cells under the moved gaps"
        )
        self.condition(x, y)
        self.diagnostics = replace(self.diagnostics, variance_calibration=note)
        return factor

    # -- prediction ----------------------------------------------------------------
    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> KissGP:
        """Solve for the posterior at the current hyperparameters and keep it."""
        self._condition_with(self._solver(x, y))
        return self

    def _condition_with(self, solver: KissSolver) -> None:
        with torch.no_grad():
            self.posterior = solver.condition(self.kernel, self.likelihood)
        self.diagnostics = self.posterior.diagnostics
        self._conditioned = solver

    @torch.no_grad()
    def kriged(self, columns: torch.Tensor) -> KrigedColumns:
        """Simple kriging of other columns (n, p) at the conditioned data, with the same
        covariance (what universal kriging needs, gpkernels.regression); on-grid paths."""
        if self.posterior is None:
            raise RuntimeError("call fit(x, y) or condition(x, y) before kriged")
        return self._conditioned.kriged(self.kernel, self.likelihood, columns)

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 65536
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance at x (of f, or of y with `include_noise`), in blocks."""
        posterior = self.posterior
        self._check_prediction_input(posterior, x, posterior.ndim if posterior else 0)
        means, variances = [], []
        for block in torch.split(x, block_size):
            mean, var = posterior.predict(block)
            means.append(mean)
            variances.append(var)
        return self._finish_prediction(means, variances, x, include_noise)


def _under_moved_gaps(lattice: Lattice, cells: torch.Tensor) -> torch.Tensor:
    """Which observations (flat cells) the missing-cell mask, moved by half the grid along
    every axis, hides."""
    observed = torch.zeros(lattice.size, dtype=torch.bool, device=cells.device)
    observed[cells] = True
    grid = observed.reshape(lattice.shape)
    moved = torch.roll(~grid, [n // 2 for n in lattice.shape], list(range(grid.dim())))
    return (moved & grid).reshape(-1)[cells]


def _fit_report(
    initial: FitReport | None,
    refined: LBFGSResult | None,
    optimizer: str,
    points: int,
    solver: KissSolver,
    lml: float,
) -> FitReport:
    """How the fits that ran went: the refinement's steps when it ran (the reason naming
    both fits and the `optimizer`), else the subsample's exact fit; `lml` is the final log
    marginal likelihood."""
    if initial is None:
        first = "no initial fit"
    else:
        first = f"exact fit on {points} points: {initial.stop_reason}"
    if not solver.has_likelihood:
        first += " (non-separable kernel: no whole-grid likelihood to refine)"
    jitter = initial.max_jitter if initial is not None else 0.0
    if refined is not None:
        reason = f"{first}; then {optimizer}: {refined.reason}"
        return FitReport(refined.iterations, refined.converged, reason, lml, jitter, 0.0)
    if initial is None:
        reason = f"{first} and no {optimizer} step (max_iter=0)"
        return FitReport(0, False, reason, lml, jitter, 0.0)
    return FitReport(initial.iterations, initial.converged, first, lml, jitter, 0.0)
