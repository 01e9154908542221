"""The interpolated path on a large grid: K_hat = W K_UU W^T + noise I for scattered inputs,
never dense (`IterativeInterpolatedSolver`).

KissGP takes this path when the grid is too large for its dense m x m solve; any axis
length works (long axes multiply by FFT, see `structured.ToeplitzFactor`).

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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from gpkernels.diagnostics import SolverDiagnostics
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import Kernel
from gpkernels.kiss_paths import KissSettings, KissSolver, Posterior, axis_columns
from gpkernels.lattice import Lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import LOG_2PI, NumericalWarning
from gpkernels.preconditioners import PivotedCholeskyPreconditioner, pivoted_cholesky
from gpkernels.solvers import CGResult, gauss_quadrature_log, lanczos_basis, pcg
from gpkernels.structured import Kronecker, StructuredOperator

# Warn when the last quarter of the Lanczos steps still lowered a variance by more than
# this fraction (the rank was too small).
LANCZOS_CHANGE_WARNING = 0.01


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


class InterpolatedKernel(StructuredOperator):
    """K_hat = W (outputscale kron_d T_d) W^T + noise I for scattered points."""

    label = "KissGP interpolated CG"

    def __init__(
        self,
        interp: Interpolation,
        columns: Sequence[torch.Tensor],
        outputscale: torch.Tensor,
        noise: torch.Tensor,
    ) -> None:
        self.interp = interp
        self.columns = list(columns)  # first Toeplitz column per axis, unit scale
        self.outputscale = outputscale
        self.noise = noise
        self.grid = Kronecker(self.columns, outputscale)  # K_UU
        self.size = interp.index.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.noise.dtype

    @property
    def device(self) -> torch.device:
        return self.noise.device

    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        interp = self.interp
        return interp.matmul(self.grid.matmul(interp.transpose_matmul(block))) + self.noise * block

    def kernel_diagonal(self) -> torch.Tensor:
        """diag(W K_UU W^T), without the noise."""
        return ski_diagonal(self.columns, self.outputscale, self.interp)

    def diagonal(self) -> torch.Tensor:
        return self.kernel_diagonal() + self.noise

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
        factor = pivoted_cholesky(self.kernel_diagonal(), self.column, rank)
        return PivotedCholeskyPreconditioner(factor, float(self.noise))


class IterativeInterpolatedSolver(KissSolver):
    """Interpolated path on a large grid: pivoted-Cholesky CG, SLQ, Lanczos variances."""

    def __init__(
        self, lattice: Lattice, interp: Interpolation, z: torch.Tensor, settings: KissSettings
    ) -> None:
        self.lattice, self.interp, self.z, self.settings = lattice, interp, z, settings
        self.diagnostics = SolverDiagnostics("interpolated (W K_UU W^T, iterative)", lattice.shape)

    def operator(
        self, columns: Sequence[torch.Tensor], outputscale: torch.Tensor, noise: torch.Tensor
    ) -> InterpolatedKernel:
        """K_hat at these hyperparameters, detached."""
        detached = [c.detach() for c in columns]
        return InterpolatedKernel(self.interp, detached, outputscale.detach(), noise.detach())

    def _solve(
        self, op: InterpolatedKernel, pre: PivotedCholeskyPreconditioner, rhs: torch.Tensor
    ) -> tuple[torch.Tensor, SolverDiagnostics]:
        settings = self.settings
        solution, report = op.solve(rhs, pre, settings.cg_tol, settings.max_cg_iter)
        note = f"pivoted Cholesky, rank {pre.rank}"
        return solution, replace(self.diagnostics, solve=report, preconditioner=note)

    def log_marginal_likelihood(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[torch.Tensor, SolverDiagnostics]:
        """log N(z | 0, K_hat), differentiable in the columns, outputscale and noise.

        The value comes from one batched CG solve of [z, probes]; the gradient from a
        surrogate built on the same solutions (module docstring). Probes are drawn from
        the same seed every call, so the objective is a smooth function of the
        hyperparameters during fitting.
        """
        settings, z = self.settings, self.z
        columns = axis_columns(kernel, self.lattice, z.dtype, z.device)
        outputscale, noise = kernel.outputscale, likelihood.noise
        with torch.no_grad():
            op = self.operator(columns, outputscale, noise)
            pre = op.preconditioner(settings.preconditioner_rank)
            probes = pre.sample(settings.num_probes, torch.Generator().manual_seed(settings.seed))
            rhs = torch.cat([z[:, None], probes], 1)
            result = pcg(
                op.matmul, rhs, pre.solve, settings.cg_tol, settings.max_cg_iter, label=op.label
            )
            alpha, solved = result.solution[:, 0], result.solution[:, 1:]
            whitened = pre.solve(probes)
            logdet = pre.logdet() + _probe_log_quadrature(result, probes, whitened)
            n = z.shape[0]
            value = -0.5 * float(z @ alpha) - 0.5 * logdet - 0.5 * n * LOG_2PI
        surrogate = self._surrogate(columns, outputscale, noise, alpha, solved, whitened)
        value = (surrogate - surrogate.detach()) + torch.as_tensor(
            value, dtype=z.dtype, device=z.device
        )
        diagnostics = replace(
            self.diagnostics,
            solve=result.report(),
            preconditioner=f"pivoted Cholesky, rank {pre.rank}",
            logdet_method=(
                f"pivoted Cholesky (rank {pre.rank}) + SLQ with {settings.num_probes} probes"
            ),
        )
        return value, diagnostics

    def _surrogate(
        self,
        columns: Sequence[torch.Tensor],
        outputscale: torch.Tensor,
        noise: torch.Tensor,
        alpha: torch.Tensor,
        solved: torch.Tensor,
        whitened: torch.Tensor,
    ) -> torch.Tensor:
        """A function of the hyperparameters whose gradient is the likelihood's (module
        docstring)."""
        interp = self.interp
        left = interp.transpose_matmul(torch.cat([alpha[:, None], solved], 1))
        right = interp.transpose_matmul(torch.cat([alpha[:, None], whitened], 1))
        k_right = Kronecker(columns, outputscale).matmul(right)
        data_term = left[:, 0] @ k_right[:, 0] + noise * (alpha @ alpha)
        trace_term = (
            (left[:, 1:] * k_right[:, 1:]).sum(0) + noise * (solved * whitened).sum(0)
        ).mean()
        return 0.5 * data_term - 0.5 * trace_term

    @torch.no_grad()
    def condition(self, kernel: Kernel, likelihood: GaussianLikelihood) -> LanczosPosterior:
        settings, z = self.settings, self.z
        columns = axis_columns(kernel, self.lattice, z.dtype, z.device)
        op = self.operator(columns, kernel.outputscale, likelihood.noise)
        pre = op.preconditioner(settings.preconditioner_rank)
        alpha, diagnostics = self._solve(op, pre, self.z[:, None])
        lanczos = love_root(op, settings.love_rank, settings.seed)
        rank = lanczos.root.shape[1]
        if lanczos.last_quarter_change > LANCZOS_CHANGE_WARNING:
            warnings.warn(
                f"KissGP variances may be overstated: the last {rank - 3 * rank // 4} of {rank} "
                "Lanczos steps still lowered variances by up to "
                f"{lanczos.last_quarter_change:.1%}; "
                "raise love_rank",
                NumericalWarning,
                stacklevel=4,
            )
        diagnostics = replace(
            diagnostics,
            variance=f"Lanczos (LOVE-style), rank {rank}",
            variance_last_quarter_change=lanczos.last_quarter_change,
        )
        mean_u = op.grid.matmul(self.interp.transpose_matmul(alpha))[:, 0]
        return LanczosPosterior(self.lattice, mean_u, lanczos.root, op, diagnostics)


def _probe_log_quadrature(result: CGResult, probes: torch.Tensor, whitened: torch.Tensor) -> float:
    """tr log(P^-1/2 K_hat P^-1/2) ~ mean_i |P^-1/2 z_i|^2 e_1^T log(T_i) e_1, from the Lanczos
    tridiagonals T_i that CG built on the probes (columns 1.. of `result`)."""
    norms = (probes * whitened).sum(0)  # |P^-1/2 z_i|^2
    quadrature = torch.stack(
        [gauss_quadrature_log(result.lanczos_tridiagonal(i + 1)) for i in range(probes.shape[1])]
    )
    return float((norms * quadrature).mean())


class LanczosPosterior(Posterior):
    """Means from the grid values K_UU W^T K_hat^-1 z, variances w^T K_UU w - |w^T R|^2."""

    def __init__(
        self,
        lattice: Lattice,
        mean_u: torch.Tensor,
        root: torch.Tensor,
        op: InterpolatedKernel,
        diagnostics: SolverDiagnostics,
    ) -> None:
        self.lattice, self.mean_u, self.root = lattice, mean_u, root
        self.columns, self.outputscale = op.columns, op.outputscale
        self.diagnostics = diagnostics
        self.ndim = len(lattice.shape)

    def predict(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lattice = self.lattice
        interp = Interpolation.build(block, lattice.starts, lattice.spacings, lattice.shape)
        weight = interp.weight.to(self.mean_u.dtype)
        mean = (self.mean_u[interp.index] * weight).sum(1)
        prior = ski_diagonal(self.columns, self.outputscale, interp)
        projected = (self.root[interp.index] * weight[..., None]).sum(1)
        return mean, (prior - (projected * projected).sum(1)).clamp_min(0.0)


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
    eig = op.grid.eig()
    root_spectrum = op.grid.spectrum().clamp_min(0.0).sqrt()
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
