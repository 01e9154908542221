"""Structured operators on regular grids; none of them forms an N x N matrix.

A separable stationary kernel on a regular grid is a Kronecker product of per-axis
Toeplitz matrices. Axes up to `DENSE_AXIS_LIMIT` points keep their factor as a small
dense matrix (fast BLAS, and eigh for exact inverses); longer axes multiply through
the FFT of the Toeplitz matrix's circulant embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DENSE_AXIS_LIMIT = 2048


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


AxisFactor = torch.Tensor | ToeplitzFFT


def axis_factor(column: torch.Tensor) -> AxisFactor:
    """Dense Toeplitz matrix for short axes, FFT operator for long ones."""
    return toeplitz(column) if column.shape[0] <= DENSE_AXIS_LIMIT else ToeplitzFFT(column)


def _apply_along(factor: AxisFactor, tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply `tensor` by `factor` along one axis (tensor: grid dims..., batch)."""
    moved = tensor.movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = factor.matmul(flat) if isinstance(factor, ToeplitzFFT) else factor @ flat
    return out.reshape(moved.shape).movedim(0, axis)


def kron_matmul(
    factors: Sequence[AxisFactor], v: torch.Tensor, shape: Sequence[int]
) -> torch.Tensor:
    """(F_1 kron ... kron F_d) @ v for v of shape (prod(shape), b), one axis at a time."""
    batch = v.shape[-1]
    tensor = v.reshape(*shape, batch)
    for axis, factor in enumerate(factors):
        tensor = _apply_along(factor, tensor, axis)
    return tensor.reshape(-1, batch)


@dataclass
class KroneckerEig:
    """Eigendecompositions of dense per-axis factors: K = (Q_1 kron ...)(L_1 kron ...)(...)^T."""

    vectors: list[torch.Tensor]
    values: list[torch.Tensor]
    shape: tuple[int, ...]

    @classmethod
    def of(cls, factors: Sequence[torch.Tensor]) -> KroneckerEig:
        vectors, values = [], []
        for factor in factors:
            if isinstance(factor, ToeplitzFFT):
                raise ValueError(
                    f"an axis of {factor.n} points is too long for an exact eigendecomposition "
                    f"(limit {DENSE_AXIS_LIMIT}): use smaller tiles"
                )
            # Eigendecomposition in float64: tiny eigenvalues of smooth kernels matter.
            lam, q = torch.linalg.eigh(factor.detach().double())
            vectors.append(q.to(factor.dtype))
            values.append(lam.clamp_min(0.0).to(factor.dtype))
        return cls(vectors, values, tuple(f.shape[0] for f in factors))

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


class GridKernel:
    """outputscale * kron(K_1, ..., K_d) on a full regular grid, applied to blocks of vectors."""

    def __init__(self, columns: Sequence[torch.Tensor], outputscale: torch.Tensor) -> None:
        self.columns = list(columns)
        self.factors = [axis_factor(c) for c in columns]
        self.shape = tuple(c.shape[0] for c in columns)
        self.size = 1
        for n in self.shape:
            self.size *= n
        self.outputscale = outputscale
        self.prior_variance = outputscale * torch.stack([c[0] for c in columns]).prod()

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self.outputscale * kron_matmul(self.factors, v, self.shape)

    def eig(self) -> KroneckerEig:
        return KroneckerEig.of(self.factors)

    def to(self, dtype: torch.dtype) -> GridKernel:
        return GridKernel([c.to(dtype) for c in self.columns], self.outputscale.to(dtype))


class ObservedGrid:
    """K_hat = S K_grid S^T + noise I: the exact kernel matrix of observations on grid cells.

    S selects the observed cells (flat indices `observed`) from the full grid, so
    gaps cost nothing and there is no interpolation error.
    """

    def __init__(
        self, grid: GridKernel | ToeplitzGrid, observed: torch.Tensor, noise: torch.Tensor
    ) -> None:
        self.grid = grid
        self.observed = observed
        self.noise = noise

    @property
    def n(self) -> int:
        return self.observed.shape[0]

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """S^T v: observed values placed on the full grid, zeros elsewhere."""
        full = v.new_zeros(self.grid.size, v.shape[-1])
        full[self.observed] = v
        return full

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self.grid.matmul(self.embed(v))[self.observed] + self.noise * v

    def to(self, dtype: torch.dtype) -> ObservedGrid:
        return ObservedGrid(self.grid.to(dtype), self.observed, self.noise.to(dtype))


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


class ToeplitzGrid:
    """outputscale * K on a full regular grid for any stationary kernel (isotropic ones too),
    K[i, j] = table[|i - j|]: matmul by one d-dimensional FFT of the circulant embedding."""

    def __init__(self, table: torch.Tensor, outputscale: torch.Tensor) -> None:
        self.table = table
        self.shape = tuple(table.shape)
        self.size = table.numel()
        self.outputscale = outputscale
        self.fft_shape = tuple(2 * n for n in self.shape)
        self.spectrum = torch.fft.rfftn(_symmetric_embedding(table))  # of the embedding

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """K @ v for v of shape (prod(shape), b), one FFT per column batch."""
        batch = v.shape[-1]
        grid = v.T.reshape(batch, *self.shape).to(self.table.dtype)
        dims = tuple(range(1, len(self.shape) + 1))
        spectrum = torch.fft.rfftn(grid, s=self.fft_shape, dim=dims) * self.spectrum
        full = torch.fft.irfftn(spectrum, s=self.fft_shape, dim=dims)
        cropped = full[(slice(None), *[slice(0, n) for n in self.shape])]
        return (self.outputscale * cropped.reshape(batch, -1).T).to(v.dtype)


class CirculantPreconditioner:
    """P^-1 = S (C + noise I)^-1 S^T for the observed-cell system S K S^T + noise I, with C the
    circulant of the doubled grid (the kernel wrapped on a torus twice the grid's size).

    Exact for a complete grid when the torus is large against the correlation length;
    with gaps it still captures the grid's spectrum, so CG needs far fewer iterations.
    Negative eigenvalues of the wrapped kernel (it need not be positive definite) are
    clamped to zero.
    """

    def __init__(self, grid: ToeplitzGrid, observed: torch.Tensor, noise: float) -> None:
        self.grid = grid
        self.observed = observed
        eigenvalues = float(grid.outputscale) * grid.spectrum.real.clamp_min(0.0)
        self._inverse = 1.0 / (eigenvalues + noise)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        grid, batch = self.grid, v.shape[-1]
        full = v.new_zeros(batch, *grid.fft_shape, dtype=grid.table.dtype)
        index = torch.unravel_index(self.observed, grid.shape)
        full[(slice(None), *index)] = v.T.to(grid.table.dtype)
        dims = tuple(range(1, len(grid.shape) + 1))
        solved = torch.fft.irfftn(
            torch.fft.rfftn(full, dim=dims) * self._inverse, s=grid.fft_shape, dim=dims
        )
        return solved[(slice(None), *index)].T.to(v.dtype)
