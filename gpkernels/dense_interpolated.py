"""The interpolated path on a small grid: K = W K_UU W^T + noise I, solved as m x m in float64.

Scattered inputs with cubic-convolution weights W on a grid of m cells. Only W^T W and
W^T y enter, so every solve is an m x m dense one in float64 whatever the number of
points: exact SKI likelihood (differentiable by autograd), posterior mean and variance.
"""

from __future__ import annotations

import torch

from gpkernels.diagnostics import SolverDiagnostics
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import Kernel
from gpkernels.kiss_paths import KissSolver, Posterior, axis_columns
from gpkernels.lattice import Lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import LOG_2PI
from gpkernels.structured import toeplitz


class DenseInterpolatedSolver(KissSolver):
    """W K_UU W^T + noise I through its m x m float64 form."""

    def __init__(self, lattice: Lattice, interp: Interpolation, z: torch.Tensor) -> None:
        self.lattice, self.z = lattice, z
        zz = z.double()
        self.gram = interp.gram(torch.float64)
        self.wty = interp.transpose_matmul(zz[:, None])[:, 0].double()
        self.yty = float(zz @ zz)
        self.diagnostics = SolverDiagnostics(
            "interpolated (W K_UU W^T, dense m x m in float64)",
            lattice.shape,
            "none (direct solve)",
        )

    def _system(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K_UU and noise I + W^T W K_UU, both m x m float64."""
        columns = axis_columns(kernel, self.lattice, torch.float64, self.z.device)
        k_uu = toeplitz(columns[0])
        for column in columns[1:]:
            k_uu = torch.kron(k_uu, toeplitz(column))
        k_uu = kernel.outputscale.double() * k_uu
        eye = torch.eye(k_uu.shape[0], dtype=torch.float64, device=k_uu.device)
        return k_uu, likelihood.noise.double() * eye + self.gram @ k_uu

    def log_marginal_likelihood(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[torch.Tensor, SolverDiagnostics]:
        k_uu, system = self._system(kernel, likelihood)
        n, m = self.z.shape[0], k_uu.shape[0]
        noise64 = likelihood.noise.double()
        solved = torch.linalg.solve(system, self.wty[:, None])[:, 0]
        quad = (self.yty - self.wty @ (k_uu @ solved)) / noise64
        logdet = (n - m) * noise64.log() + torch.linalg.slogdet(system)[1]
        value = (-0.5 * quad - 0.5 * logdet - 0.5 * n * LOG_2PI).to(self.z.dtype)
        return value, self.diagnostics

    @torch.no_grad()
    def condition(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> DenseInterpolatedPosterior:
        k_uu, system = self._system(kernel, likelihood)
        u = torch.linalg.solve(system, self.wty[:, None])[:, 0]
        noise = likelihood.noise.double()
        eye = torch.eye(k_uu.shape[0], dtype=torch.float64, device=k_uu.device)
        covariance = k_uu @ torch.linalg.solve(system, noise * eye)
        covariance = 0.5 * (covariance + covariance.T)
        return DenseInterpolatedPosterior(self.lattice, k_uu @ u, covariance, self.diagnostics)


class DenseInterpolatedPosterior(Posterior):
    """Posterior mean and covariance of the grid values u; a point's moments are w^T u's."""

    def __init__(
        self,
        lattice: Lattice,
        mean_u: torch.Tensor,
        cov_u: torch.Tensor,
        diagnostics: SolverDiagnostics,
    ) -> None:
        self.lattice, self.mean_u, self.cov_u = lattice, mean_u, cov_u
        self.diagnostics = diagnostics
        self.ndim = len(lattice.shape)

    def predict(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lattice = self.lattice
        interp = Interpolation.build(block, lattice.starts, lattice.spacings, lattice.shape)
        weight = interp.weight.double()
        mean = (self.mean_u[interp.index] * weight).sum(1)
        cov = self.cov_u[interp.index[:, :, None], interp.index[:, None, :]]
        return mean, torch.einsum("bi,bij,bj->b", weight, cov, weight)
