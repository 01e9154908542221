"""Output chunks assembled from tiles: every chunk written once, after all its tiles; a
tile journalled only after all its chunks; an interrupted assembly resumed into the same
store ends equal to writing every tile directly. Real zarr stores, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.assembly import ChunkAssembler, chunks_touching, write_order
from pipeline.store import OutputWriter
from pipeline.tiling import plan_tiles

NAMES = ("tas", "tas_std")

LAYOUTS = [  # grid shape, tile, chunks
    ((7, 23, 19), (3, 5, 4), (2, 7, 8)),  # chunks across tile edges, ragged ends
    ((6, 32, 32), (3, 16, 16), (3, 16, 16)),  # one chunk per tile
    ((6, 32, 32), (3, 16, 16), (6, 32, 32)),  # one chunk for the whole grid
    ((6, 32, 32), (3, 16, 16), (1, 8, 8)),  # tiles of several chunks each
    ((5, 9, 11), (5, 3, 3), (2, 20, 4)),  # a chunk longer than the grid
]


def tile_values(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name in NAMES}


def new_store(path: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> zarr.Group:
    group = zarr.open_group(path, mode="w")
    for name in NAMES:
        group.create_array(name, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan)
    return group


def feed(assembler: ChunkAssembler, tiles, truth, writer, order) -> list[int]:  # noqa: ANN001
    """Add tiles in `order`, writing what completes; returns the tiles journalled, checking
    that each is journalled only once every chunk it touches was written."""
    written: set[tuple] = set()
    journalled = []
    for index in order:
        core = tiles[index].core
        completed = assembler.add(index, core, {n: truth[n][core] for n in NAMES}, {"i": index})
        for chunk in completed.chunks:
            key = tuple(s.start // c for s, c in zip(chunk.region, assembler.chunks, strict=True))
            assert key not in written, f"chunk {key} written twice"
            written.add(key)
            writer.write(chunk)
        for finished, diagnostics in completed.tiles:
            assert diagnostics == {"i": finished}
            assert set(chunks_touching(tiles[finished].core, assembler.chunks)) <= written
            journalled.append(finished)
    return journalled


@pytest.mark.parametrize(("shape", "tile", "chunks"), LAYOUTS)
def test_every_chunk_is_written_once_and_every_tile_journalled_after_its_chunks(
    tmp_path, shape, tile, chunks
) -> None:
    tiles = plan_tiles(shape, tile, (0,) * len(shape))
    truth = tile_values(shape)
    new_store(str(tmp_path / "out.zarr"), shape, chunks)
    writer = OutputWriter(str(tmp_path / "out.zarr"))
    regions = {t.index: t.core for t in tiles}
    assembler = ChunkAssembler(shape, chunks, regions, NAMES)
    order = list(np.random.default_rng(1).permutation(len(tiles)))
    journalled = feed(assembler, tiles, truth, writer, order)
    assert sorted(journalled) == list(range(len(tiles)))
    assert assembler.pending_cells == 0
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    for name in NAMES:
        np.testing.assert_array_equal(group[name][...], truth[name])


@pytest.mark.parametrize(("shape", "tile", "chunks"), LAYOUTS)
def test_an_interrupted_assembly_resumes_to_the_same_store(tmp_path, shape, tile, chunks) -> None:
    """The first run stops halfway: chunks it wrote whose tiles are not all journalled are
    written again by the resume, merged with the journalled tiles' cells already there."""
    tiles = plan_tiles(shape, tile, (0,) * len(shape))
    truth = tile_values(shape, seed=2)
    path = str(tmp_path / "out.zarr")
    new_store(path, shape, chunks)
    regions = {t.index: t.core for t in tiles}
    order = write_order(regions, chunks)
    first = ChunkAssembler(shape, chunks, regions, NAMES)
    done = set(feed(first, tiles, truth, OutputWriter(path), order[: len(order) // 2]))

    pending = {i: r for i, r in regions.items() if i not in done}
    resumed = ChunkAssembler(shape, chunks, pending, NAMES)
    rest = [i for i in order if i not in done]
    assert sorted(done | set(feed(resumed, tiles, truth, OutputWriter(path), rest))) == sorted(
        regions
    )
    group = zarr.open_group(path, mode="r")
    for name in NAMES:
        np.testing.assert_array_equal(group[name][...], truth[name])


def test_tiles_are_ordered_chunk_by_chunk() -> None:
    """Tiles of one chunk come one after another, so chunks fill up one at a time."""
    tiles = plan_tiles((4, 8, 8), (2, 2, 2), (0, 0, 0))
    regions = {t.index: t.core for t in tiles}
    order = write_order(regions, (4, 4, 4))
    keys = [tuple(s.start // 4 for s in regions[i]) for i in order]
    assert keys == sorted(keys)
    assert len(order) == len(tiles) == len(set(order))


def test_a_tile_without_cells_is_journalled_at_once() -> None:
    """On a new grid a tile may own no target cell: it touches no chunk."""
    assembler = ChunkAssembler((4, 4), (2, 2), {0: (slice(0, 0), slice(0, 4))}, NAMES)
    empty = {name: np.zeros((0, 4), np.float32) for name in NAMES}
    completed = assembler.add(0, (slice(0, 0), slice(0, 4)), empty, {"x": 1})
    assert completed.chunks == [] and completed.tiles == [(0, {"x": 1})]
