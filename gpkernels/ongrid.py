"""Exact GP likelihood and solves for observations on the cells of a regular grid (gaps allowed).

With M = K_grid + noise I on the full grid (Kronecker, so its eigendecomposition is
cheap) and K = S K_grid S^T + noise I the kernel matrix of the observed cells:

- solves K^-1 y through the block-inverse identity, CG running only on the gap block
  A of M^-1 (clustered spectrum, few iterations), refined on the true residual;
- log|K| = log|M| + log|A|, with A = (M^-1) restricted to the missing cells (a block
  inverse identity): log|M| is exact from the eigenvalues; log|A| is exact (dense
  Cholesky) for up to `exact_gap_limit` missing cells and stochastic Lanczos
  quadrature beyond;
- the gradient follows the same split, so only the gap term is ever stochastic.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gpkernels.linalg import LOG_2PI, NumericalWarning
from gpkernels.solvers import CGResult, pcg, slq_trace_log
from gpkernels.structured import GridKernel, KroneckerEig, ObservedGrid

MAX_REFINEMENTS = 4


@dataclass(frozen=True)
class Lattice:
    """A regular grid: per-axis start, spacing and size.

    A lattice is a set of nodes, and it is held in one canonical form: every spacing
    positive, every start the lowest node. An axis given in descending order (latitude
    from 90 to -90, as ERA5 stores it: a negative spacing from the first coordinate) is
    turned around on construction into the same nodes in ascending order. Everything
    that reads a lattice (cells per lengthscale or period, lags, neighbour offsets,
    interpolation stencils) can then take a spacing as the width of a cell. Cells are
    found from coordinates (`cell_index`), so callers never depend on the node order.
    """

    starts: tuple[float, ...]
    spacings: tuple[float, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        starts, spacings = [], []
        for axis, (start, h, n) in enumerate(
            zip(self.starts, self.spacings, self.shape, strict=True)
        ):
            if not (math.isfinite(start) and math.isfinite(h)) or (h == 0 and n > 1):
                raise ValueError(
                    f"lattice axis {axis} has start {start} and spacing {h}: a regular grid "
                    "needs a finite start and a finite, non-zero spacing"
                )
            descending = h < 0
            starts.append(float(start + (n - 1) * h) if descending else float(start))
            spacings.append(float(-h) if descending else float(h))
        object.__setattr__(self, "starts", tuple(starts))
        object.__setattr__(self, "spacings", tuple(spacings))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def cell_index(self, x: torch.Tensor, tol: float | None = None) -> torch.Tensor | None:
        """Flat C-order cell index of each row of x, or None if any row is off the lattice.

        `tol` is in cells: 1e-6 by default, 1e-3 for float32 inputs.
        """
        if tol is None:
            tol = 1e-3 if x.dtype == torch.float32 else 1e-6
        flat = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for dim, (start, h, n) in enumerate(
            zip(self.starts, self.spacings, self.shape, strict=True)
        ):
            pos = (x[:, dim].double() - start) / h
            idx = torch.round(pos)
            if bool(((pos - idx).abs() > tol).any()) or bool(((idx < 0) | (idx >= n)).any()):
                return None
            flat = flat * n + idx.long()
        return flat

    def padded(self, cells: int) -> Lattice:
        """The same lattice grown by `cells` nodes on every side (for interpolation stencils)."""
        return Lattice(
            tuple(s - cells * h for s, h in zip(self.starts, self.spacings, strict=True)),
            self.spacings,
            tuple(n + 2 * cells for n in self.shape),
        )

    def lags(self, axis: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.spacings[axis] * torch.arange(self.shape[axis], dtype=dtype, device=device)


def detect_lattice(x: torch.Tensor, max_cells: int = 50_000_000) -> Lattice | None:
    """The smallest regular lattice holding every row of x, if the data are gridded.

    Positions may be off by float32 rounding (a thousandth of a cell is tolerated).
    """
    tol = 1e-3 if x.dtype == torch.float32 else 1e-6
    starts, spacings, shape = [], [], []
    for dim in range(x.shape[1]):
        values = torch.unique(x[:, dim].double())
        if values.numel() < 2:
            return None
        span = float(values[-1] - values[0])
        n = round(span / float(values.diff().min())) + 1
        if n > max_cells:
            return None
        starts.append(float(values[0]))
        spacings.append(span / (n - 1))
        shape.append(n)
    lattice = Lattice(tuple(starts), tuple(spacings), tuple(shape))
    if lattice.size > max_cells or lattice.cell_index(x, tol) is None:
        return None
    return lattice


@dataclass
class GapTerm:
    """What the gradient of log|A| needs: pairs (left_j, right_j) of full-grid vectors.

    d log|A| = -weight * sum_j left_j^T dM right_j.
    """

    logdet: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    weight: float
    method: str


@dataclass
class OnGridProblem:
    """Observed cells of a lattice, targets, and the solver settings shared by every solve."""

    lattice: Lattice
    observed: torch.Tensor  # flat indices of observed cells
    z: torch.Tensor  # standardised targets at those cells
    gap_probes: torch.Tensor  # Rademacher probes over the missing cells
    cg_tol: float
    max_cg_iter: int
    lanczos_steps: int
    exact_gap_limit: int
    diagnostics: dict = field(default_factory=dict)
    missing: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        mask = torch.ones(self.lattice.size, dtype=torch.bool, device=self.observed.device)
        mask[self.observed] = False
        self.missing = torch.nonzero(mask)[:, 0]

    def operator(self, columns: Sequence[torch.Tensor], outputscale, noise) -> ObservedGrid:  # noqa: ANN001
        return ObservedGrid(GridKernel(columns, outputscale), self.observed, noise)

    def solve_mean(
        self, op: ObservedGrid, eig: KroneckerEig, inverse: torch.Tensor
    ) -> torch.Tensor:
        """K^-1 z through the gaps: K^-1 = (M^-1)_oo - (M^-1)_om A^-1 (M^-1)_mo.

        Only A (the gap block of M^-1) is solved by CG: its spectrum clusters, so far
        fewer iterations are needed than for K itself. The true residual z - K a is
        then corrected by further rounds until it is below `cg_tol` (relative). All
        of it runs in float64 (float32 models included), so the residual can go below
        float32's rounding floor; the result comes back in the model's dtype.
        """
        dtype = self.z.dtype
        if dtype != torch.float64:  # redo the (cheap, per-axis) eigendecompositions in float64
            op = op.to(torch.float64)
            eig = op.grid.eig()
            inverse = 1.0 / (op.grid.outputscale * eig.eigenvalues() + op.noise)
        z = self.z[:, None].double()
        alpha = torch.zeros_like(z)
        residual, iterations, rounds = z, 0, 0
        z_norm = float(z.norm())
        if z_norm == 0.0:  # K^-1 0 = 0 exactly; a residual relative to a zero z has no meaning
            self.diagnostics.update(
                cg_iterations=0, cg_refinements=0, cg_relative_residual=0.0, cg_converged=True
            )
            return alpha[:, 0].to(dtype)
        relative = 1.0
        converged = True
        # Gap-solve errors reach K^-1 z amplified (by about 1/noise at first guess); later
        # rounds use the amplification measured so far to ask for no more than needed.
        ratio = float(op.noise) / (float(op.grid.prior_variance) + float(op.noise))
        amplification = 10.0 / ratio
        for rounds in range(1, MAX_REFINEMENTS + 1):  # noqa: B007
            inner_tol = min(max(0.1 * self.cg_tol / (amplification * relative), 1e-13), 1e-4)
            correction, inner = self._complement_solve(op, eig, inverse, residual, inner_tol)
            iterations += inner.iterations
            converged = converged and inner.converged
            candidate = alpha + correction
            new_residual = z - op.matmul(candidate)
            new_relative = float(new_residual.norm()) / z_norm
            amplification = max(amplification, new_relative / (relative * inner_tol))
            if new_relative >= relative:  # refinement stopped helping
                break
            alpha, residual, relative = candidate, new_residual, new_relative
            if relative <= self.cg_tol:
                break
        if relative > self.cg_tol:
            converged = False
            warnings.warn(
                f"KissGP on-grid solve did not converge: relative residual {relative:.2e} > "
                f"{self.cg_tol:.0e} after {rounds} refinement rounds ({iterations} CG iterations)",
                NumericalWarning,
                stacklevel=2,
            )
        self.diagnostics.update(
            cg_iterations=iterations,
            cg_refinements=rounds,
            cg_relative_residual=relative,
            cg_converged=converged,
        )
        return alpha[:, 0].to(dtype)

    def _complement_solve(
        self,
        op: ObservedGrid,
        eig: KroneckerEig,
        inverse: torch.Tensor,
        rhs: torch.Tensor,
        tol: float,
    ) -> tuple[torch.Tensor, CGResult]:
        """One pass of K^-1 rhs by the block-inverse identity."""
        w = eig.apply(op.embed(rhs), inverse)
        if self.missing.numel() == 0:
            done = CGResult(
                rhs, 0, rhs.new_zeros(1), True, rhs.new_zeros(0, 1), rhs.new_zeros(0, 1)
            )
            return w[self.observed], done
        inner = pcg(
            self._gap_matmul(eig, inverse),
            w[self.missing],
            None,
            tol,
            self.max_cg_iter,
            label="KissGP gap CG",
        )
        back = self._gap_inverse_columns(eig, inverse, inner.solution)[self.observed]
        return w[self.observed] - back, inner

    def _gap_matmul(self, eig: KroneckerEig, inverse: torch.Tensor):  # noqa: ANN202
        """v -> A v with A = (M^-1) on the missing cells."""
        return lambda v: self._gap_inverse_columns(eig, inverse, v)[self.missing]

    def _gap_inverse_columns(self, eig: KroneckerEig, inverse: torch.Tensor, v: torch.Tensor):  # noqa: ANN202
        """M^-1 S_m^T v on the full grid (v over the missing cells)."""
        full = v.new_zeros(self.lattice.size, v.shape[1])
        full[self.missing] = v
        return eig.apply(full, inverse)

    def gap_term(self, eig: KroneckerEig, inverse: torch.Tensor) -> GapTerm:
        """log|A| for A = (M^-1) on the missing cells, with its gradient's vector pairs."""
        m = self.missing.shape[0]
        if m <= self.exact_gap_limit:
            eye = torch.eye(m, dtype=inverse.dtype, device=inverse.device)
            columns = self._gap_inverse_columns(eig, inverse, eye)  # M^-1 S_m^T, (N, m)
            factor = torch.linalg.cholesky(columns[self.missing].double())
            # A^-1 = L^-T L^-1, so tr(A^-1 dA) = -sum_j r_j^T dM r_j with R = M^-1 S_m^T L^-T.
            r = torch.linalg.solve_triangular(factor, columns.double().T, upper=False).T
            logdet = 2.0 * factor.diagonal().log().sum()
            return GapTerm(
                logdet.to(inverse.dtype),
                r.to(inverse.dtype),
                r.to(inverse.dtype),
                1.0,
                "exact (dense Cholesky of the gap block)",
            )
        probes = self.gap_probes
        gap_matmul = self._gap_matmul(eig, inverse)
        logdet = slq_trace_log(gap_matmul, probes, self.lanczos_steps)
        solved = pcg(gap_matmul, probes, None, self.cg_tol, self.max_cg_iter, label="KissGP gap CG")
        left = self._gap_inverse_columns(eig, inverse, solved.solution)
        right = self._gap_inverse_columns(eig, inverse, probes)
        return GapTerm(
            logdet,
            left,
            right,
            1.0 / probes.shape[1],
            f"stochastic Lanczos quadrature, {probes.shape[1]} probes",
        )


class OnGridLogLikelihood(torch.autograd.Function):
    """log N(z | 0, S K_grid S^T + noise I) with a backward that reuses the forward solves.

    The backward differentiates a surrogate built from detached solves, one structured
    matmul and the eigenvalues (with fixed eigenvectors, which is exact to first order):
    1/2 a^T K a - 1/2 sum log(s diag(Q^T K_grid Q) + noise) + w/2 sum_j l_j^T M r_j.
    """

    @staticmethod
    def forward(ctx, problem: OnGridProblem, outputscale, noise, *columns):  # noqa: ANN001, ANN205
        with torch.no_grad():
            op = problem.operator(columns, outputscale, noise)
            eig = op.grid.eig()
            spectrum = outputscale * eig.eigenvalues() + noise
            inverse = 1.0 / spectrum
            alpha = problem.solve_mean(op, eig, inverse)
            logdet = spectrum.log().sum()
            gap = problem.gap_term(eig, inverse) if problem.missing.numel() else None
            if gap is not None:
                logdet = logdet + gap.logdet
                problem.diagnostics["log_det_gaps"] = gap.method
            n = problem.z.shape[0]
            lml = -0.5 * (problem.z @ alpha) - 0.5 * logdet - 0.5 * n * LOG_2PI
        ctx.problem, ctx.eig, ctx.gap = problem, eig, gap
        ctx.save_for_backward(alpha, outputscale, noise, *columns)
        return lml

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
                ((q.T @ f) * q.T).sum(1) for q, f in zip(eig.vectors, op.grid.factors, strict=True)
            ]
            eigenvalues = diagonals[0]
            for d in diagonals[1:]:
                eigenvalues = torch.outer(eigenvalues, d).reshape(-1)
            surrogate = fit - 0.5 * torch.log(scale * eigenvalues + nugget).sum()
            if gap is not None:
                full = op.grid.matmul(gap.right) + nugget * gap.right
                surrogate = surrogate + 0.5 * gap.weight * (gap.left * full).sum()
            grads = torch.autograd.grad(surrogate, inputs, allow_unused=True)
        return (None, *[None if g is None else g * grad_output for g in grads])


def complete_grid_variances(eig: KroneckerEig, outputscale, noise) -> torch.Tensor:  # noqa: ANN001
    """Exact latent posterior variances of every cell when all cells are observed."""
    lam = outputscale * eig.eigenvalues()
    return eig.diagonal(lam * noise / (lam + noise))
