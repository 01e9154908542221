"""The reducer: overlapping tile predictions blended into output chunks without seams.

With a blend margin b, each tile predicts its core grown by b cells per side. Across
every edge between two cores the two tiles' predictions overlap on 2b cells, where
their weights ramp linearly from 0 to 1 and sum to one (a partition of unity, product
over dims); at the grid's own edges nothing ramps. A cell's prediction is the weighted
mixture of the tiles covering it:

    mean = sum_i w_i m_i,    var = sum_i w_i (s_i^2 + m_i^2) - mean^2

A mixture rather than a product of experts: on a 4 x 64 x 64 draw with 8-cell blends
the mixture and the generalised product of experts (weights summing to one) scored the
same on the gaps (RMSE 0.3266 both, 95% coverage 0.964 and 0.963); the mixture also
widens the variance where tiles disagree, while a plain product (or BCM) would count
the observations that overlapping tiles share twice.

A chunk (= a tile's core) is written once every tile whose prediction touches it has
arrived; contributions are summed in tile order, so results are bitwise reproducible
whatever order Ray returns tiles in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from pipeline.store import std_name
from pipeline.tiling import Tile


def ramp(region: slice, core: slice, size: int, margin: int, wraps: bool = False) -> np.ndarray:
    """1-D weights of a tile over its predicted `region` along one dim: 1 inside the core,
    a linear ramp across each core edge that has a neighbour (always, on a wrapped dim),
    0 beyond."""
    positions = np.arange(region.start, region.stop) + 0.5
    weight = np.ones(positions.size)
    if margin == 0:
        return weight
    if wraps or core.start > 0:
        weight *= np.clip((positions - (core.start - margin)) / (2 * margin), 0.0, 1.0)
    if wraps or core.stop < size:
        weight *= np.clip(((core.stop + margin) - positions) / (2 * margin), 0.0, 1.0)
    return weight


def weights(
    tile: Tile, shape: Sequence[int], margins: Sequence[int], wrap: Sequence[bool] | None = None
) -> np.ndarray:
    """A tile's weights over its predicted region (product of the per-dim ramps)."""
    wrap = wrap or (False,) * len(shape)
    out = np.ones(())
    for region, core, size, margin, wraps in zip(
        tile.output_region, tile.core, shape, margins, wrap, strict=True
    ):
        out = np.multiply.outer(out, ramp(region, core, size, margin, wraps))
    return out


def _chunks_under(tile: Tile, tiles: Sequence[Tile]) -> list[int]:
    """Indices of the tiles whose cores the tile's predicted region touches (the plan is a
    regular C-order tiling, so they are found from the core size, not by search; regions
    past the end of a wrapped dim continue at its start)."""
    size = tiles[0].core_shape
    grid = _grid_shape(tiles)
    counts = [math.ceil(n / s) for n, s in zip(grid, size, strict=True)]
    positions = [
        sorted({(i % n) // s for i in range(region.start, region.stop)})
        for region, s, n in zip(tile.output_region, size, grid, strict=True)
    ]
    return [int(np.ravel_multi_index(pos, counts)) for pos in itertools.product(*positions)]


def _grid_shape(tiles: Sequence[Tile]) -> tuple[int, ...]:
    return tuple(s.stop for s in tiles[-1].core)


def _overlap(
    region: tuple[slice, ...], core: tuple[slice, ...], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where a predicted region meets a core: the box in the region's (possibly wrapped)
    coordinates, and the same cells relative to the core."""
    in_region, in_core = [], []
    for r, c, n in zip(region, core, shape, strict=True):
        for shift in (0, -n, n):  # a region past either end of a wrapped dim
            lo, hi = max(r.start, c.start + shift), min(r.stop, c.stop + shift)
            if lo < hi:
                in_region.append(slice(lo - r.start, hi - r.start))
                in_core.append(slice(lo - c.start - shift, hi - c.start - shift))
                break
        else:
            return None
    return tuple(in_region), tuple(in_core)


class Blender:
    """Collects tiles' predictions and hands back each chunk once it is complete."""

    def __init__(
        self,
        tiles: Sequence[Tile],
        shape: Sequence[int],
        margins: Sequence[int],
        variables: Sequence[str],
        pending_chunks: set[int],
        wrap: Sequence[bool] | None = None,
    ) -> None:
        self.tiles = {t.index: t for t in tiles}
        self.shape, self.margins, self.variables = tuple(shape), tuple(margins), tuple(variables)
        self.wrap = tuple(wrap) if wrap else (False,) * len(self.shape)
        self.waiting: dict[int, set[int]] = {c: set() for c in pending_chunks}
        self.touches: dict[int, list[int]] = {}  # tile -> the pending chunks it contributes to
        for tile in tiles:
            self.touches[tile.index] = [c for c in _chunks_under(tile, tiles) if c in self.waiting]
            for chunk in self.touches[tile.index]:
                self.waiting[chunk].add(tile.index)
        self.parts: dict[int, dict[int, tuple]] = {c: {} for c in pending_chunks}
        self.diagnostics: dict[int, dict] = {}

    def tiles_needed(self) -> set[int]:
        """Every tile whose prediction some unwritten chunk still needs."""
        return set().union(*self.waiting.values()) if self.waiting else set()

    def add(
        self, tile: Tile, predictions: dict[str, np.ndarray], diagnostics: dict
    ) -> list[tuple[Tile, dict[str, np.ndarray], dict]]:
        """Take one tile's predictions; return the chunks this completed, ready to write."""
        if tile.index in self.waiting:
            self.diagnostics[tile.index] = diagnostics
        w = weights(tile, self.shape, self.margins, self.wrap)
        ready = []
        for chunk in self.touches[tile.index]:
            needs = self.waiting[chunk]
            local, in_chunk = _overlap(tile.output_region, self.tiles[chunk].core, self.shape)
            part = {}
            for var in self.variables:
                mean, std = predictions[var][local], predictions[std_name(var)][local]
                weight = w[local]
                part[var] = (weight * mean, weight * (std.astype(np.float64) ** 2 + mean**2))
            self.parts[chunk][tile.index] = (in_chunk, part)
            needs.discard(tile.index)
            if not needs:
                ready.append(chunk)
        out = []
        for chunk in ready:
            del self.waiting[chunk]
            out.append((self.tiles[chunk], self._combine(chunk), self.diagnostics.pop(chunk)))
        return out

    def _combine(self, chunk: int) -> dict[str, np.ndarray]:
        core_shape = self.tiles[chunk].core_shape
        parts = self.parts.pop(chunk)
        out = {}
        for var in self.variables:
            first, second = np.zeros(core_shape), np.zeros(core_shape)
            for index in sorted(parts):  # a fixed order: bitwise reproducible sums
                box, part = parts[index]
                first[box] += part[var][0]
                second[box] += part[var][1]
            out[var] = first
            out[std_name(var)] = np.sqrt(np.maximum(second - first**2, 0.0))
        return out
