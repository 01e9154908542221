"""Per-tile provenance in the output store, out of its root metadata.

Each tile's record (hyperparameters, fit report, solver diagnostics) is one strict-JSON
string in the 1-D array `gpgrid/tiles` of the store, a subgroup that xarray does not open
as data. The root metadata every reader fetches first then stays the same size at any
number of tiles (as attributes, 140,000 tiles would have been 150 MB of it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import zarr

from pipeline.storage import Location, as_location

GROUP = "gpgrid"
ARRAY = "tiles"
RECORDS_PER_CHUNK = 4096


def strict_json(value: object) -> str:
    """`value` as JSON that strict parsers take: NaN and infinities become null."""
    return json.dumps(_finite(value), allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_tile_records(store: str | Location, records: Sequence[dict]) -> None:
    """Write one record per tile, in tile order, to the store's `gpgrid/tiles` array."""
    group = zarr.open_group(as_location(store).zarr_store(), mode="r+").require_group(GROUP)
    chunk = max(1, min(len(records), RECORDS_PER_CHUNK))
    array = group.create_array(
        ARRAY, shape=(len(records),), dtype=str, chunks=(chunk,), overwrite=True
    )
    if records:
        array[:] = np.array([strict_json(r) for r in records], dtype=object)


def read_tile_records(store: str | Location) -> list[dict]:
    """The store's tile records, in tile order (none for a store without them)."""
    root = zarr.open_group(as_location(store).zarr_store(), mode="r")
    if GROUP not in root or ARRAY not in root[GROUP]:
        return []
    return [json.loads(text) for text in root[GROUP][ARRAY][:]]
