"""Each grid dim's learned range, read back from an output store's tile records.

The validation also bands its hidden cells by distance in these ranges: a cell 16 cells
from data is deep in a gap for a 3-cell range and close for a 300-cell one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from pipeline.coordinates import coordinate_values

# A part of a multi-scale kernel with less of its variance than this does not set how far
# the data reach (OSTIA's long part, at 0.04% of it, would have made every gap "near").
MIN_PART_SHARE = 0.05


def kernel_lengthscales(described: object) -> dict[int, float]:
    """The longest lengthscale of each input column over the stationary parts of a kernel
    as `Kernel.describe` gives it. Periodic factors are skipped: their lengthscale is a
    fraction of the period, not a range in the column's units; so are the parts of a
    multi-scale kernel with less than MIN_PART_SHARE of its variance."""
    found: dict[int, float] = {}
    if isinstance(described, Mapping):
        if "lengthscale" in described and "period" not in described and described.get("dims"):
            scales = np.atleast_1d(described["lengthscale"]).astype(float)
            for i, column in enumerate(described["dims"]):
                value = float(scales[i if len(scales) > 1 else 0])
                found[column] = max(found.get(column, 0.0), value)
        children = list(described.values())
        if described.get("kind") == "multiscale":
            children = _carrying_parts(described["factors"])
    elif isinstance(described, list):
        children = described
    else:
        return found
    for child in children:
        for column, value in kernel_lengthscales(child).items():
            found[column] = max(found.get(column, 0.0), value)
    return found


def _carrying_parts(parts: list) -> list:
    """The parts of a described multi-scale kernel that carry at least MIN_PART_SHARE of
    its variance."""
    shares = np.array([float(part.get("outputscale", 1.0)) for part in parts])
    return [
        part
        for part, share in zip(parts, shares, strict=True)
        if share >= MIN_PART_SHARE * shares.sum()
    ]


def median_lengthscales(records: Sequence[Mapping], var: str, n_columns: int) -> list[float] | None:
    """Per input column, the median over tiles of `var`'s longest learned lengthscale, from
    the store's tile records (`read_tile_records`); None where a column has none (e.g.
    only a periodic factor)."""
    per_column: list[list[float]] = [[] for _ in range(n_columns)]
    for record in records:
        info = record.get("variables", {}).get(var, {})
        kernel = info.get("hyperparameters", {}).get("kernel") if isinstance(info, dict) else None
        for column, value in kernel_lengthscales(kernel).items():
            if column < n_columns:
                per_column[column].append(value)
    if not all(per_column):
        return None
    return [float(np.median(values)) for values in per_column]


def cells_per_lengthscale(
    output: xr.Dataset, records: Sequence[Mapping], var: str, dims: Sequence[str]
) -> dict[str, float] | None:
    """How many grid cells of `output` one learned lengthscale (from its tile `records`)
    spans along each dim (None when some dim has no learned range); a grid job's input
    columns are its dims, in order."""
    scales = median_lengthscales(records, var, len(dims))
    if scales is None:
        return None
    steps = [_step(output[d]) for d in dims]
    return {d: scale / step for d, scale, step in zip(dims, scales, steps, strict=True)}


def _step(coord: xr.DataArray) -> float:
    """A dim's median cell step in the GP's input units (1 for a single cell, along which
    every distance is 0 anyway)."""
    values = coordinate_values(coord)
    return float(np.median(np.abs(np.diff(values)))) if len(values) > 1 else 1.0
