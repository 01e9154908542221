"""Posterior variances on a grid by local kriging: blocks of cells condition on their nearest data.

With the hyperparameters fixed, conditioning on fewer observations can only raise a
posterior variance, so these variances are never below the exact ones and approach
them as the neighbourhood grows (they are exact once it holds every observation).
Blocks of cells share one neighbourhood and one Cholesky factor; all in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpkernels.lattice import c_strides

BLOCK_EDGE = 4  # cells per side of a block along axes longer than this
BATCH_BLOCKS = 64
MAX_TABLE_OFFSETS = 4096  # window positions up to which pair kernel values are tabulated


def _block_shape(shape: Sequence[int], lengthscale_cells: Sequence[float]) -> tuple[int, ...]:
    """Cells that share one neighbourhood: 4 along the two axes with the longest lengthscales
    (in cells), 2 along a third, 1 beyond."""
    order = sorted(range(len(shape)), key=lambda i: -lengthscale_cells[i])
    block = [1] * len(shape)
    for rank, axis in enumerate(order[:3]):
        block[axis] = min(BLOCK_EDGE if rank < 2 else 2, shape[axis])
    return tuple(block)


def _axis_offsets(
    block: int, radius: int, n: int, period: float | None, device: torch.device | None = None
) -> torch.Tensor:
    """Window offsets along one axis: [-radius, block + radius), and along a periodic axis
    the same run repeated one, two, ... periods away (where the cycle correlates again)."""
    base = torch.arange(-radius, block + radius, device=device)
    if not period:
        return base
    shifts = [round(k * period) for k in range(-math.ceil(n / period), math.ceil(n / period) + 1)]
    runs = torch.cat([base + s for s in shifts if abs(s) < n + block])
    return torch.unique(runs[(runs > -n) & (runs < n + block)])


def _radius(
    shape: Sequence[int],
    block: Sequence[int],
    lengthscale_cells: Sequence[float],
    cells: float,
    periods: Sequence[float | None],
) -> list[int]:
    """Window half-widths, proportional to the lengthscales, enclosing about `cells` cells."""
    lo, hi = 0.0, 1e6
    for _ in range(60):
        c = math.sqrt(lo * hi) if lo > 0 else hi / 1e3
        volume = math.prod(
            len(_axis_offsets(b, min(math.ceil(c * ell), n), n, p))
            for b, ell, n, p in zip(block, lengthscale_cells, shape, periods, strict=True)
        )
        lo, hi = (c, hi) if volume < cells else (lo, c)
    return [min(math.ceil(hi * ell), n) for ell, n in zip(lengthscale_cells, shape, strict=True)]


@dataclass(frozen=True)
class KrigingInputs:
    """What local kriging reads: the kernel (unit outputscale) at every non-negative lag of the
    grid (`kernels.lag_table`; any stationary kernel, isotropic ones included), outputscale
    and noise, a boolean grid of observed cells, each axis's lengthscale in cells (it shapes
    the neighbourhoods), how many observations each block of cells conditions on, and each
    axis's period in cells where its kernel has a periodic part (None elsewhere)."""

    table: torch.Tensor
    outputscale: float
    noise: float
    observed: torch.Tensor
    lengthscale_cells: tuple[float, ...]
    neighbours: int = 256
    period_cells: tuple[float | None, ...] | None = None


class LocalKriging:
    """Latent posterior variances of grid cells, each block of cells conditioned on its
    `neighbours` nearest observations (module docstring).

    Built once per conditioning: the block shape, the window of candidate offsets and the
    kernel between window positions are the same for every block, so they are tabulated
    here and every `variances` call (one per prediction block) only gathers and factorises.
    Along axes with a period the neighbourhood also reaches whole periods away, and
    neighbours are the observations that covary most with the block (not the nearest), so a
    forecast's variance sees the same season of earlier cycles.
    """

    def __init__(self, inputs: KrigingInputs) -> None:
        self.inputs = inputs
        observed = inputs.observed
        device = observed.device
        self.shape = tuple(observed.shape)
        self.table = inputs.table.detach().double()  # stationary: K[i, j] = table[|i - j|]
        self.scale, self.nugget = float(inputs.outputscale), float(inputs.noise)
        self.prior = self.scale * float(self.table.reshape(-1)[0])
        n_obs = int(observed.sum())
        self.neighbours = min(inputs.neighbours, n_obs)
        self.block = _block_shape(self.shape, inputs.lengthscale_cells)
        self.offsets, periodic = self._window(n_obs)
        self.inner = torch.cartesian_prod(
            *[torch.arange(b, device=device) for b in self.block]
        ).reshape(-1, len(self.shape))
        self.offset_table = (
            _pair_kernel(self.table, self.scale, self.offsets, self.offsets)
            if self.offsets.shape[0] <= MAX_TABLE_OFFSETS
            else None
        )
        self.inner_table = _pair_kernel(self.table, self.scale, self.offsets, self.inner)  # (W, T)
        # With a periodic axis, neighbours are the offsets that covary most with the block (the
        # same season of other cycles counts); this ranking is the same for every block.
        self.covariance_rank = -self.inner_table.max(1).values if periodic else None
        self.dims = torch.tensor(self.shape, device=device)
        self.block_t = torch.tensor(self.block, device=device)
        self.scales = torch.tensor(
            [max(e, 1e-6) for e in inputs.lengthscale_cells], device=device, dtype=torch.float64
        )
        self.eye = torch.eye(self.neighbours, dtype=torch.float64, device=device)

    def _window(self, n_obs: int) -> tuple[torch.Tensor, bool]:
        """Candidate offsets (W, d) around a block's first cell; whether any axis is periodic."""
        inputs, shape = self.inputs, self.shape
        periods = list(inputs.period_cells or [None] * len(shape))
        if self.neighbours == n_obs:  # every block sees the whole grid: exact variances
            radius, periods = list(shape), [None] * len(shape)
        else:
            budget = 3.0 * self.neighbours / max(n_obs / inputs.observed.numel(), 1e-3)
            radius = _radius(shape, self.block, inputs.lengthscale_cells, budget, periods)
        window = [
            _axis_offsets(b, r, n, p, inputs.observed.device)
            for b, r, n, p in zip(self.block, radius, shape, periods, strict=True)
        ]
        return torch.cartesian_prod(*window).reshape(-1, len(shape)), any(periods)

    def variances(self, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Latent posterior variance of the cells `targets` (flat C-order indices; all when
        None), on the grid flattened in C order, NaN where not asked."""
        device = self.inputs.observed.device
        out = torch.full(self.shape, float("nan"), dtype=torch.float64, device=device)
        for batch in torch.split(
            _block_starts(self.shape, self.block, targets, device), BATCH_BLOCKS
        ):
            cells, var = self._batch(batch)
            out[tuple(cells.unbind(-1))] = var
        return out.reshape(-1)

    def _neighbours(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For blocks starting at `batch` (B, d): the offset rows of their neighbours (B, k),
        and which of them are real observations (blocks near a corner see fewer than k)."""
        cand = batch[:, None, :] + self.offsets[None]  # (B, W, d)
        inside = ((cand >= 0) & (cand < self.dims)).all(-1)
        clipped = torch.minimum(cand.clamp_min(0), self.dims - 1)
        valid = inside & self.inputs.observed[tuple(clipped.unbind(-1))]
        if self.covariance_rank is not None:
            dist = self.covariance_rank.expand(batch.shape[0], -1)
        else:
            below = (batch[:, None, :] - cand).clamp_min(0)
            above = (cand - (batch[:, None, :] + self.block_t - 1)).clamp_min(0)
            dist = (((below + above).double() / self.scales) ** 2).sum(-1)
        dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
        dist, pick = torch.topk(dist, self.neighbours, dim=1, largest=False)
        return pick, torch.isfinite(dist)

    def _batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells (N, d) of the blocks starting at `batch` that lie on the grid, and their
        variances."""
        pick, usable = self._neighbours(batch)
        if self.offset_table is not None:
            k_nn = self.offset_table[pick[:, :, None], pick[:, None, :]]
        else:
            near = self.offsets[pick]
            k_nn = _pair_kernel(self.table, self.scale, near[:, :, None, :], near[:, None, :, :])
        k_tn = self.inner_table[pick]  # (B, k, T)
        if usable.all():
            k_nn.diagonal(dim1=1, dim2=2).add_(self.nugget)
        else:  # unit rows for the missing neighbours
            pair = usable[:, :, None] & usable[:, None, :]
            ones = torch.ones_like(usable, dtype=torch.float64)
            diagonal = torch.where(usable, torch.full_like(ones, self.nugget), ones)
            k_nn = torch.where(pair, k_nn, torch.zeros_like(k_nn)) + self.eye * diagonal[:, :, None]
            k_tn = torch.where(usable[:, :, None], k_tn, torch.zeros_like(k_tn))
        chol = torch.linalg.cholesky(k_nn)
        v = torch.linalg.solve_triangular(chol, k_tn, upper=False)
        var = (self.prior - (v * v).sum(1)).clamp_min(0.0)  # (B, T)
        cells = batch[:, None, :] + self.inner[None]  # (B, T, d)
        keep = (cells < self.dims).all(-1).reshape(-1)
        return cells.reshape(-1, len(self.shape))[keep], var.reshape(-1)[keep]


def _pair_kernel(
    table: torch.Tensor, scale: float, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Kernel between grid offsets a (..., d) and b (..., d), broadcast (all pairs for 2-D a, b).

    Lags beyond an axis's length only occur for positions off the grid, which the
    caller masks; they are clamped to stay inside the column.
    """
    if a.dim() == 2 and b.dim() == 2:
        a, b = a[:, None, :], b[None, :, :]
    lags = [
        (a[..., axis] - b[..., axis]).abs().clamp_max(n - 1) for axis, n in enumerate(table.shape)
    ]
    return scale * table[tuple(lags)]


def _block_starts(
    shape: Sequence[int], block: Sequence[int], targets: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """First cell (d coordinates) of every block holding a target (every block when None)."""
    counts = [math.ceil(n / b) for n, b in zip(shape, block, strict=True)]
    if targets is None:
        ids = torch.arange(math.prod(counts), device=device)
    else:
        coords = torch.unravel_index(targets, tuple(shape))
        per_axis = [c // b for c, b in zip(coords, block, strict=True)]
        ids = torch.unique(sum(c * s for c, s in zip(per_axis, c_strides(counts), strict=True)))
    starts = torch.stack(torch.unravel_index(ids, tuple(counts)), dim=1)
    return starts * torch.tensor(block, device=device)
