"""The tile plan: cores that partition the grid, aligned with output chunks, plus halos."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One unit of work: the cells it owns (core) and the cells it reads (window).

    Slices are over the grid's dims in the run's dim order. The window is the core
    grown by the halo on every side and clipped to the grid.
    """

    index: int
    core: tuple[slice, ...]
    window: tuple[slice, ...]
    output: tuple[slice, ...] | None = None  # what it predicts, when more than its core

    @property
    def output_region(self) -> tuple[slice, ...]:
        """The cells this tile predicts: its core, grown by the blend margin if there is one."""
        return self.output or self.core

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.output_region)

    @property
    def output_in_window(self) -> tuple[slice, ...]:
        """Where the predicted region sits inside the window array."""
        return tuple(
            slice(o.start - w.start, o.stop - w.start)
            for o, w in zip(self.output_region, self.window, strict=True)
        )

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.core)

    @property
    def window_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.window)

    @property
    def core_in_window(self) -> tuple[slice, ...]:
        """Where the core sits inside the window array."""
        return tuple(
            slice(c.start - w.start, c.stop - w.start)
            for c, w in zip(self.core, self.window, strict=True)
        )


def plan_tiles(
    shape: Sequence[int],
    tile: Sequence[int],
    halo: Sequence[int],
    blend: Sequence[int] | None = None,
    wrap: Sequence[bool] | None = None,
    history: Sequence[int] | None = None,
) -> list[Tile]:
    """Cut a grid of `shape` into tiles of `tile` cells (smaller at the far edges).

    Every cell lies in exactly one core; windows extend cores by `halo` cells per
    side; with `blend`, tiles predict their core grown by that many cells per side
    (at most the halo), for the reducer to blend. Along `wrap` dims (a global
    longitude) windows are not clipped but run past the ends, to be read around the
    circle. Along a dim with `history` (a forecast's time), every window starts `halo`
    cells before index 0 (at most `history`), in the data the forecast starts from, and
    runs to its core's end. Tiles are numbered in C order, which also seeds each tile's
    randomness.
    """
    blend = tuple(blend) if blend else (0,) * len(shape)
    wrap = tuple(wrap) if wrap else (False,) * len(shape)
    history = tuple(history) if history else (0,) * len(shape)
    _check_plan(shape, tile, halo, blend, wrap)
    starts = [range(0, n, t) for n, t in zip(shape, tile, strict=True)]
    tiles = []
    for index, corner in enumerate(itertools.product(*starts)):
        core = tuple(slice(s, min(s + t, n)) for s, t, n in zip(corner, tile, shape, strict=True))
        window = tuple(
            _window_along(c, h, n, wraps, past)
            for c, h, n, wraps, past in zip(core, halo, shape, wrap, history, strict=True)
        )
        output = None
        if any(blend):
            output = tuple(
                slice(c.start - b, c.stop + b)
                if wraps
                else slice(max(c.start - b, 0), min(c.stop + b, n))
                for c, b, n, wraps in zip(core, blend, shape, wrap, strict=True)
            )
        tiles.append(Tile(index, core, window, output))
    return tiles


def auto_blend(
    shape: Sequence[int], tile: Sequence[int], halo: Sequence[int], wrap: Sequence[bool]
) -> tuple[int, ...]:
    """Blend margins of half the halo per dim, cut to what every core allows (half the
    smallest core, a wrapped dim's ragged last one included): tiles that each learn their
    own hyperparameters then meet without a visible edge in the mean or the std."""
    margins = []
    for n, t, h, wraps in zip(shape, tile, halo, wrap, strict=True):
        cores = [min(t, n)] + ([n % t] if wraps and n % t else [])
        margins.append(0 if n <= t else min(h // 2, min(cores) // 2))
    return tuple(margins)


def _window_along(core: slice, halo: int, n: int, wraps: bool, past: int) -> slice:
    """A window along one dim: the core grown by the halo, clipped to the grid, except
    around a wrapped dim and back into a forecast's `past` steps of history."""
    if wraps:
        return slice(core.start - halo, core.stop + halo)
    if past:
        return slice(-min(halo, past), min(core.stop + halo, n))
    return slice(max(core.start - halo, 0), min(core.stop + halo, n))


def _check_plan(
    shape: Sequence[int],
    tile: Sequence[int],
    halo: Sequence[int],
    blend: tuple[int, ...],
    wrap: tuple[bool, ...],
) -> None:
    """Refuse a plan whose entries disagree in length, tiles or halos out of range, blend
    margins wider than the halo or cores too small to blend, and wrapped dims the window
    would overlap itself around."""
    if not (len(shape) == len(tile) == len(halo) == len(blend) == len(wrap)):
        raise ValueError(
            f"shape {shape}, tile {tile}, halo {halo} and blend {blend} need one entry per dim"
        )
    if any(t < 1 for t in tile) or any(h < 0 for h in halo):
        raise ValueError(f"tile sizes must be >= 1 and halos >= 0; got tile {tile}, halo {halo}")
    if any(b < 0 or b > h for b, h in zip(blend, halo, strict=True)):
        raise ValueError(f"blend margins {blend} must lie between 0 and the halo {halo}")
    for n, t, h, b, wraps in zip(shape, tile, halo, blend, wrap, strict=True):
        if wraps and min(t, n) + 2 * h > n:
            raise ValueError(
                f"a wrapped dim of {n} cells needs tile + 2 x halo <= {n} (got {t} + 2 x {h}): "
                "shrink the halo or the tile"
            )
        ragged = n % t if wraps else 0  # a wrapped dim's last core has neighbours on both sides
        if b and (min(t, n) < 2 * b or 0 < ragged < 2 * b):
            raise ValueError(
                f"blending {b} cells per side needs cores of at least {2 * b} cells; a dim of "
                f"{n} cut into tiles of {t} has cores of {min(t, n)}"
                + (f" and {ragged} (wrapped)" if ragged else "")
                + ": use a smaller blend or a tile size that divides the dim"
            )


@dataclass
class TileResult:
    """Core predictions (output variable name -> array of the core's shape) and diagnostics.

    Kept here, free of torch, so the driver can receive results without importing the solvers.
    """

    tile: Tile
    predictions: dict[str, np.ndarray]
    diagnostics: dict = field(default_factory=dict)
