"""Preconditioners for CG: anything with `solve(v)` ~ A^-1 v.

- `PivotedCholeskyPreconditioner`, for K_hat + noise I when K_hat has no grid structure to
  invert: a rank-k pivoted Cholesky factor L (n x k) of K_hat needs only its diagonal and
  k of its columns. P = L L^T + noise I is then solved (Woodbury), has an exact
  log-determinant (determinant lemma), and can be sampled from, which is what CG,
  stochastic log-determinants and their gradients need.
- `CirculantPreconditioner`, for observations on a grid under any stationary kernel: the
  inverse of the doubled grid's circulant, restricted to the observed cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from gpkernels.solvers import rademacher

if TYPE_CHECKING:
    from gpkernels.structured import ToeplitzGrid


class Preconditioner(Protocol):
    """P^-1 applied to a block of vectors (n, b)."""

    def solve(self, v: torch.Tensor) -> torch.Tensor: ...


def pivoted_cholesky(
    diagonal: torch.Tensor,
    column: Callable[[int], torch.Tensor],
    rank: int,
    rel_tol: float = 1e-8,
) -> torch.Tensor:
    """Greedy rank-`rank` factor L with L L^T ~ K, from diag(K) and a `column(j)` callable.

    Each step takes the largest remaining diagonal entry as the pivot; it stops early
    once the remaining trace is below `rel_tol` of the original (K is then reproduced).
    """
    n = diagonal.shape[0]
    rank = min(rank, n)
    remaining = diagonal.clone()
    total = float(remaining.sum())
    factor = diagonal.new_zeros(n, rank)
    for j in range(rank):
        pivot = int(torch.argmax(remaining))
        pivot_value = float(remaining[pivot])
        if pivot_value <= 0 or float(remaining.clamp_min(0).sum()) <= rel_tol * total:
            return factor[:, :j]
        col = column(pivot) - factor[:, :j] @ factor[pivot, :j]
        col = col / math.sqrt(pivot_value)
        factor[:, j] = col
        remaining = remaining - col * col
        remaining[pivot] = 0.0
    return factor


class PivotedCholeskyPreconditioner:
    """P = L L^T + noise I, with L from `pivoted_cholesky`."""

    def __init__(self, factor: torch.Tensor, noise: float) -> None:
        self.factor = factor
        self.noise = noise
        k = factor.shape[1]
        eye = torch.eye(k, dtype=factor.dtype, device=factor.device)
        self._inner = torch.linalg.cholesky(noise * eye + factor.T @ factor)
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        return self.factor.shape[1]

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """P^-1 v by Woodbury: (v - L (noise I + L^T L)^-1 L^T v) / noise."""
        if self.rank == 0:
            return v / self.noise
        inner = torch.cholesky_solve(self.factor.T @ v, self._inner)
        return (v - self.factor @ inner) / self.noise

    def logdet(self) -> float:
        """log|P| = (n - k) log noise + log|noise I + L^T L|."""
        n = self.factor.shape[0]
        inner = 2.0 * float(self._inner.diagonal().log().sum())
        return (n - self.rank) * math.log(self.noise) + inner

    def power(self, v: torch.Tensor, exponent: float) -> torch.Tensor:
        """P^exponent v, through the thin eigendecomposition L L^T = U diag(s^2) U^T."""
        if self._eig is None:
            values, vectors = torch.linalg.eigh(self.factor.T @ self.factor)
            keep = values > 1e-12 * values.max().clamp_min(1e-300)
            values, vectors = values[keep], vectors[:, keep]
            self._eig = (self.factor @ vectors / values.sqrt(), values)
        basis, values = self._eig
        along = basis.T @ v
        scale = self.noise**exponent
        return scale * (v - basis @ along) + basis @ (
            ((values + self.noise) ** exponent)[:, None] * along
        )

    def sample(self, t: int, generator: torch.Generator) -> torch.Tensor:
        """t probes P^1/2 u with Rademacher u (n, t), so E[z z^T] = P; drawn on the CPU so seeds
        agree everywhere. Rademacher rather than Gaussian u: a lower-variance trace estimate."""
        return self.power(rademacher(self.factor.shape[0], t, generator, self.factor), 0.5)


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
        index = torch.unravel_index(self.observed, grid.grid_shape)
        full[(slice(None), *index)] = v.T.to(grid.table.dtype)
        dims = tuple(range(1, len(grid.grid_shape) + 1))
        solved = torch.fft.irfftn(
            torch.fft.rfftn(full, dim=dims) * self._inverse, s=grid.fft_shape, dim=dims
        )
        return solved[(slice(None), *index)].T.to(v.dtype)
