"""The driver's side of tile results: blended where tiles overlap, assembled into the
store's chunks, written, and only then journalled, so a journalled tile is in the store."""

from __future__ import annotations

import math

from pipeline.assembly import ChunkAssembler
from pipeline.blend import Blender
from pipeline.journal import record_tile
from pipeline.storage import Location
from pipeline.store import OutputWriter
from pipeline.tiling import TileResult


class ResultWriter:
    """Takes each tile's result and writes what it completes to the store at `store`."""

    def __init__(self, store: Location, assembler: ChunkAssembler, blender: Blender | None) -> None:
        self.store = store
        self.assembler = assembler
        self.blender = blender
        self.output = OutputWriter(store)
        self.chunks_written = 0

    def add(self, result: TileResult) -> int:
        """Write and journal what `result` completes; returns the cells it finished."""
        if self.blender is None:
            cores = [(result.tile, result.predictions, result.diagnostics)]
        else:
            cores = self.blender.add(result.tile, result.predictions, result.diagnostics)
        cells = 0
        for core, predictions, diagnostics in cores:
            completed = self.assembler.add(core.index, core.core, predictions, diagnostics)
            for chunk in completed.chunks:
                self.output.write(chunk)
            self.chunks_written += len(completed.chunks)
            for index, finished in completed.tiles:
                record_tile(self.store, index, finished)
            cells += math.prod(core.core_shape)
        return cells
