"""The reducer's weights and bookkeeping, against brute force (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blend import Blender, _chunks_under, weights
from pipeline.tiling import plan_tiles

SHAPE = (5, 50, 37)  # ragged: the last tiles are smaller
TILE, HALO, BLEND = (5, 16, 16), (1, 6, 6), (0, 4, 4)


def test_weights_are_a_partition_of_unity_and_one_inside_cores() -> None:
    tiles = plan_tiles(SHAPE, TILE, HALO, BLEND)
    total = np.zeros(SHAPE)
    for tile in tiles:
        w = weights(tile, SHAPE, BLEND)
        assert w.shape == tile.output_shape
        inner = tuple(
            slice(c.start - o.start + b, c.stop - o.start - b)
            for c, o, b in zip(tile.core, tile.output_region, BLEND, strict=True)
        )
        np.testing.assert_array_equal(w[inner], 1.0)  # a core less the ramps: the tile alone
        total[tile.output_region] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_weights_at_known_cells_are_the_hand_computed_ramps() -> None:
    """Across the lon edge at 16 between tiles 0 and 1 (blend 4): cell p has centre p + 0.5,
    the left tile's weight is (20 - (p + 0.5)) / 8 and the right one's (p + 0.5 - 12) / 8;
    at the grid's own edges nothing ramps; a corner is the product over dims."""
    tiles = plan_tiles(SHAPE, TILE, HALO, BLEND)
    left, right = tiles[0], tiles[1]  # cores lon 0:16 and 16:32, both lat 0:16
    assert left.output_region[2] == slice(0, 20) and right.output_region[2] == slice(12, 36)
    w_left, w_right = weights(left, SHAPE, BLEND), weights(right, SHAPE, BLEND)
    lon = [12, 15, 16, 19]
    np.testing.assert_allclose(w_left[0, 0, lon], [0.9375, 0.5625, 0.4375, 0.0625])
    np.testing.assert_allclose(
        w_right[0, 0, [p - 12 for p in lon]], [0.0625, 0.4375, 0.5625, 0.9375]
    )
    np.testing.assert_array_equal(w_left[:, 0, 0], 1.0)  # time is not blended; lon 0 is an edge
    # lat 15, lon 15 of tile 0: both its edges ramp, (4.5 / 8) ** 2
    assert w_left[0, 15, 15] == pytest.approx(0.31640625, abs=1e-15)


def test_chunks_under_a_tile_match_a_brute_force_search() -> None:
    tiles = plan_tiles(SHAPE, TILE, HALO, BLEND)
    for tile in tiles:
        brute = [
            c.index
            for c in tiles
            if all(
                max(a.start, b.start) < min(a.stop, b.stop)
                for a, b in zip(tile.output_region, c.core, strict=True)
            )
        ]
        assert sorted(_chunks_under(tile, tiles)) == brute


def test_blending_constant_predictions_returns_them_in_any_order() -> None:
    """Tiles that all predict mean 2, std 0.5 give exactly that, whatever the arrival order."""
    tiles = plan_tiles(SHAPE, TILE, HALO, BLEND)
    blender = Blender(tiles, SHAPE, BLEND, ["v"], {t.index for t in tiles})
    written = {}
    for tile in np.random.default_rng(0).permutation(tiles):
        shape = tile.output_shape
        out = blender.add(tile, {"v": np.full(shape, 2.0), "v_std": np.full(shape, 0.5)}, {})
        for chunk, predictions, _ in out:
            written[chunk.index] = predictions
    assert sorted(written) == [t.index for t in tiles]
    for predictions in written.values():
        np.testing.assert_allclose(predictions["v"], 2.0, rtol=1e-12)
        np.testing.assert_allclose(predictions["v_std"], 0.5, rtol=1e-9)


def test_blend_wider_than_the_halo_is_refused() -> None:
    with pytest.raises(ValueError, match="blend margins .* must lie between 0 and the halo"):
        plan_tiles(SHAPE, TILE, HALO, (0, 8, 8))


def test_weights_wrap_around_a_periodic_dim() -> None:
    """On a wrapped longitude the first and last tiles blend across the date line too."""
    shape, wrap = (2, 20, 40), (False, False, True)
    tiles = plan_tiles(shape, (2, 10, 10), (0, 3, 5), (0, 2, 4), wrap)
    total = np.zeros(shape)
    for tile in tiles:
        w = weights(tile, shape, (0, 2, 4), wrap)
        cells = [
            np.arange(r.start, r.stop) % n for r, n in zip(tile.output_region, shape, strict=True)
        ]
        index = np.ix_(*cells)
        np.add.at(total, index, w)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    blender = Blender(tiles, shape, (0, 2, 4), ["v"], {t.index for t in tiles}, wrap)
    assert tiles[0].index in blender.waiting[tiles[3].index]  # last lon chunk needs the first
    with pytest.raises(ValueError, match="needs cores of at least 8 cells"):
        plan_tiles(shape, (2, 10, 12), (0, 3, 5), (0, 2, 4), wrap)  # last lon core: 4 cells
    written = []
    for tile in tiles:
        ones = np.ones(tile.output_shape)
        written += blender.add(tile, {"v": 3 * ones, "v_std": ones}, {})
    assert len(written) == len(tiles)
    for _, predictions, _ in written:
        np.testing.assert_allclose(predictions["v"], 3.0, rtol=1e-12)
