"""Cubic-convolution (Keys) interpolation onto a regular grid, stored as index + weight tensors.

Each input point gets 4 grid neighbours per dim (4^d per point), so W is never dense:
W v gathers, W^T u scatters, and W^T W for a small grid is summed pair by pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpkernels.lattice import c_strides

KEYS_A = -0.5


def keys_weights(t: torch.Tensor) -> torch.Tensor:
    """Weights of the 4 neighbours at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""
    d = torch.stack([t + 1, t, 1 - t, 2 - t], dim=-1).abs()
    a = KEYS_A
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return torch.where(d <= 1, near, far)


@dataclass
class Interpolation:
    """Sparse W (n x m): row i has `index[i]` grid cells (flat) with weights `weight[i]`."""

    index: torch.Tensor  # (n, 4^d) long
    weight: torch.Tensor  # (n, 4^d)
    grid_size: int
    axis_index: torch.Tensor  # (d, n, 4) long: the 4 neighbours' positions along each axis
    axis_weight: torch.Tensor  # (d, n, 4): their weights (W is their tensor product)

    @classmethod
    def build(
        cls,
        x: torch.Tensor,
        starts: Sequence[float],
        spacings: Sequence[float],
        shape: Sequence[int],
    ) -> Interpolation:
        """Weights of the points x (n, d) on the grid start + spacing * arange(shape) per dim.

        The grid must reach at least one cell below and two above every point.
        """
        per_dim_index, per_dim_weight = [], []
        for dim, (start, h, n) in enumerate(zip(starts, spacings, shape, strict=True)):
            s = (x[:, dim] - start) / h
            base = torch.floor(s)
            if bool((base < 1).any()) or bool((base > n - 3).any()):
                raise ValueError(
                    f"points along dim {dim} reach outside the interpolation grid "
                    f"[{start}, {start + h * (n - 1)}]: widen the grid bounds by 2 cells"
                )
            per_dim_weight.append(keys_weights(s - base))
            per_dim_index.append(base.long()[:, None] + torch.arange(-1, 3, device=x.device))
        strides = c_strides(shape)
        indices, weights = [], []
        for combo in itertools.product(range(4), repeat=len(shape)):
            flat = sum(per_dim_index[d][:, c] * strides[d] for d, c in enumerate(combo))
            w = per_dim_weight[0][:, combo[0]]
            for d in range(1, len(shape)):
                w = w * per_dim_weight[d][:, combo[d]]
            indices.append(flat)
            weights.append(w)
        total = 1
        for n in shape:
            total *= n
        return cls(
            torch.stack(indices, 1),
            torch.stack(weights, 1),
            total,
            torch.stack(per_dim_index),
            torch.stack(per_dim_weight),
        )

    def rows(self, selection: torch.Tensor) -> Interpolation:
        """The interpolation of a subset of the points (a boolean mask or indices)."""
        return Interpolation(
            self.index[selection],
            self.weight[selection],
            self.grid_size,
            self.axis_index[:, selection],
            self.axis_weight[:, selection],
        )

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """W v for v (m, b) -> (n, b)."""
        return (v[self.index] * self.weight[..., None]).sum(1)

    def transpose_matmul(self, u: torch.Tensor) -> torch.Tensor:
        """W^T u for u (n, b) -> (m, b)."""
        out = u.new_zeros(self.grid_size, u.shape[1])
        contributions = (self.weight[..., None] * u[:, None, :]).reshape(-1, u.shape[1])
        return out.index_add_(0, self.index.reshape(-1), contributions)

    def gram(self, dtype: torch.dtype) -> torch.Tensor:
        """W^T W as a dense (m, m) matrix (for grids small enough to hold densely)."""
        gram = torch.zeros(self.grid_size * self.grid_size, dtype=dtype, device=self.index.device)
        pair_index = self.index[:, :, None] * self.grid_size + self.index[:, None, :]
        pair_weight = (self.weight[:, :, None] * self.weight[:, None, :]).to(dtype)
        gram.index_add_(0, pair_index.reshape(-1), pair_weight.reshape(-1))
        return gram.reshape(self.grid_size, self.grid_size)
