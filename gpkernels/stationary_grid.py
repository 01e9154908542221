"""The on-grid stationary path: exact posterior means for observations on grid cells under any
stationary kernel.

Isotropic kernels (Euclidean distance over several columns) have no Kronecker
structure, so there is no cheap eigendecomposition of the full grid. K = S K_grid S^T
+ noise I is still exact: K_grid is multilevel Toeplitz, multiplied by one FFT of its
circulant embedding, and CG is preconditioned by the circulant of the doubled grid
(the kernel wrapped on a torus), which captures the grid's spectrum. Variances by local
kriging; no whole-grid likelihood (hyperparameters come from the exact subsample fit).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from gpkernels.diagnostics import SolverDiagnostics
from gpkernels.kernels import Kernel, lag_table
from gpkernels.kiss_paths import (
    GridPosterior,
    KissSettings,
    KissSolver,
    grid_kriged,
    local_kriging,
)
from gpkernels.lattice import Lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.preconditioners import CirculantPreconditioner
from gpkernels.regression import KrigedColumns
from gpkernels.structured import ObservedGrid, ToeplitzGrid


class StationaryGridSolver(KissSolver):
    """On-grid path, any stationary kernel: FFT matmuls, circulant-preconditioned CG in float64."""

    has_likelihood = False
    on_grid = True

    def __init__(
        self, lattice: Lattice, observed: torch.Tensor, z: torch.Tensor, settings: KissSettings
    ) -> None:
        self.lattice, self.observed, self.z, self.settings = lattice, observed, z, settings
        self.diagnostics = SolverDiagnostics(
            "on-grid, stationary kernel (exact kernel, S K S^T, FFT)",
            lattice.shape,
            "circulant of the doubled grid",
        )

    def log_marginal_likelihood(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[torch.Tensor, SolverDiagnostics]:
        raise ValueError(
            "the whole-grid marginal likelihood needs a separable kernel; a non-separable "
            "one learns its hyperparameters from the exact fit on a subsample only"
        )

    def _operator(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[ObservedGrid, CirculantPreconditioner, torch.Tensor]:
        """S K S^T + noise I at the current hyperparameters in float64, its preconditioner,
        and the kernel's lag table."""
        scale, noise = kernel.outputscale.detach(), likelihood.noise.detach()
        table = lag_table(kernel, self.lattice.spacings, self.lattice.shape).to(self.z.device)
        op = ObservedGrid(ToeplitzGrid(table, scale.double()), self.observed, noise.double())
        op.label = "KissGP stationary-grid CG"
        return op, CirculantPreconditioner(op.grid, self.observed, float(noise)), table

    @torch.no_grad()
    def condition(self, kernel: Kernel, likelihood: GaussianLikelihood) -> GridPosterior:
        """Posterior mean of every grid cell given z at the observed cells; CG runs in float64."""
        lattice, z, settings = self.lattice, self.z, self.settings
        op, preconditioner, table = self._operator(kernel, likelihood)
        solved, report = op.solve(
            z.double()[:, None], preconditioner, settings.cg_tol, settings.max_cg_iter
        )
        mean = op.grid.matmul(op.embed(solved))[:, 0].to(z.dtype)
        kriging = local_kriging(
            kernel, likelihood, lattice, self.observed, table, settings.neighbours
        )
        diagnostics = replace(
            self.diagnostics,
            solve=report,
            variance=f"local kriging, {settings.neighbours} nearest observations",
        )
        return GridPosterior(lattice, mean, diagnostics, kriging=kriging)

    @torch.no_grad()
    def kriged(
        self, kernel: Kernel, likelihood: GaussianLikelihood, columns: torch.Tensor
    ) -> KrigedColumns:
        op, preconditioner, _ = self._operator(kernel, likelihood)
        settings = self.settings
        solved, _ = op.solve(
            columns.double(), preconditioner, settings.cg_tol, settings.max_cg_iter
        )
        return grid_kriged(self.lattice, solved, op.grid.matmul(op.embed(solved)))
