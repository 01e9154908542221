"""Scattered inputs on a large interpolation grid: K_hat = W K_UU W^T + noise I, never dense.

KissGP takes this path when the grid is too large for its dense m x m solve.

- Solves: CG on K_hat, preconditioned by P = L L^T + noise I with L a pivoted Cholesky
  factor of W K_UU W^T (its diagonal and pivot columns are cheap: W is a tensor product
  of per-axis weights and K_UU a Kronecker product).
- log|K_hat| = log|P| (exact) + tr log(P^-1/2 K_hat P^-1/2), the second by stochastic
  Lanczos quadrature read off the CG runs on probes z ~ N(0, P).
- Gradient from the same solves: d LML = 0.5 a^T dK a - 0.5 mean_i (K^-1 z_i)^T dK (P^-1 z_i),
  with a = K^-1 y, applied through a surrogate whose value is removed again.
- Variances by Lanczos (LOVE-style): a fully reorthogonalised rank-r Lanczos decomposition
  of H = K_UU^1/2 W^T W K_UU^1/2 gives a root R (m x r) once (see `love_root`), and every
  prediction var(x*) = w*^T K_UU w* - |w*^T R|^2 costs 4^d r.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gpkernels.interpolation import Interpolation
from gpkernels.linalg import LOG_2PI
from gpkernels.preconditioners import PivotedCholeskyPreconditioner, pivoted_cholesky
from gpkernels.solvers import CGResult, gauss_quadrature_log, lanczos_basis, pcg
from gpkernels.structured import KroneckerEig, axis_factor, kron_matmul


def ski_cross(
    columns: Sequence[torch.Tensor],
    outputscale: torch.Tensor,
    rows: Interpolation,
    axis_index: torch.Tensor,
    axis_weight: torch.Tensor,
) -> torch.Tensor:
    """Interpolated kernel w_i^T K_UU w_j between every point of `rows` and one point j.

    `axis_index`, `axis_weight` (d, 4) are point j's neighbours per axis. Separable:
    a product over axes of 4 x 4 sums, so no grid-sized work.
    """
    value = outputscale.expand(rows.axis_index.shape[1]).clone()
    for axis, column in enumerate(columns):
        lag = (rows.axis_index[axis][:, :, None] - axis_index[axis][None, None, :]).abs()
        block = column[lag]  # (n, 4, 4)
        value = value * torch.einsum(
            "na,nab,b->n", rows.axis_weight[axis], block, axis_weight[axis]
        )
    return value


def ski_diagonal(
    columns: Sequence[torch.Tensor], outputscale: torch.Tensor, points: Interpolation
) -> torch.Tensor:
    """Prior variance w_i^T K_UU w_i of each interpolated point (no noise)."""
    value = outputscale.expand(points.axis_index.shape[1]).clone()
    for axis, column in enumerate(columns):
        index = points.axis_index[axis]
        block = column[(index[:, :, None] - index[:, None, :]).abs()]
        weight = points.axis_weight[axis]
        value = value * torch.einsum("na,nab,nb->n", weight, block, weight)
    return value


@dataclass
class InterpolatedKernel:
    """K_hat = W (outputscale kron_d T_d) W^T + noise I for scattered points."""

    interp: Interpolation
    columns: list[torch.Tensor]  # first Toeplitz column per axis, unit scale
    outputscale: torch.Tensor
    noise: torch.Tensor
    shape: tuple[int, ...]
    factors: list = field(init=False)

    def __post_init__(self) -> None:
        self.factors = [axis_factor(c) for c in self.columns]

    def grid_matmul(self, u: torch.Tensor) -> torch.Tensor:
        """K_UU u for u (m, b)."""
        return self.outputscale * kron_matmul(self.factors, u, self.shape)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return (
            self.interp.matmul(self.grid_matmul(self.interp.transpose_matmul(v))) + self.noise * v
        )

    def diagonal(self) -> torch.Tensor:
        return ski_diagonal(self.columns, self.outputscale, self.interp)

    def column(self, j: int) -> torch.Tensor:
        """Column j of W K_UU W^T (no noise)."""
        interp = self.interp
        return ski_cross(
            self.columns,
            self.outputscale,
            interp,
            interp.axis_index[:, j],
            interp.axis_weight[:, j],
        )

    def preconditioner(self, rank: int) -> PivotedCholeskyPreconditioner:
        factor = pivoted_cholesky(self.diagonal(), self.column, rank)
        return PivotedCholeskyPreconditioner(factor, float(self.noise))


@dataclass
class ScatteredProblem:
    """Scattered points interpolated onto a grid, their targets, and the solver settings."""

    interp: Interpolation
    shape: tuple[int, ...]
    z: torch.Tensor
    num_probes: int
    cg_tol: float
    max_cg_iter: int
    preconditioner_rank: int
    seed: int
    diagnostics: dict = field(default_factory=dict)

    def operator(
        self, columns: Sequence[torch.Tensor], outputscale: torch.Tensor, noise: torch.Tensor
    ) -> InterpolatedKernel:
        return InterpolatedKernel(self.interp, list(columns), outputscale, noise, self.shape)

    def log_likelihood(
        self, columns: Sequence[torch.Tensor], outputscale: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """log N(z | 0, K_hat), differentiable in the columns, outputscale and noise.

        The value comes from one batched CG solve of [z, probes]; the gradient from a
        surrogate built on the same solutions (module docstring). Probes are drawn from
        the same seed every call, so the objective is a smooth function of the
        hyperparameters during fitting.
        """
        with torch.no_grad():
            op = self.operator([c.detach() for c in columns], outputscale.detach(), noise.detach())
            pre = op.preconditioner(self.preconditioner_rank)
            probes = pre.sample(self.num_probes, torch.Generator().manual_seed(self.seed))
            result = self._solve(op, pre, torch.cat([self.z[:, None], probes], 1))
            alpha, solved = result.solution[:, 0], result.solution[:, 1:]
            whitened = pre.solve(probes)
            norms = (probes * whitened).sum(0)  # |P^-1/2 z_i|^2
            quadrature = torch.stack(
                [
                    gauss_quadrature_log(result.lanczos_tridiagonal(i + 1))
                    for i in range(self.num_probes)
                ]
            )
            logdet = pre.logdet() + float((norms * quadrature).mean())
            n = self.z.shape[0]
            value = -0.5 * float(self.z @ alpha) - 0.5 * logdet - 0.5 * n * LOG_2PI
            self.diagnostics["logdet_method"] = (
                f"pivoted Cholesky (rank {pre.rank}) + SLQ with {self.num_probes} probes"
            )
        interp = self.interp
        left = interp.transpose_matmul(torch.cat([alpha[:, None], solved], 1))
        right = interp.transpose_matmul(torch.cat([alpha[:, None], whitened], 1))
        k_right = outputscale * kron_matmul([axis_factor(c) for c in columns], right, self.shape)
        data_term = left[:, 0] @ k_right[:, 0] + noise * (alpha @ alpha)
        trace_term = (
            (left[:, 1:] * k_right[:, 1:]).sum(0) + noise * (solved * whitened).sum(0)
        ).mean()
        surrogate = 0.5 * data_term - 0.5 * trace_term
        return (surrogate - surrogate.detach()) + torch.as_tensor(
            value, dtype=self.z.dtype, device=self.z.device
        )

    def solve_mean(
        self, op: InterpolatedKernel, pre: PivotedCholeskyPreconditioner
    ) -> torch.Tensor:
        """K_hat^-1 z."""
        return self._solve(op, pre, self.z[:, None]).solution[:, 0]

    def _solve(
        self, op: InterpolatedKernel, pre: PivotedCholeskyPreconditioner, rhs: torch.Tensor
    ) -> CGResult:
        result = pcg(
            op.matmul, rhs, pre.solve, self.cg_tol, self.max_cg_iter, label="KissGP interpolated CG"
        )
        self.diagnostics.update(
            cg_iterations=result.iterations,
            cg_relative_residual=float(result.relative_residual.max()),
            cg_converged=result.converged,
            preconditioner=f"pivoted Cholesky, rank {pre.rank}",
        )
        return result


@dataclass
class LanczosVariances:
    """Root R (m, r) of K W^T K_hat^-1 W K ~ R R^T, and how much its last quarter of Lanczos
    steps still changed posterior variances at a sample of the training points (relative):
    small means the rank sufficed."""

    root: torch.Tensor
    last_quarter_change: float


def love_root(op: InterpolatedKernel, rank: int, seed: int) -> LanczosVariances:
    """A rank-r Lanczos (LOVE-style) root for posterior variances on an interpolation grid.

    With H = K^1/2 W^T W K^1/2 (m x m; K^1/2 from the per-axis eigendecompositions),
    K W^T K_hat^-1 W K = K^1/2 H (noise I + H)^-1 K^1/2. Lanczos on H from a random
    (seeded) start finds its large eigenvalues first, which carry that function; the
    small ones, where data say little, contribute little. Exact once r exceeds n.
    """
    eig = KroneckerEig.of(op.factors)
    root_spectrum = (op.outputscale * eig.eigenvalues()).clamp_min(0.0).sqrt()
    interp = op.interp

    def half(u: torch.Tensor) -> torch.Tensor:  # K^1/2 u
        return eig.apply(u, root_spectrum)

    def gram(u: torch.Tensor) -> torch.Tensor:  # H u
        return half(interp.transpose_matmul(interp.matmul(half(u))))

    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(interp.grid_size, generator=generator, dtype=op.noise.dtype)
    basis, tridiagonal = lanczos_basis(gram, start.to(op.noise.device), rank)

    def root_of(steps: int) -> torch.Tensor:
        theta, vectors = torch.linalg.eigh(tridiagonal[:steps, :steps])
        theta = theta.clamp_min(0.0)
        return half(basis[:, :steps] @ vectors) * (theta / (theta + op.noise)).sqrt()

    root = root_of(basis.shape[1])
    sample = torch.randperm(interp.index.shape[0], generator=generator)[:256].to(root.device)
    points = interp.rows(sample)
    explained = (points.matmul(root) ** 2).sum(1)
    earlier = (points.matmul(root_of(max(3 * basis.shape[1] // 4, 1))) ** 2).sum(1)
    posterior = (ski_diagonal(op.columns, op.outputscale, points) - explained).clamp_min(1e-300)
    change = float(((explained - earlier) / posterior).max())
    return LanczosVariances(root, change)
