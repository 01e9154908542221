"""Exact posterior means for observations on grid cells under any stationary kernel.

Isotropic kernels (Euclidean distance over several columns) have no Kronecker
structure, so there is no cheap eigendecomposition of the full grid. K = S K_grid S^T
+ noise I is still exact: K_grid is multilevel Toeplitz, multiplied by one FFT of its
circulant embedding, and CG is preconditioned by the circulant of the doubled grid
(the kernel wrapped on a torus), which captures the grid's spectrum.
"""

from __future__ import annotations

import torch

from gpkernels.kernels import Kernel, lag_table
from gpkernels.ongrid import Lattice
from gpkernels.solvers import pcg
from gpkernels.structured import CirculantPreconditioner, ObservedGrid, ToeplitzGrid


def condition_stationary_grid(
    kernel: Kernel,
    outputscale: torch.Tensor,
    noise: torch.Tensor,
    lattice: Lattice,
    observed: torch.Tensor,
    z: torch.Tensor,
    cg_tol: float,
    max_cg_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Posterior mean of every grid cell given z at the `observed` cells (flat indices).

    Returns the mean over the grid (flat, C order), the unit-scale lag table (what local
    kriging needs for variances) and the solve's diagnostics. CG runs in float64.
    """
    table = lag_table(kernel, lattice.spacings, lattice.shape).to(z.device)
    op = ObservedGrid(ToeplitzGrid(table, outputscale.detach().double()), observed, float(noise))
    preconditioner = CirculantPreconditioner(op.grid, observed, float(noise))
    solved = pcg(
        op.matmul,
        z.double()[:, None],
        preconditioner.solve,
        cg_tol,
        max_cg_iter,
        label="KissGP stationary-grid CG",
    )
    mean = op.grid.matmul(op.embed(solved.solution))[:, 0]
    diagnostics = {
        "cg_iterations": solved.iterations,
        "cg_relative_residual": float(solved.relative_residual.max()),
        "cg_converged": solved.converged,
    }
    return mean.to(z.dtype), table, diagnostics
