"""Regular grids: the `Lattice` (per-axis start, spacing, size), finding one in the data, and
the grid arithmetic (C-order strides, on-grid tolerance) that every grid path shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def grid_tolerance(dtype: torch.dtype) -> float:
    """How far (in cells) a coordinate may sit from a node and still count as on it: float32
    rounding (a thousandth of a cell) for float32 inputs, a millionth otherwise."""
    return 1e-3 if dtype == torch.float32 else 1e-6


def c_strides(shape: Sequence[int]) -> list[int]:
    """C-order (row-major) strides, in elements, of an array of `shape`."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * shape[axis + 1]
    return strides


@dataclass(frozen=True)
class Lattice:
    """A regular grid: per-axis start, spacing and size.

    A lattice is a set of nodes, and it is held in one canonical form: every spacing
    positive, every start the lowest node. An axis given in descending order (latitude
    from 90 to -90, as ERA5 stores it: a negative spacing from the first coordinate) is
    turned around on construction into the same nodes in ascending order. Everything
    that reads a lattice (cells per lengthscale or period, lags, neighbour offsets,
    interpolation stencils) can then take a spacing as the width of a cell. Cells are
    found from coordinates (`cell_index`), so callers never depend on the node order.
    """

    starts: tuple[float, ...]
    spacings: tuple[float, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        starts, spacings = [], []
        for axis, (start, h, n) in enumerate(
            zip(self.starts, self.spacings, self.shape, strict=True)
        ):
            if not (math.isfinite(start) and math.isfinite(h)) or (h == 0 and n > 1):
                raise ValueError(
                    f"lattice axis {axis} has start {start} and spacing {h}: a regular grid "
                    "needs a finite start and a finite, non-zero spacing"
                )
            descending = h < 0
            starts.append(float(start + (n - 1) * h) if descending else float(start))
            spacings.append(float(-h) if descending else float(h))
        object.__setattr__(self, "starts", tuple(starts))
        object.__setattr__(self, "spacings", tuple(spacings))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def cell_index(self, x: torch.Tensor, tol: float | None = None) -> torch.Tensor | None:
        """Flat C-order cell index of each row of x, or None if any row is off the lattice.

        `tol` is in cells, `grid_tolerance(x.dtype)` by default.
        """
        if tol is None:
            tol = grid_tolerance(x.dtype)
        flat = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for dim, (start, h, n) in enumerate(
            zip(self.starts, self.spacings, self.shape, strict=True)
        ):
            pos = (x[:, dim].double() - start) / h
            idx = torch.round(pos)
            if bool(((pos - idx).abs() > tol).any()) or bool(((idx < 0) | (idx >= n)).any()):
                return None
            flat = flat * n + idx.long()
        return flat

    def padded(self, cells: int) -> Lattice:
        """The same lattice grown by `cells` nodes on every side (for interpolation stencils)."""
        return Lattice(
            tuple(s - cells * h for s, h in zip(self.starts, self.spacings, strict=True)),
            self.spacings,
            tuple(n + 2 * cells for n in self.shape),
        )

    def lags(self, axis: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.spacings[axis] * torch.arange(self.shape[axis], dtype=dtype, device=device)


def detect_lattice(x: torch.Tensor, max_cells: int = 50_000_000) -> Lattice | None:
    """The smallest regular lattice holding every row of x, if the data are gridded.

    Positions may be off by rounding up to `grid_tolerance(x.dtype)` cells.
    """
    starts, spacings, shape = [], [], []
    for dim in range(x.shape[1]):
        values = torch.unique(x[:, dim].double())
        if values.numel() < 2:
            return None
        span = float(values[-1] - values[0])
        n = round(span / float(values.diff().min())) + 1
        if n > max_cells:
            return None
        starts.append(float(values[0]))
        spacings.append(span / (n - 1))
        shape.append(n)
    lattice = Lattice(tuple(starts), tuple(spacings), tuple(shape))
    if lattice.size > max_cells or lattice.cell_index(x) is None:
        return None
    return lattice


def interpolation_lattice(x: torch.Tensor, cells_per_axis: Sequence[int]) -> Lattice:
    """A grid over the data's range widened by 5% per side, plus the two cells cubic
    interpolation needs beyond each end (so nearby test points can be predicted too)."""
    starts, spacings = [], []
    for dim, m in enumerate(cells_per_axis):
        lo, hi = float(x[:, dim].min()), float(x[:, dim].max())
        margin = 0.05 * max(hi - lo, 1e-12)
        lo, hi = lo - margin, hi + margin
        h = (hi - lo) / (m - 5)
        starts.append(lo - 2 * h)
        spacings.append(h)
    return Lattice(tuple(starts), tuple(spacings), tuple(cells_per_axis))
