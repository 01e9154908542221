"""The exact gap block over cells missing along a whole axis (land in every month, a sensor
that never reported): one dense block per eigenvalue of that axis.

With M^-1 = (Q_a kron Q_r) D (Q_a kron Q_r)^T (axis a first, r the other axes) and C the
cells (every index of axis a) x L (a set of positions of the other axes), the gap block
restricted to C is (Q_a kron I) blockdiag_j(R D_j R^T) (Q_a kron I)^T with R = Q_r[L, :]:
n_a dense |L| x |L| blocks instead of one of (n_a |L|)^2 entries. Probing would see only a
few cells along the axis of such a gap, which is where its smooth modes lie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["CompleteLines", "complete_lines", "grid_coordinates"]

LINE_ENTRIES = 1 << 25  # n_a |L|^2 entries at most (256 MB of float64 factors)


def complete_lines(
    shape: Sequence[int], missing: torch.Tensor, entries: int = LINE_ENTRIES
) -> tuple[int, torch.Tensor] | None:
    """The axis along which the most cells are missing at every index, and those lines'
    positions in the grid of the other axes (C order); None when no line is complete or
    the blocks would exceed `entries`."""
    grid = torch.zeros(math.prod(shape), dtype=torch.bool, device=missing.device)
    grid[missing] = True
    grid = grid.reshape(*shape)
    best, best_cells = None, 0
    for axis, n in enumerate(shape):
        if n == 1 or len(shape) == 1:
            continue
        lines = torch.nonzero(grid.all(dim=axis).reshape(-1))[:, 0]
        count = lines.numel()
        if count * n > best_cells and n * count * count <= entries:
            best, best_cells = (axis, lines), count * n
    return best


class CompleteLines:
    """The exact gap block over complete lines along `axis`: solve, sample and log|.|."""

    def __init__(
        self,
        vectors: Sequence[torch.Tensor],
        inverse: torch.Tensor,
        axis: int,
        lines: torch.Tensor,
        position_of: torch.Tensor,
    ) -> None:
        shape = tuple(q.shape[0] for q in vectors)
        self.axis, self.size_along = axis, shape[axis]
        self.rotation = vectors[axis].double()  # Q_a
        rest = [q.double() for i, q in enumerate(vectors) if i != axis]
        rest_shape = [q.shape[0] for q in rest]
        rows = _kron_rows(rest, grid_coordinates(rest_shape, lines).unbind(1))  # R = Q_r[L, :]
        spectrum = inverse.double().reshape(*shape).movedim(axis, 0).reshape(shape[axis], -1)
        blocks = torch.stack([(rows * d) @ rows.T for d in spectrum])  # R D_j R^T
        self.factors = torch.linalg.cholesky(0.5 * (blocks + blocks.mT))
        self.inverses = torch.cholesky_inverse(self.factors).float()
        positions = position_of.reshape(*shape).movedim(axis, 0).reshape(shape[axis], -1)
        self.positions = positions[:, lines]  # (n_a, |L|) into the missing-cell list
        self.cells = self.positions.numel()

    def describe(self) -> str:
        lines = self.positions.shape[1]
        return (
            f"{self.cells} cells missing along the whole of axis {self.axis}: "
            f"{self.size_along} exact blocks of {lines}"
        )

    def solve(self, v: torch.Tensor, out: torch.Tensor) -> None:
        """out[C] = A_CC^-1 v[C], in float32 like the other blocks' apply."""
        rotated = self._along(self.rotation.T.float(), v[self.positions].float())
        out[self.positions] = self._along(
            self.rotation.float(), torch.matmul(self.inverses, rotated)
        ).to(out.dtype)

    def sample(self, u: torch.Tensor, out: torch.Tensor) -> None:
        """out[C] = (Q_a kron I) blockdiag(L_j) u[C]: covariance A_CC."""
        wide = torch.matmul(self.factors, u[self.positions].double())
        out[self.positions] = self._along(self.rotation, wide).to(out.dtype)

    def logdet(self) -> float:
        return float(2.0 * self.factors.diagonal(dim1=-2, dim2=-1).log().sum())

    @staticmethod
    def _along(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """matrix applied along the first dim of x (n_a, |L|, b)."""
        return (matrix @ x.reshape(x.shape[0], -1)).reshape(x.shape)


def grid_coordinates(shape: Sequence[int], flat: torch.Tensor) -> torch.Tensor:
    """(len(flat), d) integer coordinates of C-order flat cell indices."""
    coords, rest = [], flat
    for n in reversed(shape):
        coords.append(rest % n)
        rest = rest // n
    return torch.stack(coords[::-1], dim=1)


def _kron_rows(vectors: Sequence[torch.Tensor], coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows `coords` of kron(vectors): (len(coords[0]), prod of sizes)."""
    rows = vectors[0][coords[0]]
    for q, c in zip(vectors[1:], coords[1:], strict=True):
        rows = (rows[:, :, None] * q[c][:, None, :]).reshape(rows.shape[0], -1)
    return rows
