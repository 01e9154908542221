"""Shared hyperparameters: learned on a sample of tiles (phase 1), used by every tile (phase 2).

One set per variable, in the data's units: a lengthscale per stationary factor of the
kernel (per input column for a separable one) with the columns it reads, the shares of
a multi-scale kernel's parts, the outputscale and noise variances.
Torch-free: the driver pools, workers fit and apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.errors import InputError

SAMPLE_TILES = 8


def sample_tile_indices(n_tiles: int, count: int = SAMPLE_TILES) -> list[int]:
    """`count` tile indices spread evenly over the plan (all of them for small plans)."""
    if n_tiles <= count:
        return list(range(n_tiles))
    return sorted({round(i) for i in np.linspace(0, n_tiles - 1, count)})


def pool(samples: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """Per variable, the median over tiles of each hyperparameter's logarithm (robust to a
    tile whose fit wandered), back in the data's units."""
    pooled: dict[str, dict] = {}
    for var in samples[0]:
        fits = [s[var] for s in samples if s.get(var)]
        if not fits:
            raise InputError(
                f"no sampled tile had enough observations of {var!r} to learn hyperparameters: "
                "use model.hyperparameters: per_tile"
            )
        pooled[var] = {
            "lengthscales": _log_medians([f["lengthscales"] for f in fits]),
            "columns": fits[0]["columns"],
            "shares": _log_medians([f["shares"] for f in fits]),
            "outputscale": _log_median([f["outputscale"] for f in fits]),
            "noise": _log_median([f["noise"] for f in fits]),
            "tiles": len(fits),
        }
    return pooled


def _log_medians(vectors: Sequence[Sequence[float]]) -> list[float]:
    """The elementwise log-median of equally long vectors."""
    return [_log_median(column) for column in zip(*vectors, strict=True)]


def _log_median(values: Sequence[float]) -> float:
    return math.exp(float(np.median(np.log(values))))
