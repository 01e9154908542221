"""Posterior variances on a grid by local kriging: blocks of cells condition on their nearest data.

With the hyperparameters fixed, conditioning on fewer observations can only raise a
posterior variance, so these variances are never below the exact ones and approach
them as the neighbourhood grows (they are exact once it holds every observation).
Blocks of cells share one neighbourhood and one Cholesky factor; all in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

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


def local_variances(
    table: torch.Tensor,
    outputscale: torch.Tensor,
    noise: torch.Tensor,
    observed: torch.Tensor,
    lengthscale_cells: Sequence[float],
    neighbours: int = 256,
    targets: torch.Tensor | None = None,
    period_cells: Sequence[float | None] | None = None,
) -> torch.Tensor:
    """Latent posterior variance of grid cells, flattened in C order (NaN where not asked).

    `table` holds the kernel (unit outputscale) at every non-negative lag of the grid
    (`kernels.lag_table`; any stationary kernel, isotropic ones included), `observed` a
    boolean grid of observed cells, `lengthscale_cells` each axis's lengthscale in
    cells (it shapes the neighbourhoods), `neighbours` how many observations each
    block of cells conditions on, `targets` the flat indices of the cells wanted (all when None).
    Along axes with a `period_cells` (a periodic kernel part) the neighbourhood also reaches
    whole periods away, and neighbours are the observations that covary most with the block
    (not the nearest), so a forecast's variance sees the same season of earlier cycles.
    """
    device = observed.device
    shape = tuple(observed.shape)
    table = table.detach().double()  # stationary: K[i, j] = table[|i - j|]
    scale, nugget = float(outputscale), float(noise)
    prior = scale * float(table.reshape(-1)[0])
    n_obs = int(observed.sum())
    neighbours = min(neighbours, n_obs)
    block = _block_shape(shape, lengthscale_cells)
    fraction = n_obs / observed.numel()
    periods = list(period_cells or [None] * len(shape))
    if neighbours == n_obs:  # every block sees the whole grid: exact variances
        radius, periods = list(shape), [None] * len(shape)
    else:
        budget = 3.0 * neighbours / max(fraction, 1e-3)
        radius = _radius(shape, block, lengthscale_cells, budget, periods)
    window = [
        _axis_offsets(b, r, n, p, device)
        for b, r, n, p in zip(block, radius, shape, periods, strict=True)
    ]
    offsets = torch.cartesian_prod(*window).reshape(-1, len(shape))
    inner = torch.cartesian_prod(*[torch.arange(b, device=device) for b in block]).reshape(
        -1, len(shape)
    )
    # Kernel values between window positions are the same for every block: tabulate them.
    offset_table = (
        _pair_kernel(table, scale, offsets, offsets)
        if offsets.shape[0] <= MAX_TABLE_OFFSETS
        else None
    )
    inner_table = _pair_kernel(table, scale, offsets, inner)  # (W, T)
    # With a periodic axis, neighbours are the offsets that covary most with the block (the
    # same season of other cycles counts); this ranking is the same for every block.
    covariance_rank = -inner_table.max(1).values if any(periods) else None
    dims = torch.tensor(shape, device=device)
    block_t = torch.tensor(block, device=device)
    scales = torch.tensor(
        [max(e, 1e-6) for e in lengthscale_cells], device=device, dtype=torch.float64
    )
    out = torch.full(shape, float("nan"), dtype=torch.float64, device=device)
    eye = torch.eye(neighbours, dtype=torch.float64, device=device)
    for batch in torch.split(_block_starts(shape, block, targets, device), BATCH_BLOCKS):
        cand = batch[:, None, :] + offsets[None]  # (B, W, d)
        inside = ((cand >= 0) & (cand < dims)).all(-1)
        clipped = torch.minimum(cand.clamp_min(0), dims - 1)
        valid = inside & observed[tuple(clipped.unbind(-1))]
        if covariance_rank is not None:
            dist = covariance_rank.expand(batch.shape[0], -1)
        else:
            below = (batch[:, None, :] - cand).clamp_min(0)
            above = (cand - (batch[:, None, :] + block_t - 1)).clamp_min(0)
            dist = (((below + above).double() / scales) ** 2).sum(-1)
        dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
        dist, pick = torch.topk(dist, neighbours, dim=1, largest=False)  # (B, k) offset rows
        usable = torch.isfinite(dist)
        if offset_table is not None:
            k_nn = offset_table[pick[:, :, None], pick[:, None, :]]
        else:
            near = offsets[pick]
            k_nn = _pair_kernel(table, scale, near[:, :, None, :], near[:, None, :, :])
        k_tn = inner_table[pick]  # (B, k, T)
        if usable.all():
            k_nn.diagonal(dim1=1, dim2=2).add_(nugget)
        else:  # blocks near a corner see fewer than k observations: unit rows for the rest
            pair = usable[:, :, None] & usable[:, None, :]
            diagonal = torch.where(usable, torch.full_like(dist, nugget), torch.ones_like(dist))
            k_nn = torch.where(pair, k_nn, torch.zeros_like(k_nn)) + eye * diagonal[:, :, None]
            k_tn = torch.where(usable[:, :, None], k_tn, torch.zeros_like(k_tn))
        chol = torch.linalg.cholesky(k_nn)
        v = torch.linalg.solve_triangular(chol, k_tn, upper=False)
        var = (prior - (v * v).sum(1)).clamp_min(0.0)  # (B, T)
        cells = batch[:, None, :] + inner[None]  # (B, T, d)
        keep = (cells < dims).all(-1).reshape(-1)
        flat_targets = cells.reshape(-1, len(shape))[keep]
        out[tuple(flat_targets.unbind(-1))] = var.reshape(-1)[keep]
    return out.reshape(-1)


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
        ids = torch.unique(sum(c * s for c, s in zip(per_axis, _strides(counts), strict=True)))
    starts = torch.stack(torch.unravel_index(ids, tuple(counts)), dim=1)
    return starts * torch.tensor(block, device=device)


def _strides(counts: Sequence[int]) -> list[int]:
    """C-order strides of an array of shape `counts`."""
    strides = [1] * len(counts)
    for axis in range(len(counts) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * counts[axis + 1]
    return strides
