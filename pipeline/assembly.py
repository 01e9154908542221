"""Output chunks assembled from tiles, so that chunks are laid out for readers, not tiles.

A chunk (or shard) of the store may span several tiles, or a tile several chunks. Each
chunk is written once, when every tile of the run touching it has arrived, and a tile
counts as finished (is journalled) once every chunk it touches is written: a finished
tile's cells are always in the store, so a resume recomputes only unfinished tiles. A
chunk that also holds cells of tiles finished by an earlier run is merged with what the
store has there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

ChunkKey = tuple[int, ...]
Region = tuple[slice, ...]


@dataclass
class ChunkWrite:
    """One output chunk, ready: its `region`, the values per output variable, and where
    this run's tiles cover it (None: everywhere; else the store's values stay elsewhere)."""

    region: Region
    values: dict[str, np.ndarray]
    covered: np.ndarray | None


@dataclass
class Completed:
    """What a tile's arrival completes: chunks to write, then tiles to journal (index ->
    diagnostics), finished once those chunks are written."""

    chunks: list[ChunkWrite] = field(default_factory=list)
    tiles: list[tuple[int, dict]] = field(default_factory=list)


def chunks_touching(region: Region, chunks: Sequence[int]) -> list[ChunkKey]:
    """The keys (chunk index per dim) of every chunk that `region` overlaps."""
    if any(s.stop <= s.start for s in region):
        return []
    spans = [
        range(s.start // c, math.ceil(s.stop / c)) for s, c in zip(region, chunks, strict=True)
    ]
    return list(itertools.product(*spans))


def write_order(regions: Mapping[int, Region], chunks: Sequence[int]) -> list[int]:
    """Tile indices grouped by the chunk their first cell lies in, then by index: the
    tiles of one chunk are computed together, so few chunks wait half-filled."""

    def key(index: int) -> tuple:
        corner = tuple(s.start // c for s, c in zip(regions[index], chunks, strict=True))
        return corner, index

    return sorted(regions, key=key)


class ChunkAssembler:
    """Collects the predictions of the tiles with output `regions` (index -> region) into
    the chunks of a grid of `shape`, for the output variables `names`."""

    def __init__(
        self,
        shape: Sequence[int],
        chunks: Sequence[int],
        regions: Mapping[int, Region],
        names: Iterable[str],
    ) -> None:
        self.shape = tuple(shape)
        self.chunks = tuple(chunks)
        self.names = tuple(names)
        self._chunks_of_tile = {i: set(chunks_touching(r, chunks)) for i, r in regions.items()}
        self._waiting: dict[ChunkKey, int] = {}
        for touched in self._chunks_of_tile.values():
            for key in touched:
                self._waiting[key] = self._waiting.get(key, 0) + 1
        self._tiles_of_chunk: dict[ChunkKey, list[int]] = {}
        for index, touched in self._chunks_of_tile.items():
            for key in touched:
                self._tiles_of_chunk.setdefault(key, []).append(index)
        self._buffers: dict[ChunkKey, dict[str, np.ndarray]] = {}
        self._covered: dict[ChunkKey, np.ndarray] = {}
        self._diagnostics: dict[int, dict] = {}

    def region_of(self, key: ChunkKey) -> Region:
        return tuple(
            slice(k * c, min((k + 1) * c, n))
            for k, c, n in zip(key, self.chunks, self.shape, strict=True)
        )

    @property
    def pending_cells(self) -> int:
        """Cells held in half-filled chunks (what the assembly costs in memory)."""
        return sum(c.size for c in self._covered.values())

    def add(
        self, index: int, region: Region, predictions: Mapping[str, np.ndarray], diagnostics: dict
    ) -> Completed:
        """Take tile `index`'s predictions over `region`; return what that completes."""
        completed = Completed()
        if not self._chunks_of_tile[index]:  # a tile without cells (on a new grid)
            completed.tiles.append((index, diagnostics))
            return completed
        self._diagnostics[index] = diagnostics
        for key in sorted(self._chunks_of_tile[index]):
            self._place(key, region, predictions)
            self._waiting[key] -= 1
            if self._waiting[key] == 0:
                completed.chunks.append(self._ready(key))
        completed.tiles = self._finished_tiles({self._key_of(c) for c in completed.chunks})
        return completed

    def _key_of(self, chunk: ChunkWrite) -> ChunkKey:
        return tuple(s.start // c for s, c in zip(chunk.region, self.chunks, strict=True))

    def _place(self, key: ChunkKey, region: Region, predictions: Mapping[str, np.ndarray]) -> None:
        """Copy the part of a tile's predictions that falls in chunk `key` into its buffer."""
        chunk = self.region_of(key)
        shape = tuple(s.stop - s.start for s in chunk)
        if key not in self._buffers:
            self._buffers[key] = {n: np.full(shape, np.nan, np.float32) for n in self.names}
            self._covered[key] = np.zeros(shape, bool)
        overlap = tuple(
            slice(max(r.start, c.start), min(r.stop, c.stop))
            for r, c in zip(region, chunk, strict=True)
        )
        into = _relative(overlap, chunk)
        source = _relative(overlap, region)
        for name in self.names:
            self._buffers[key][name][into] = predictions[name][source]
        self._covered[key][into] = True

    def _ready(self, key: ChunkKey) -> ChunkWrite:
        values = self._buffers.pop(key)
        covered = self._covered.pop(key)
        return ChunkWrite(self.region_of(key), values, None if covered.all() else covered)

    def _finished_tiles(self, written: set[ChunkKey]) -> list[tuple[int, dict]]:
        """Tiles all of whose chunks are now written, with their diagnostics."""
        finished = []
        for key in sorted(written):
            for index in self._tiles_of_chunk.pop(key):
                touched = self._chunks_of_tile[index]
                touched.discard(key)
                if not touched:
                    finished.append((index, self._diagnostics.pop(index)))
        return sorted(finished, key=lambda item: item[0])


def _relative(inner: Region, outer: Region) -> Region:
    """`inner` as slices into an array over `outer`."""
    return tuple(
        slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True)
    )
