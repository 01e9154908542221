"""The tile plan partitions the grid with cores aligned to chunks, and windows add the halo."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tiling import plan_tiles


@pytest.mark.parametrize(
    ("shape", "tile", "halo"),
    [
        ((20, 100, 100), (5, 20, 20), (2, 6, 6)),
        ((7, 13, 29), (3, 5, 8), (1, 0, 4)),
        ((1, 1, 1), (4, 4, 4), (2, 2, 2)),
        ((50,), (7,), (3,)),
    ],
)
def test_cores_cover_every_cell_exactly_once(shape, tile, halo) -> None:
    count = np.zeros(shape, dtype=int)
    tiles = plan_tiles(shape, tile, halo)
    for t in tiles:
        count[t.core] += 1
        # Cores start on chunk boundaries, so each core is whole output chunks.
        assert all(s.start % size == 0 for s, size in zip(t.core, tile, strict=True))
        for core, window, h, n in zip(t.core, t.window, halo, shape, strict=True):
            assert window.start == max(core.start - h, 0)
            assert window.stop == min(core.stop + h, n)
        window = np.zeros(t.window_shape, dtype=bool)
        window[t.core_in_window] = True
        assert window.sum() == np.prod(t.core_shape)
    assert (count == 1).all()
    assert [t.index for t in tiles] == list(range(len(tiles)))


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="one entry per dim"):
        plan_tiles((10, 10), (5,), (1, 1))
    with pytest.raises(ValueError, match="tile sizes must be >= 1"):
        plan_tiles((10,), (0,), (1,))
