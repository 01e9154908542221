"""Structured operators on regular grids, behind one small protocol; none forms an N x N matrix.

`StructuredOperator`: `shape`, `dtype`, `device`, `matmul(block)`, `diagonal()`, with a
default `solve` (preconditioned CG) and a default `logdet` (stochastic Lanczos quadrature)
that a class overrides where its structure makes them cheap:

- `ToeplitzFactor`: one axis of a stationary kernel; a small dense matrix up to
  `DENSE_AXIS_LIMIT` points (fast BLAS), the FFT of its circulant embedding beyond.
- `Kronecker`: outputscale kron(T_1, ..., T_d) (+ a shift) on a full grid, solved and
  log-determined exactly through the per-axis eigendecompositions.
- `ToeplitzGrid`: any stationary kernel (isotropic ones too) on a full grid, multiplied by
  one d-dimensional FFT of its circulant embedding.
- `ObservedGrid`: S K_grid S^T + noise I, the exact kernel matrix of observations on grid
  cells (`ongrid.ObservedKronecker` overrides its solve by the gap complement).
The interpolated W K_UU W^T + noise I is `scattered.InterpolatedKernel`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gpkernels.diagnostics import SolveReport
from gpkernels.solvers import pcg, slq_trace_log

if TYPE_CHECKING:
    from gpkernels.preconditioners import Preconditioner

DENSE_AXIS_LIMIT = 2048  # axes up to this many points multiply densely, longer ones by FFT
EIG_AXIS_LIMIT = 8192  # longest axis whose eigendecomposition (O(n^3), dense) is attempted


class StructuredOperator(ABC):
    """A symmetric positive (semi-)definite n x n matrix known by its products with blocks."""

    size: int
    label = "CG"  # names the operator in a non-convergence warning

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        """The operator times `block` (n, b)."""

    @abstractmethod
    def diagonal(self) -> torch.Tensor:
        """The operator's diagonal (n,)."""

    def solve(
        self,
        rhs: torch.Tensor,
        preconditioner: Preconditioner | None = None,
        tol: float = 1e-6,
        max_iter: int = 1000,
    ) -> tuple[torch.Tensor, SolveReport]:
        """The operator's inverse times `rhs` (n, b), by preconditioned CG, and how it went."""
        result = pcg(
            self.matmul,
            rhs,
            preconditioner.solve if preconditioner is not None else None,
            tol,
            max_iter,
            label=self.label,
        )
        return result.solution, result.report()

    def logdet(self, probes: torch.Tensor, steps: int) -> torch.Tensor:
        """log det by stochastic Lanczos quadrature from Rademacher `probes` (n, t)."""
        return slq_trace_log(self.matmul, probes, steps)


def toeplitz(column: torch.Tensor) -> torch.Tensor:
    """The symmetric Toeplitz matrix whose first column is `column` (differentiable)."""
    n = column.shape[0]
    idx = torch.arange(n, device=column.device)
    return column[(idx[:, None] - idx[None, :]).abs()]


class ToeplitzFFT:
    """Symmetric Toeplitz matmul in O(n log n) by the FFT of its circulant embedding."""

    def __init__(self, column: torch.Tensor) -> None:
        self.n = column.shape[0]
        embedded = torch.cat([column, column.new_zeros(1), column[1:].flip(0)])
        self.spectrum = torch.fft.rfft(embedded)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """T @ v for v of shape (n, b)."""
        size = 2 * self.n
        out = torch.fft.irfft(
            torch.fft.rfft(v, n=size, dim=0) * self.spectrum[:, None], n=size, dim=0
        )
        return out[: self.n]


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at zero) and eigenvectors of a symmetric matrix, computed in
    float64 (tiny eigenvalues of smooth kernels matter) and returned in its dtype."""
    lam, q = torch.linalg.eigh(matrix.detach().double())
    return lam.clamp_min(0.0).to(matrix.dtype), q.to(matrix.dtype)


class ToeplitzFactor(StructuredOperator):
    """One axis's symmetric Toeplitz matrix from its first column: held densely up to
    `DENSE_AXIS_LIMIT` points, multiplied by FFT beyond; the choice is this class's alone."""

    def __init__(self, column: torch.Tensor) -> None:
        self.column = column
        self.size = column.shape[0]
        self._dense = toeplitz(column) if self.size <= DENSE_AXIS_LIMIT else None
        self._fft = None if self._dense is not None else ToeplitzFFT(column)

    @property
    def dtype(self) -> torch.dtype:
        return self.column.dtype

    @property
    def device(self) -> torch.device:
        return self.column.device

    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        return self._dense @ block if self._fft is None else self._fft.matmul(block)

    def diagonal(self) -> torch.Tensor:
        return self.column[:1].expand(self.size)

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues and eigenvectors (float64 eigh of the dense matrix, O(n^3) once)."""
        if self.size > EIG_AXIS_LIMIT:
            raise ValueError(
                f"an axis of {self.size} points is too long for an eigendecomposition "
                f"(limit {EIG_AXIS_LIMIT}): use smaller tiles"
            )
        return _eigh(self._dense if self._dense is not None else toeplitz(self.column))


def _apply_along(factor: StructuredOperator | torch.Tensor, tensor: torch.Tensor, axis: int):  # noqa: ANN202
    """Multiply `tensor` by `factor` along one axis (tensor: grid dims..., batch)."""
    moved = tensor.movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return factor.matmul(flat).reshape(moved.shape).movedim(0, axis)


def kron_matmul(
    factors: Sequence[StructuredOperator | torch.Tensor], v: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """(F_1 kron ... kron F_d) @ v for v of shape (prod(shape), b), one axis at a time; each
    factor a dense matrix or an operator."""
    batch = v.shape[-1]
    tensor = v.reshape(*shape, batch)
    for axis, factor in enumerate(factors):
        tensor = _apply_along(factor, tensor, axis)
    return tensor.reshape(-1, batch)


@dataclass
class KroneckerEig:
    """Eigendecompositions of per-axis factors: K = (Q_1 kron ...)(L_1 kron ...)(...)^T."""

    vectors: list[torch.Tensor]
    values: list[torch.Tensor]
    shape: tuple[int, ...]

    def eigenvalues(self) -> torch.Tensor:
        """All prod(shape) eigenvalues of the Kronecker product, in grid (C) order."""
        out = self.values[0]
        for lam in self.values[1:]:
            out = torch.outer(out, lam).reshape(-1)
        return out

    def apply(self, v: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        """Q diag(spectrum) Q^T v: any function of the matrix that acts on its eigenvalues."""
        rotated = kron_matmul([q.T for q in self.vectors], v, self.shape)
        return kron_matmul(self.vectors, rotated * spectrum[:, None], self.shape)

    def diagonal(self, spectrum: torch.Tensor) -> torch.Tensor:
        """diag(Q diag(spectrum) Q^T), exactly, through the squared eigenvectors."""
        squares = [q * q for q in self.vectors]
        return kron_matmul(squares, spectrum[:, None], self.shape)[:, 0]


class Kronecker(StructuredOperator):
    """outputscale * kron(T_1, ..., T_d) + shift I on a full regular grid (shift 0 unless
    `shifted`); solve and logdet are exact through the per-axis eigendecompositions."""

    def __init__(
        self,
        columns: Sequence[torch.Tensor],
        outputscale: torch.Tensor,
        shift: torch.Tensor | None = None,
    ) -> None:
        self.columns = list(columns)
        self.factors = [ToeplitzFactor(c) for c in self.columns]
        self.grid_shape = tuple(c.shape[0] for c in self.columns)
        self.size = 1
        for n in self.grid_shape:
            self.size *= n
        self.outputscale = outputscale
        self.shift = shift
        self.prior_variance = outputscale * torch.stack([c[0] for c in self.columns]).prod()
        self._eig: KroneckerEig | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.columns[0].dtype

    @property
    def device(self) -> torch.device:
        return self.columns[0].device

    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        out = self.outputscale * kron_matmul(self.factors, block, self.grid_shape)
        return out if self.shift is None else out + self.shift * block

    def diagonal(self) -> torch.Tensor:
        value = self.prior_variance if self.shift is None else self.prior_variance + self.shift
        return value.expand(self.size)

    def eig(self) -> KroneckerEig:
        """The unit-scale factors' eigendecompositions (computed once)."""
        if self._eig is None:
            pairs = [f.eigh() for f in self.factors]
            vectors, values = [q for _, q in pairs], [lam for lam, _ in pairs]
            self._eig = KroneckerEig(vectors, values, self.grid_shape)
        return self._eig

    def spectrum(self) -> torch.Tensor:
        """The operator's eigenvalues, in the order of `eig().eigenvalues()`."""
        values = self.outputscale * self.eig().eigenvalues()
        return values if self.shift is None else values + self.shift

    def shifted(self, shift: torch.Tensor) -> Kronecker:
        """The same grid kernel plus shift I (e.g. the noise on every cell), sharing the
        factors and their eigendecompositions."""
        out = Kronecker(self.columns, self.outputscale, shift)
        out._eig = self.eig()
        return out

    def solve(
        self,
        rhs: torch.Tensor,
        preconditioner: Preconditioner | None = None,
        tol: float = 1e-6,
        max_iter: int = 1000,
    ) -> tuple[torch.Tensor, SolveReport]:
        """Exact: Q diag(1 / spectrum) Q^T rhs (no iterations; the arguments are not needed)."""
        return self.eig().apply(rhs, 1.0 / self.spectrum()), SolveReport(0, 0.0, True)

    def logdet(self, probes: torch.Tensor | None = None, steps: int = 0) -> torch.Tensor:
        """Exact: the sum of the log eigenvalues."""
        return self.spectrum().log().sum()

    def to(self, dtype: torch.dtype) -> Kronecker:
        shift = None if self.shift is None else self.shift.to(dtype)
        return Kronecker([c.to(dtype) for c in self.columns], self.outputscale.to(dtype), shift)


def _symmetric_embedding(table: torch.Tensor) -> torch.Tensor:
    """The first column of the circulant (2n_1 x 2n_2 x ...) holding a multilevel Toeplitz
    matrix whose kernel is even along every axis: lags 0..n-1, a zero, then n-1..1."""
    out = table
    for axis in range(table.dim()):
        n = table.shape[axis]
        zero_shape = list(out.shape)
        zero_shape[axis] = 1
        tail = out.narrow(axis, 1, n - 1).flip(axis)
        out = torch.cat([out, out.new_zeros(zero_shape), tail], dim=axis)
    return out


class ToeplitzGrid(StructuredOperator):
    """outputscale * K on a full regular grid for any stationary kernel (isotropic ones too),
    K[i, j] = table[|i - j|]: matmul by one d-dimensional FFT of the circulant embedding."""

    def __init__(self, table: torch.Tensor, outputscale: torch.Tensor) -> None:
        self.table = table
        self.grid_shape = tuple(table.shape)
        self.size = table.numel()
        self.outputscale = outputscale
        self.fft_shape = tuple(2 * n for n in self.grid_shape)
        self.spectrum = torch.fft.rfftn(_symmetric_embedding(table))  # of the embedding

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def device(self) -> torch.device:
        return self.table.device

    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        """K @ v for v of shape (prod(shape), b), one FFT per column batch."""
        batch = block.shape[-1]
        grid = block.T.reshape(batch, *self.grid_shape).to(self.table.dtype)
        dims = tuple(range(1, len(self.grid_shape) + 1))
        spectrum = torch.fft.rfftn(grid, s=self.fft_shape, dim=dims) * self.spectrum
        full = torch.fft.irfftn(spectrum, s=self.fft_shape, dim=dims)
        cropped = full[(slice(None), *[slice(0, n) for n in self.grid_shape])]
        return (self.outputscale * cropped.reshape(batch, -1).T).to(block.dtype)

    def diagonal(self) -> torch.Tensor:
        return (self.outputscale * self.table.reshape(-1)[0]).expand(self.size)

    def to(self, dtype: torch.dtype) -> ToeplitzGrid:
        return ToeplitzGrid(self.table.to(dtype), self.outputscale.to(dtype))


class ObservedGrid(StructuredOperator):
    """K_hat = S K_grid S^T + noise I: the exact kernel matrix of observations on grid cells.

    S selects the observed cells (flat indices `observed`) from the full grid, so
    gaps cost nothing and there is no interpolation error.
    """

    def __init__(
        self, grid: Kronecker | ToeplitzGrid, observed: torch.Tensor, noise: torch.Tensor
    ) -> None:
        self.grid = grid
        self.observed = observed
        self.noise = noise
        self.size = observed.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.grid.dtype

    @property
    def device(self) -> torch.device:
        return self.grid.device

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """S^T v: observed values placed on the full grid, zeros elsewhere."""
        full = v.new_zeros(self.grid.size, v.shape[-1])
        full[self.observed] = v
        return full

    def matmul(self, block: torch.Tensor) -> torch.Tensor:
        return self.grid.matmul(self.embed(block))[self.observed] + self.noise * block

    def diagonal(self) -> torch.Tensor:
        return self.grid.diagonal()[self.observed] + self.noise

    def to(self, dtype: torch.dtype) -> ObservedGrid:
        """The same operator in `dtype` (of the same class)."""
        return type(self)(self.grid.to(dtype), self.observed, self.noise.to(dtype))
