"""A block-diagonal preconditioner for the gap block A = (M^-1) restricted to the missing
cells of a grid (M = K_grid + noise I, Kronecker).

Why it works: M^-1 couples cells over a few cells only, and two gaps (connected sets of
missing cells) are separated by observed cells, so A is nearly block diagonal over the
gaps. Each diagonal block is the part of A that makes it ill-conditioned (the smooth modes
of a large gap), and a dense Cholesky of it captures them exactly.

The blocks' entries come from colour probing: with cells coloured by their index modulo
(2r + 1) along every axis, one full-grid application M^-1 p per colour gives every entry
within r cells of its diagonal (entries farther apart are dropped). That is (2r + 1)^d
applications per build, whatever the number of gaps; `PROBE_BUDGET` bounds it. Small gaps
are packed together into one block; a gap over `BLOCK_LIMIT` cells is cut into consecutive
chunks (a weaker, still valid preconditioner). Factors are float64 whatever the data's dtype;
the block inverses CG applies are float32, as that apply is bound by memory traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpkernels.gap_lines import CompleteLines, complete_lines, grid_coordinates
from gpkernels.solvers import lanczos
from gpkernels.structured import KroneckerEig

__all__ = ["GapPreconditioner", "gap_labels", "pack_blocks", "probe_radius"]

PROBE_BUDGET = 343  # full-grid applications per build: radius 8 in 2-D, 3 in 3-D
BLOCK_LIMIT = 4096  # cells per dense block (a 4,096 Cholesky is ~2e10 flops)
PACK_LIMIT = 512  # cells per block of small gaps packed together
PROBE_CHUNK = 1 << 24  # entries of one batch of probe vectors


def probe_radius(shape: Sequence[int], budget: int = PROBE_BUDGET) -> int:
    """The largest r with prod(min(2r + 1, n_axis)) <= budget (at least 1)."""
    radius = 1
    while _colours(shape, radius + 1) <= budget and any(2 * radius + 1 < n for n in shape):
        radius += 1
    return radius


def _colours(shape: Sequence[int], radius: int) -> int:
    count = 1
    for n in shape:
        count *= min(2 * radius + 1, n)
    return count


def gap_labels(shape: Sequence[int], missing: torch.Tensor) -> torch.Tensor:
    """For each missing cell (flat C-order indices, ascending), the smallest flat index of
    its gap: the connected set of missing cells it belongs to (neighbours along an axis).

    Minimum-label propagation with pointer jumping, vectorised over the grid."""
    size = 1
    for n in shape:
        size *= n
    sentinel = size
    labels = torch.full((size,), sentinel, dtype=torch.long, device=missing.device)
    labels[missing] = missing
    grid = labels.reshape(*shape)
    is_gap = grid < sentinel
    while True:
        best = grid.clone()
        for axis, n in enumerate(shape):
            if n == 1:
                continue
            ahead = grid.narrow(axis, 1, n - 1)
            behind = grid.narrow(axis, 0, n - 1)
            best.narrow(axis, 0, n - 1).copy_(torch.minimum(best.narrow(axis, 0, n - 1), ahead))
            best.narrow(axis, 1, n - 1).copy_(torch.minimum(best.narrow(axis, 1, n - 1), behind))
        flat = torch.where(is_gap, best, grid).reshape(-1)
        while True:  # a label is a cell of the same gap: follow labels to their roots
            jumped = flat[flat[missing]]
            if torch.equal(jumped, flat[missing]):
                break
            flat[missing] = jumped
        best = flat.reshape(*shape)
        if torch.equal(best, grid):
            return flat[missing]
        grid = best


def pack_blocks(
    labels: torch.Tensor, limit: int = BLOCK_LIMIT, pack: int = PACK_LIMIT
) -> list[torch.Tensor]:
    """Positions (into the missing-cell list) of each block: a gap of up to `limit` cells is
    one block, a larger one is cut into chunks of `limit`, and gaps under `pack` cells are
    packed together in order of their first cell, up to `pack` cells per block (a block's
    Cholesky costs its size cubed, so packing stays small)."""
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    blocks, packed, filled = [], [], 0
    for gap in order.split(counts.tolist()):
        if gap.numel() >= pack:
            blocks.extend(gap.split(limit))
            continue
        if filled + gap.numel() > pack:
            blocks.append(torch.cat(packed))
            packed, filled = [], 0
        packed.append(gap)
        filled += gap.numel()
    if packed:
        blocks.append(torch.cat(packed))
    return blocks


@dataclass
class _Block:
    positions: torch.Tensor  # into the missing-cell list
    factor: torch.Tensor  # float64 lower Cholesky factor L_b of the probed block
    inverse: torch.Tensor  # (L_b L_b^T)^-1 in float32: one matmul per solve, half the bytes


class GapPreconditioner:
    """P = blockdiag(L_b L_b^T) ~ A: solve, log-determinant and sampling (z = L u has
    covariance P), which preconditioned CG and its Lanczos log-determinant need. Cells
    missing along a whole axis get their exact block (gap_lines.py); the other gaps get
    probed dense blocks."""

    def __init__(
        self,
        eig: KroneckerEig,
        inverse: torch.Tensor,
        missing: torch.Tensor,
        budget: int = PROBE_BUDGET,
        limit: int = BLOCK_LIMIT,
    ) -> None:
        shape = eig.shape
        self.size = missing.numel()
        self.lines, rest = _split_complete_lines(eig, inverse, missing)
        self.radius = probe_radius(shape, budget)
        self.exact = rest.numel() <= _colours(shape, self.radius)  # then no entry is dropped
        self.blocks, self.jitter = [], 0.0
        if rest.numel():
            self._probe_blocks(eig, inverse, missing[rest], rest, limit)
        self.fresh_iterations: int | None = None  # CG iterations of its first probe solve

    def _probe_blocks(
        self,
        eig: KroneckerEig,
        inverse: torch.Tensor,
        cells: torch.Tensor,
        rest: torch.Tensor,
        limit: int,
    ) -> None:
        """Dense blocks over the gaps of `cells`, the missing cells at positions `rest`."""
        shape = eig.shape
        coords = grid_coordinates(shape, cells)
        columns, colour = _probed_columns(
            lambda v: eig.apply(v, inverse), shape, cells, self.radius, inverse
        )
        for positions in pack_blocks(gap_labels(shape, cells), limit):
            block = columns[positions][:, colour[positions]]
            if not self.exact:  # drop entries whose colour was shared by a nearer cell
                offsets = coords[positions, None, :] - coords[None, positions, :]
                near = (offsets.abs() <= self.radius).all(-1)
                block = torch.where(near, block, torch.zeros_like(block))
            factor, jitter = _shifted_cholesky(0.5 * (block + block.T))
            self.jitter = max(self.jitter, jitter)
            self.blocks.append(_Block(rest[positions], factor, _inverse(factor)))

    def describe(self) -> str:
        """One line for the diagnostics: blocks, probing radius, and any jitter needed."""
        parts = [] if self.lines is None else [self.lines.describe()]
        if self.blocks:
            largest = max(b.positions.numel() for b in self.blocks)
            parts.append(
                f"{len(self.blocks)} dense Cholesky block(s) (largest {largest} cells), "
                + ("exact" if self.exact else f"probed within {self.radius} cells")
            )
        text = "gap blocks of the full-grid Kronecker inverse: " + "; ".join(parts)
        if self.jitter == float("inf"):
            text += ", some blocks only diagonal (not positive definite with any shift)"
        elif self.jitter:
            text += f", shifted by up to {self.jitter:.0e} of a block's mean diagonal"
        return text

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """~P^-1 v for v of shape (m, b): a fixed symmetric positive definite matrix (P^-1
        computed in float32, within about 1e-5 of it: CG only needs a fixed one, and the
        log-determinant's bias is far below its probe noise), applied in float32."""
        out = torch.empty(v.shape, dtype=torch.float32, device=v.device)
        narrow = v.float()
        for b in self.blocks:
            out[b.positions] = b.inverse @ narrow[b.positions]
        if self.lines is not None:
            self.lines.solve(narrow, out)
        return out.to(v.dtype)

    def sample(self, u: torch.Tensor) -> torch.Tensor:
        """L u: from probes u with identity covariance, vectors with covariance P."""
        out = torch.empty(u.shape, dtype=torch.float64, device=u.device)
        wide = u.double()
        for b in self.blocks:
            out[b.positions] = b.factor @ wide[b.positions]
        if self.lines is not None:
            self.lines.sample(wide, out)
        return out.to(u.dtype)

    def logdet(self) -> float:
        """log|P|, exact from the factors."""
        blocks = float(sum(2.0 * b.factor.diagonal().log().sum() for b in self.blocks))
        return blocks + (0.0 if self.lines is None else self.lines.logdet())


def _split_complete_lines(
    eig: KroneckerEig, inverse: torch.Tensor, missing: torch.Tensor
) -> tuple[CompleteLines | None, torch.Tensor]:
    """The exact part over cells missing along a whole axis (None if there are none), and
    the positions of the other missing cells."""
    everything = torch.arange(missing.numel(), device=missing.device)
    found = complete_lines(eig.shape, missing)
    if found is None:
        return None, everything
    position_of = torch.full((math.prod(eig.shape),), -1, dtype=torch.long, device=missing.device)
    position_of[missing] = everything
    lines = CompleteLines(eig.vectors, inverse, *found, position_of)
    covered = torch.zeros(missing.numel(), dtype=torch.bool, device=missing.device)
    covered[lines.positions.reshape(-1)] = True
    return lines, everything[~covered]


def _inverse(factor: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 from the lower factor L by two float32 BLAS-3 products (LAPACK's potri is
    slow): a Gram matrix, so positive definite whatever the rounding; made symmetric."""
    narrow = factor.float()
    eye = torch.eye(factor.shape[0], dtype=narrow.dtype, device=factor.device)
    half = torch.linalg.solve_triangular(narrow, eye, upper=False)
    inverse = half.T @ half
    return 0.5 * (inverse + inverse.T)


def _shifted_cholesky(block: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cholesky factor of a probed block and the shift it needed, relative to its mean
    diagonal: dropped entries can leave a block indefinite, and then it is shifted by about
    four times its least eigenvalue (Lanczos), growing tenfold until it factorises; a shift only
    slows CG, it never changes a solution. Diagonal if nothing up to the mean diagonal works."""
    factor, info = torch.linalg.cholesky_ex(block)
    if int(info) == 0:
        return factor, 0.0
    scale = float(block.diagonal().mean())
    start = torch.ones(block.shape[0], 1, dtype=block.dtype, device=block.device)
    diagonal, off = lanczos(lambda v: block @ v, start, min(100, block.shape[0]))
    tridiagonal = torch.diag(diagonal[0]) + torch.diag(off[0], 1) + torch.diag(off[0], -1)
    least = float(torch.linalg.eigvalsh(tridiagonal)[0])  # above the true least eigenvalue
    relative = max(4.0 * -least / scale, 1e-6)
    eye = torch.eye(block.shape[0], dtype=block.dtype, device=block.device)
    while relative <= 1.0:
        factor, info = torch.linalg.cholesky_ex(block + relative * scale * eye)
        if int(info) == 0:
            return factor, relative
        relative *= 10.0
    return torch.diag(block.diagonal().clamp_min(scale).sqrt()), float("inf")


def _colouring(
    shape: Sequence[int], radius: int, missing: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Each cell's colour and the number of colours: cells of one colour lie over 2r cells
    apart along some axis; with no more gaps than colours, each missing cell is its own
    colour (so the probed entries are exact)."""
    size = 1
    for n in shape:
        size *= n
    if missing.numel() <= _colours(shape, radius):  # observed cells get no colour (-1)
        colour_of = torch.full((size,), -1, dtype=torch.long, device=missing.device)
        colour_of[missing] = torch.arange(missing.numel(), device=missing.device)
        return colour_of, missing.numel()
    colour_of = torch.zeros(size, dtype=torch.long, device=missing.device)
    every = grid_coordinates(shape, torch.arange(size, device=missing.device))
    for axis, n in enumerate(shape):
        period = min(2 * radius + 1, n)
        colour_of = colour_of * period + every[:, axis] % period
    return colour_of, _colours(shape, radius)


def _probed_columns(
    inverse_matmul: Callable[[torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    missing: torch.Tensor,
    radius: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M^-1 applied to one indicator vector per colour, at the missing cells (m, colours),
    and each missing cell's colour; colours go in batches of about `PROBE_CHUNK` entries."""
    size = 1
    for n in shape:
        size *= n
    colour_of, colours = _colouring(shape, radius, missing)
    batch = max(1, min(colours, PROBE_CHUNK // size))
    columns = []
    for first in range(0, colours, batch):
        count = min(batch, colours - first)
        probes = torch.zeros(size, count, dtype=like.dtype, device=like.device)
        hit = (colour_of >= first) & (colour_of < first + count)
        probes[hit.nonzero()[:, 0], colour_of[hit] - first] = 1.0
        columns.append(inverse_matmul(probes)[missing])
    return torch.cat(columns, dim=1).double(), colour_of[missing]
