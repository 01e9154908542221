"""What every KissGP solver path shares: its settings, the solver and posterior protocols,
the grid posterior (means on the grid, exact or local-kriging variances), and the kernel
read per axis (columns, lengthscales and periods in cells).

A path is one `KissSolver` class built once from the data (`kiss.choose_solver`); it
offers the log marginal likelihood where it has one and `condition(...) -> Posterior`,
and the posterior offers `predict(block)`. A new path is a new class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from gpkernels.diagnostics import SolverDiagnostics
from gpkernels.kernels import (
    Kernel,
    axis_column,
    axis_factors,
    periodic_factors,
    stationary_factors,
)
from gpkernels.lattice import Lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.local import KrigingInputs, LocalKriging
from gpkernels.optim import AdamSteps, FitSteps
from gpkernels.regression import KrigedColumns


@dataclass(frozen=True)
class KissSettings:
    """Solver settings shared by every path (see `KissGP` for their meaning); `cg_tol` is
    already resolved for the data's dtype."""

    num_probes: int
    lanczos_steps: int
    cg_tol: float
    max_cg_iter: int
    exact_gap_limit: int
    neighbours: int
    preconditioner_rank: int
    love_rank: int
    seed: int


class Posterior(ABC):
    """A conditioned KissGP: predictions in standardised units, and how it was solved."""

    diagnostics: SolverDiagnostics
    ndim: int  # input columns it predicts at

    @abstractmethod
    def predict(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent posterior mean and variance at the rows of `block` (standardised units)."""


class KissSolver(ABC):
    """One KissGP path over fixed data (inputs and standardised targets z); evaluated at
    whatever hyperparameters the kernel and likelihood hold when called."""

    diagnostics: SolverDiagnostics  # what the path is, before any solve
    has_likelihood = True  # False: `log_marginal_likelihood` raises, saying why
    on_grid = False  # inputs on grid cells (what variance calibration needs)
    cg_work: int | None = None  # CG column-matmuls so far, where the path counts them

    def fit_steps(self, max_iter: int, lr: float, tol: float) -> FitSteps:
        """The default optimiser of `KissGP.fit` on this path: Adam (lr, tol)."""
        return AdamSteps(max_iter, lr, tol)

    @abstractmethod
    def log_marginal_likelihood(
        self, kernel: Kernel, likelihood: GaussianLikelihood
    ) -> tuple[torch.Tensor, SolverDiagnostics]:
        """log N(z | 0, K) (differentiable in the hyperparameters) and the solve's diagnostics."""

    @abstractmethod
    def condition(self, kernel: Kernel, likelihood: GaussianLikelihood) -> Posterior:
        """Solve for the posterior at the current hyperparameters."""

    def kriged(
        self, kernel: Kernel, likelihood: GaussianLikelihood, columns: torch.Tensor
    ) -> KrigedColumns:
        """Simple kriging of other columns (n, p) at the data (universal kriging needs it);
        the on-grid paths offer it."""
        raise NotImplementedError(
            f"{self.diagnostics.path}: universal kriging (covariates) needs the inputs on "
            "the cells of a regular grid, or the exact model"
        )


def grid_kriged(lattice: Lattice, solved: torch.Tensor, fields: torch.Tensor) -> KrigedColumns:
    """Kriged columns of an on-grid path: K^-1 C at the data and the kriged fields (every
    cell of the lattice, p columns), read at the cells asked for."""

    def at(x: torch.Tensor) -> torch.Tensor:
        cells = lattice.cell_index(x)
        if cells is None:
            raise ValueError(f"the targets are not all on cells of the grid {lattice}")
        return fields[cells]

    return KrigedColumns(solved, at)


def axis_columns(
    kernel: Kernel, lattice: Lattice, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """First Toeplitz column (unit scale) of a separable kernel's factor along each axis."""
    ndim = len(lattice.shape)
    _, factors = axis_factors(kernel, ndim)
    return [
        axis_column(f, axis, lattice.lags(axis, dtype, device), ndim)
        for axis, f in enumerate(factors)
    ]


class GridPosterior(Posterior):
    """Means of every grid cell, with exact variances (complete Kronecker grids) or local
    kriging; predicts on cells of its lattice only."""

    def __init__(
        self,
        lattice: Lattice,
        mean: torch.Tensor,
        diagnostics: SolverDiagnostics,
        variances: torch.Tensor | None = None,
        kriging: LocalKriging | None = None,
    ) -> None:
        self.lattice = lattice
        self.mean = mean
        self.variances = variances
        self.kriging = kriging
        self.diagnostics = diagnostics
        self.ndim = len(lattice.shape)

    def predict(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells = self.lattice.cell_index(block)
        if cells is None:
            raise ValueError(
                "a model fitted on gridded data predicts on cells of its grid "
                f"{self.lattice}; some points are off it"
            )
        if self.variances is not None:
            return self.mean[cells], self.variances[cells]
        return self.mean[cells], self.kriging.variances(cells)[cells]


def local_kriging(
    kernel: Kernel,
    likelihood: GaussianLikelihood,
    lattice: Lattice,
    observed: torch.Tensor,
    table: torch.Tensor,
    neighbours: int,
) -> LocalKriging:
    """Local kriging at the current hyperparameters (observed: flat cells; table: the
    kernel's unit-scale lag table on the lattice)."""
    mask = torch.zeros(lattice.size, dtype=torch.bool, device=observed.device)
    mask[observed] = True
    inputs = KrigingInputs(
        table,
        float(kernel.outputscale.detach()),
        float(likelihood.noise.detach()),
        mask.reshape(lattice.shape),
        tuple(_lengthscale_cells(kernel, lattice)),
        neighbours,
        tuple(_period_cells(kernel, lattice)),
    )
    return LocalKriging(inputs)


def _lengthscale_cells(kernel: Kernel, lattice: Lattice) -> list[float]:
    """Each axis's correlation length in cells (for neighbourhood shapes)."""
    cells = []
    for axis, h in enumerate(lattice.spacings):
        found = [f for f in stationary_factors(kernel) if _reads(f, axis)]
        if found:
            scales = found[0].lengthscale
            position = found[0].dims.index(axis) if found[0].dims and scales.numel() > 1 else 0
            scale = float(scales.reshape(-1)[position])
        else:
            scale = h
        cells.append(max(scale / h, 0.5))
    return cells


def _period_cells(kernel: Kernel, lattice: Lattice) -> list[float | None]:
    """Each axis's period in cells where its kernel has a periodic part (else None)."""
    cells: list[float | None] = []
    for axis, h in enumerate(lattice.spacings):
        found = [f for f in periodic_factors(kernel) if _reads(f, axis)]
        period = float(found[0].period_param.value) / h if found else 0
        cells.append(period if period >= 2 else None)
    return cells


def _reads(kernel: Kernel, column: int) -> bool:
    """Whether a kernel part reads the input column (parts over all columns read every one)."""
    return kernel.columns is None or column in kernel.columns
