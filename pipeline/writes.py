"""Who writes the output's chunks, and the driver's side of each tile result; either
way a tile is journalled only once its cells are in the store.

- `WorkerWrites`: each output chunk lies in exactly one tile's core and tiles do not
  overlap, so every task writes its own chunks straight to the store (no two tasks share
  a chunk) and the driver only journals.
- `AssembledWrites`: tiles overlap (blending) or chunks span tiles: the driver blends
  and assembles the results into chunks and writes each once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.assembly import ChunkAssembler, ChunkWrite
from pipeline.blend import Blender
from pipeline.journal import record_tile
from pipeline.storage import Location
from pipeline.store import OutputWriter
from pipeline.tiling import TileResult
from pipeline.work import TileWork


class WorkerWrites:
    """Tasks wrote their chunks themselves: each result is only journalled."""

    def __init__(self, store: Location) -> None:
        self.store = store
        # the driver's traffic: none, the results carry diagnostics only
        self.chunks_written = self.bytes_received = self.bytes_written = 0

    def add(self, result: TileResult) -> int:
        """Journal the tile; returns the cells it finished."""
        record_tile(self.store, result.tile.index, result.diagnostics)
        return math.prod(result.tile.core_shape)


def workers_can_write(
    shape: Sequence[int], tile: Sequence[int], chunks: Sequence[int], overlapping: bool
) -> bool:
    """Whether every output chunk lies in exactly one tile core (each core edge is a
    chunk edge) and tiles do not overlap, so that tasks can write their own chunks."""
    return not overlapping and all(
        t >= n or t % c == 0 for n, t, c in zip(shape, tile, chunks, strict=True)
    )


def write_own_chunks(work: TileWork, result: TileResult) -> TileResult:
    """On a worker: write the tile's predictions over its core (whole chunks, none shared
    with another task) to `work.writes_to`; the result then carries no predictions."""
    chunk = ChunkWrite(result.tile.core, result.predictions, None)
    OutputWriter(work.writes_to).write(chunk)
    return TileResult(result.tile, {}, result.diagnostics)


class AssembledWrites:
    """Takes each tile's result and writes what it completes to the store at `store`."""

    def __init__(self, store: Location, assembler: ChunkAssembler, blender: Blender | None) -> None:
        self.store = store
        self.assembler = assembler
        self.blender = blender
        self.output = OutputWriter(store)
        # the driver's traffic: chunks and bytes it wrote, bytes of results it received
        self.chunks_written = self.bytes_received = self.bytes_written = 0

    def add(self, result: TileResult) -> int:
        """Write and journal what `result` completes; returns the cells it finished."""
        self.bytes_received += sum(v.nbytes for v in result.predictions.values())
        if self.blender is None:
            cores = [(result.tile, result.predictions, result.diagnostics)]
        else:
            cores = self.blender.add(result.tile, result.predictions, result.diagnostics)
        cells = 0
        for core, predictions, diagnostics in cores:
            completed = self.assembler.add(core.index, core.core, predictions, diagnostics)
            for chunk in completed.chunks:
                self.output.write(chunk)
                self.bytes_written += sum(v.nbytes for v in chunk.values.values())
            self.chunks_written += len(completed.chunks)
            for index, finished in completed.tiles:
                record_tile(self.store, index, finished)
            cells += math.prod(core.core_shape)
        return cells
