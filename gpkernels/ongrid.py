"""The on-grid separable path: exact GP likelihood and solves for observations on the cells of
a regular grid (gaps allowed) under a separable kernel.

With M = K_grid + noise I on the full grid (Kronecker, so its eigendecomposition is
cheap) and K = S K_grid S^T + noise I the kernel matrix of the observed cells:

- solves K^-1 y through the block-inverse identity, CG running only on the gap block
  A of M^-1, refined on the true residual (`ObservedKronecker.solve`);
- log|K| = log|M| + log|A|, with A = (M^-1) restricted to the missing cells (a block
  inverse identity): log|M| is exact from the eigenvalues; log|A| is exact (dense
  Cholesky) for up to `exact_gap_limit` missing cells and, beyond, log|P| plus a
  stochastic Lanczos correction read off one preconditioned CG run (`preconditioned_gap_term`);
- the gradient follows the same split, so only the gap term is ever stochastic.

Every CG on A is preconditioned by P, dense Cholesky blocks of A over the gaps
(gap_blocks.py; exact over cells missing along a whole axis, gap_lines.py): A is nearly
block diagonal over the gaps, so CG needs a few iterations instead of hundreds. P is built
once and kept across the evaluations of a fit (any fixed P keeps the estimates unbiased)
until it slows CG down; the mean solve starts from the previous evaluation's solution
(`WarmStart`).

Everything of this path's solve and likelihood lives here (`SeparableGridSolver`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from gpkernels.diagnostics import SolverDiagnostics, SolveReport
from gpkernels.gap_blocks import GapPreconditioner
from gpkernels.kernels import Kernel, lag_table
from gpkernels.kiss_paths import (
    GridPosterior,
    KissSettings,
    KissSolver,
    axis_columns,
    grid_kriged,
    local_kriging,
)
from gpkernels.lattice import Lattice, detect_lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import LOG_2PI, NumericalWarning
from gpkernels.optim import FitSteps, LBFGSSteps
from gpkernels.preconditioners import Preconditioner
from gpkernels.regression import KrigedColumns
from gpkernels.solvers import gauss_quadrature_log, pcg, rademacher
from gpkernels.structured import (
    Kronecker,
    KroneckerEig,
    ObservedGrid,
    StructuredOperator,
)

__all__ = ["Lattice", "SeparableGridSolver", "detect_lattice"]

MAX_REFINEMENTS = 4
OUTER_MARGIN = 0.5  # a pass's gap CG aims at this share of the solve's tolerance
INNER_FLOOR = 1e-13  # relative gap residual at which CG stops whatever the outer residual


class GapBlock(StructuredOperator):
    """A = (M^-1) restricted to the missing cells, M = K_grid + noise I on the full grid."""

    label = "KissGP gap CG"

    def __init__(
        self,
        full: Kronecker,
        missing: torch.Tensor,
        preconditioner: GapPreconditioner | None = None,
    ) -> None:
        self.full = full
        self.missing = missing
        self.size = missing.shape[0]
        self.eig = full.eig()
        self.inverse = 1.0 / full.spectrum()
        self._preconditioner = preconditioner

    @property
    def preconditioner(self) -> GapPreconditioner:
        """Block-diagonal P ~ A over the gaps (gap_blocks.py), built on first use."""
        if self._preconditioner is None:
            self._preconditioner = GapPreconditioner(self.eig, self.inverse, self.missing)
        return self._preconditioner

    @property
    def built_preconditioner(self) -> GapPreconditioner | None:
        """P if a fit's probe solves built it (or it was shared), else None: one solve at
        fixed hyperparameters is cheaper by plain CG than P's build (about 343 full-grid
        solves plus dense Cholesky blocks of up to 4,096 cells)."""
        return self._preconditioner

    @property
    def dtype(self) -> torch.dtype:
        return self.full.dtype

    @property
    def device(self) -> torch.device:
        return self.full.device

    def inverse_matmul(self, v: torch.Tensor) -> torch.Tensor:
        """M^-1 v on the full grid."""
        return self.eig.apply(v, self.inverse)

    def inverse_columns(self, v: torch.Tensor) -> torch.Tensor:
        """M^-1 S_m^T v on the full grid (v over the missing cells)."""
        full = v.new_zeros(self.full.size, v.shape[1])
        full[self.missing] = v
        return self.inverse_matmul(full)

    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        return self.inverse_columns(block)[self.missing]

    def diagonal(self) -> torch.Tensor:
        return self.eig.diagonal(self.inverse)[self.missing]

    def solve(
        self,
        rhs: torch.Tensor,
        preconditioner: Preconditioner | None = None,
        tol: float = 1e-6,
        max_iter: int = 1000,
        start: torch.Tensor | None = None,
        done: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, SolveReport]:
        """A^-1 rhs by CG from `start` (zero when None); the tolerance stays relative to rhs,
        and `done` (residuals -> bool per column) may stop it earlier."""
        precondition = preconditioner.solve if preconditioner is not None else None
        result = pcg(self.matmul, rhs, precondition, tol, max_iter, start, self.label, done)
        return result.solution, result.report()


class ObservedKronecker(ObservedGrid):
    """S K_grid S^T + noise I with a Kronecker K_grid: solved through the gap complement."""

    grid: Kronecker

    def __init__(self, grid: Kronecker, observed: torch.Tensor, noise: torch.Tensor) -> None:
        super().__init__(grid, observed, noise)
        mask = torch.ones(grid.size, dtype=torch.bool, device=observed.device)
        mask[observed] = False
        self.missing = torch.nonzero(mask)[:, 0]

    @cached_property
    def gaps(self) -> GapBlock:
        """The gap block of M^-1 (M = K_grid + noise I), with M's eigendecomposition."""
        return GapBlock(self.grid.shifted(self.noise), self.missing, self.shared_preconditioner)

    shared_preconditioner: GapPreconditioner | None = None  # one built at another dtype

    def to(self, dtype: torch.dtype) -> ObservedKronecker:
        """The same operator at `dtype`, sharing the gap preconditioner (a float64 factor)."""
        other = ObservedKronecker(self.grid.to(dtype), self.observed, self.noise.to(dtype))
        if self.missing.numel():
            other.shared_preconditioner = self.gaps.built_preconditioner
        return other

    def solve(
        self,
        rhs: torch.Tensor,
        preconditioner: Preconditioner | None = None,
        tol: float = 1e-6,
        max_iter: int = 1000,
        start: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SolveReport]:
        """K^-1 rhs (one column) through the gaps: K^-1 = (M^-1)_oo - (M^-1)_om A^-1 (M^-1)_mo.

        Only A (the gap block of M^-1) is solved by CG: its spectrum clusters, so far
        fewer iterations are needed than for K itself. The true residual rhs - K a is
        then corrected by further rounds until it is below `tol` (relative). All of it
        runs in float64 (float32 operators included), so the residual can go below
        float32's rounding floor; the result comes back in rhs's dtype. No preconditioner
        is taken: the gap complement is this operator's own. From `start` (a previous
        solution), the rounds correct its residual; `tol` stays relative to rhs.
        """
        op = self if self.dtype == torch.float64 else self.to(torch.float64)
        z = rhs.double()
        z_norm = float(z.norm())
        if z_norm == 0.0:  # K^-1 0 = 0 exactly; a residual relative to a zero z has no meaning
            return torch.zeros_like(rhs), SolveReport(0, 0.0, True, 0)
        alpha, residual, relative = torch.zeros_like(z), z, 1.0
        if start is not None:  # kept only where it beats the zero start
            warm = z - op.matmul(start.double())
            if float(warm.norm()) < z_norm:
                alpha, residual, relative = start.double(), warm, float(warm.norm()) / z_norm
        iterations, rounds, converged = 0, 0, True
        while relative > tol and rounds < MAX_REFINEMENTS:  # a warm start may need none
            rounds += 1
            target = OUTER_MARGIN * tol * z_norm
            correction, inner = op.complement_solve(residual, target, max_iter)
            iterations += inner.iterations
            converged = converged and inner.converged
            candidate = alpha + correction
            new_residual = z - op.matmul(candidate)
            new_relative = float(new_residual.norm()) / z_norm
            if new_relative >= relative:  # refinement stopped helping
                break
            alpha, residual, relative = candidate, new_residual, new_relative
        if relative > tol:
            converged = False
            warnings.warn(
                f"KissGP on-grid solve did not converge: relative residual {relative:.2e} > "
                f"{tol:.0e} after {rounds} refinement rounds ({iterations} CG iterations)",
                NumericalWarning,
                stacklevel=2,
            )
        return alpha.to(rhs.dtype), SolveReport(iterations, relative, converged, rounds)

    def complement_solve(
        self, rhs: torch.Tensor, target: float, max_iter: int
    ) -> tuple[torch.Tensor, SolveReport]:
        """One pass of K^-1 rhs by the block-inverse identity, its gap CG run until the
        pass's own residual, rhs - K a, is at most `target` in norm.

        That residual is M_om rho, rho the gap CG's residual (M = K_grid + noise I; from the
        identities of the block inverse), so CG watches it directly, every few iterations,
        at the price of one K_grid product: no guess of how gap errors amplify is needed."""
        w = self.gaps.inverse_matmul(self.embed(rhs))
        if self.missing.numel() == 0:
            return w[self.observed], SolveReport(0, 0.0, True)

        def done(rho: torch.Tensor) -> torch.Tensor:
            full = rho.new_zeros(self.grid.size, rho.shape[1])
            full[self.missing] = rho
            return self.grid.matmul(full)[self.observed].norm(dim=0) <= target

        preconditioner = self.gaps.built_preconditioner
        solved, report = self.gaps.solve(
            w[self.missing], preconditioner, INNER_FLOOR, max_iter, done=done
        )
        back = self.gaps.inverse_columns(solved)[self.observed]
        return w[self.observed] - back, report


@dataclass
class GapTerm:
    """log|A| and what its gradient needs: pairs (left_j, right_j) of full-grid vectors.

    d log|A| = -weight * sum_j left_j^T dM right_j. Stochastic terms also keep how their
    probe solves went.
    """

    logdet: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    weight: float
    method: str
    probe_solve: SolveReport | None = None


def gap_term(gaps: GapBlock, probes: torch.Tensor, settings: KissSettings) -> GapTerm:
    """log|A| for A = (M^-1) on the missing cells, with its gradient's vector pairs: exact
    (dense Cholesky) up to `exact_gap_limit` missing cells, preconditioned stochastic
    Lanczos beyond (`preconditioned_gap_term`)."""
    m = gaps.size
    if m > settings.exact_gap_limit:
        return preconditioned_gap_term(gaps, probes, settings)
    eye = torch.eye(m, dtype=gaps.dtype, device=gaps.device)
    columns = gaps.inverse_columns(eye)  # M^-1 S_m^T, (N, m)
    factor = torch.linalg.cholesky(columns[gaps.missing].double())
    # A^-1 = L^-T L^-1, so tr(A^-1 dA) = -sum_j r_j^T dM r_j with R = M^-1 S_m^T L^-T.
    r = torch.linalg.solve_triangular(factor, columns.double().T, upper=False).T
    logdet = 2.0 * factor.diagonal().log().sum()
    r = r.to(gaps.dtype)
    method = "exact (dense Cholesky of the gap block)"
    return GapTerm(logdet.to(gaps.dtype), r, r, 1.0, method)


def preconditioned_gap_term(
    gaps: GapBlock, probes: torch.Tensor, settings: KissSettings
) -> GapTerm:
    """log|A| = log|P| + tr log(L^-1 A L^-T) with P = L L^T the gap-block preconditioner.

    One preconditioned CG run from z = L u (u the Rademacher `probes`, so z has covariance
    P) gives both A^-1 z and, through its coefficients, the Lanczos tridiagonal of
    L^-1 A L^-T from u: u^T log(L^-1 A L^-T) u ~ ||u||^2 e_1^T log(T) e_1. As P ~ A, that
    correction is small and so is its variance. The gradient tr(A^-1 dA) is estimated by
    (A^-1 z)^T dA (P^-1 z), unbiased because E[z z^T] = P.
    """
    preconditioner = gaps.preconditioner
    z = preconditioner.sample(probes)
    result = pcg(
        gaps.matmul,
        z,
        preconditioner.solve,
        settings.cg_tol,
        settings.max_cg_iter,
        label=gaps.label,
    )
    lengths = (probes * probes).sum(0)
    quadrature = torch.stack(
        [gauss_quadrature_log(result.lanczos_tridiagonal(j)) for j in range(probes.shape[1])]
    )
    correction = (lengths * quadrature.to(lengths.dtype)).mean()
    logdet = correction + preconditioner.logdet()
    left = gaps.inverse_columns(result.solution)
    right = gaps.inverse_columns(preconditioner.solve(z))
    method = f"stochastic Lanczos quadrature, {probes.shape[1]} probes, gap-block preconditioned"
    return GapTerm(logdet, left, right, 1.0 / probes.shape[1], method, result.report())


@dataclass
class OnGridForward:
    """The likelihood's value and the detached solves its backward reuses."""

    value: torch.Tensor
    alpha: torch.Tensor
    eig: KroneckerEig
    gap: GapTerm | None
    solve: SolveReport


@dataclass
class WarmStart:
    """The latest solution of a problem's mean solve (where the next one starts), the gap
    preconditioner (any fixed P keeps the estimates unbiased, so one built at earlier
    hyperparameters serves until it slows CG down) and the CG work so far, in column-matmuls
    of the gap block (iterations times right-hand sides)."""

    alpha: torch.Tensor | None = None  # K^-1 z, (n, 1)
    preconditioner: GapPreconditioner | None = None  # of the gap block, at earlier values
    work: int = 0


@dataclass
class OnGridProblem:
    """Observed cells of a lattice, targets, the solver settings shared by every solve, and
    the warm start that carries from one evaluation to the next."""

    lattice: Lattice
    observed: torch.Tensor  # flat indices of observed cells
    z: torch.Tensor  # standardised targets at those cells
    gap_probes: torch.Tensor  # Rademacher probes over the missing cells
    settings: KissSettings
    missing: int = field(init=False)
    warm: WarmStart = field(init=False, default_factory=WarmStart)

    def __post_init__(self) -> None:
        self.missing = self.lattice.size - self.observed.numel()

    def solve_mean(self, op: ObservedKronecker) -> tuple[torch.Tensor, SolveReport]:
        """K^-1 z (n, 1) from the previous solution, which it then replaces."""
        settings = self.settings
        alpha, report = op.solve(
            self.z[:, None], None, settings.cg_tol, settings.max_cg_iter, self.warm.alpha
        )
        self.warm.alpha = alpha
        self.warm.work += report.iterations
        return alpha, report

    def gap(self, op: ObservedKronecker) -> GapTerm:
        """The gap term, with its probe solves' work counted; its preconditioner is kept for
        the next evaluations and the mean solves, unless its probe solve now takes over
        twice its first iterations: then it is dropped, to be rebuilt."""
        gap = gap_term(op.gaps, self.gap_probes, self.settings)
        if gap.probe_solve is not None:
            iterations = gap.probe_solve.iterations
            self.warm.work += iterations * self.gap_probes.shape[1]
            preconditioner = op.gaps.preconditioner
            self.warm.preconditioner = preconditioner
            if preconditioner.fresh_iterations is None:
                preconditioner.fresh_iterations = iterations
            elif iterations > 2 * preconditioner.fresh_iterations + 5:
                self.warm.preconditioner = None
        return gap

    def operator(
        self, columns: Sequence[torch.Tensor], outputscale: torch.Tensor, noise: torch.Tensor
    ) -> ObservedKronecker:
        """The observed-grid operator at these hyperparameters; its gap preconditioner is the
        problem's current one (built by the first stochastic gap term, then kept)."""
        op = ObservedKronecker(Kronecker(columns, outputscale), self.observed, noise)
        op.shared_preconditioner = self.warm.preconditioner
        return op

    @torch.no_grad()
    def forward(
        self, columns: Sequence[torch.Tensor], outputscale: torch.Tensor, noise: torch.Tensor
    ) -> OnGridForward:
        """log N(z | 0, K) at these hyperparameters, with what its gradient needs."""
        op = self.operator(columns, outputscale, noise)
        gap = self.gap(op) if self.missing else None  # first: it builds the preconditioner
        alpha, report = self.solve_mean(op)
        alpha = alpha[:, 0]
        logdet = op.gaps.full.spectrum().log().sum()
        if gap is not None:
            logdet = logdet + gap.logdet
        n = self.z.shape[0]
        value = -0.5 * (self.z @ alpha) - 0.5 * logdet - 0.5 * n * LOG_2PI
        return OnGridForward(value, alpha, op.gaps.eig, gap, report)


class OnGridLogLikelihood(torch.autograd.Function):
    """log N(z | 0, S K_grid S^T + noise I) with a backward that reuses the forward solves.

    The backward differentiates a surrogate built from detached solves, one structured
    matmul and the eigenvalues (with fixed eigenvectors, which is exact to first order):
    1/2 a^T K a - 1/2 sum log(s diag(Q^T K_grid Q) + noise) + w/2 sum_j l_j^T M r_j.
    """

    @staticmethod
    def forward(ctx, problem: OnGridProblem, forward: OnGridForward, outputscale, noise, *columns):  # noqa: ANN001, ANN205
        ctx.problem, ctx.eig, ctx.gap = problem, forward.eig, forward.gap
        ctx.save_for_backward(forward.alpha, outputscale, noise, *columns)
        return forward.value.clone()

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        alpha, outputscale, noise, *columns = ctx.saved_tensors
        problem, eig, gap = ctx.problem, ctx.eig, ctx.gap
        inputs = [t.detach().requires_grad_(True) for t in (outputscale, noise, *columns)]
        with torch.enable_grad():
            scale, nugget, cols = inputs[0], inputs[1], inputs[2:]
            op = problem.operator(cols, scale, nugget)
            fit = 0.5 * (alpha * op.matmul(alpha[:, None])[:, 0]).sum()
            # Eigenvalues of each axis factor with its eigenvectors held fixed.
            diagonals = [
                (f.matmul(q) * q).sum(0) for q, f in zip(eig.vectors, op.grid.factors, strict=True)
            ]
            eigenvalues = diagonals[0]
            for d in diagonals[1:]:
                eigenvalues = torch.outer(eigenvalues, d).reshape(-1)
            surrogate = fit - 0.5 * torch.log(scale * eigenvalues + nugget).sum()
            if gap is not None:
                full = op.grid.matmul(gap.right) + nugget * gap.right
                surrogate = surrogate + 0.5 * gap.weight * (gap.left * full).sum()
            grads = torch.autograd.grad(surrogate, inputs, allow_unused=True)
        return (None, None, *[None if g is None else g * grad_output for g in grads])


def complete_grid_variances(eig: KroneckerEig, outputscale, noise) -> torch.Tensor:  # noqa: ANN001
    """Exact latent posterior variances of every cell when all cells are observed."""
    lam = outputscale * eig.eigenvalues()
    return eig.diagonal(lam * noise / (lam + noise))


class SeparableGridSolver(KissSolver):
    """On-grid path, separable kernel: exact kernel S K S^T, solved through the gap complement
    of the full grid's Kronecker inverse; exact variances on complete grids, local kriging
    otherwise."""

    on_grid = True

    @property
    def cg_work(self) -> int:
        """Gap-block column-matmuls of every CG solve so far (likelihoods and conditioning)."""
        return self.problem.warm.work

    def fit_steps(self, max_iter: int, lr: float, tol: float) -> FitSteps:
        """L-BFGS (lr, tol are Adam's, unused): with warm-started CG its few evaluations
        cost a fraction of Adam's many (issue 15)."""
        return LBFGSSteps(max_iter=max_iter)

    def __init__(
        self, lattice: Lattice, observed: torch.Tensor, z: torch.Tensor, settings: KissSettings
    ) -> None:
        missing = lattice.size - observed.numel()
        gen = torch.Generator().manual_seed(settings.seed)
        probes = rademacher(missing, settings.num_probes, gen, z)
        self.problem = OnGridProblem(lattice, observed, z, probes, settings)
        self.diagnostics = SolverDiagnostics(
            "on-grid (exact kernel, S K S^T)",
            lattice.shape,
            "gap complement of the full-grid Kronecker inverse",
        )

    def log_marginal_likelihood(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[torch.Tensor, SolverDiagnostics]:
        problem, z = self.problem, self.problem.z
        columns = axis_columns(kernel, problem.lattice, z.dtype, z.device)
        outputscale, noise = kernel.outputscale, likelihood.noise
        forward = problem.forward(columns, outputscale, noise)
        value = OnGridLogLikelihood.apply(problem, forward, outputscale, noise, *columns)
        gap = forward.gap
        method, probe_solve = (gap.method, gap.probe_solve) if gap is not None else (None, None)
        diagnostics = replace(
            self._described(), solve=forward.solve, probe_solve=probe_solve, log_det_gaps=method
        )
        return value, diagnostics

    def _described(self) -> SolverDiagnostics:
        """The diagnostics, naming the gap preconditioner in use (if one was built)."""
        preconditioner = self.problem.warm.preconditioner
        if preconditioner is None:
            return self.diagnostics
        text = f"{self.diagnostics.preconditioner}; {preconditioner.describe()}"
        return replace(self.diagnostics, preconditioner=text)

    @torch.no_grad()
    def condition(self, kernel: Kernel, likelihood: GaussianLikelihood) -> GridPosterior:
        problem, z, settings = self.problem, self.problem.z, self.problem.settings
        scale, noise = kernel.outputscale, likelihood.noise
        op = problem.operator(
            axis_columns(kernel, problem.lattice, z.dtype, z.device), scale, noise
        )
        alpha, report = problem.solve_mean(op)
        mean = op.grid.matmul(op.embed(alpha))[:, 0]
        diagnostics = self._described().with_solve(report)
        if problem.missing == 0:
            variances = complete_grid_variances(op.grid.eig(), scale, noise)
            note = "exact (complete grid, Kronecker eigendecomposition)"
            return GridPosterior(
                problem.lattice, mean, replace(diagnostics, variance=note), variances=variances
            )
        lattice = problem.lattice
        table = lag_table(kernel, lattice.spacings, lattice.shape)
        kriging = local_kriging(
            kernel, likelihood, lattice, problem.observed, table, settings.neighbours
        )
        note = f"local kriging, {settings.neighbours} nearest observations"
        return GridPosterior(lattice, mean, replace(diagnostics, variance=note), kriging=kriging)

    @torch.no_grad()
    def kriged(
        self, kernel: Kernel, likelihood: GaussianLikelihood, columns: torch.Tensor
    ) -> KrigedColumns:
        problem = self.problem
        op = problem.operator(
            axis_columns(kernel, problem.lattice, problem.z.dtype, problem.z.device),
            kernel.outputscale,
            likelihood.noise,
        )
        settings = problem.settings
        solved = torch.cat(  # one column at a time: the solve's tolerance is of one column
            [
                op.solve(column[:, None], None, settings.cg_tol, settings.max_cg_iter)[0]
                for column in columns.to(problem.z).T
            ],
            1,
        )
        return grid_kriged(problem.lattice, solved, op.grid.matmul(op.embed(solved)))
