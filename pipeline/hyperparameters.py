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
            raise _nothing_to_pool(var)
        pooled[var] = {
            "lengthscales": _log_medians([f["lengthscales"] for f in fits]),
            "columns": fits[0]["columns"],
            "shares": _log_medians([f["shares"] for f in fits]),
            "outputscale": _log_median([f["outputscale"] for f in fits]),
            "noise": _log_median([f["noise"] for f in fits]),
            "tiles": len(fits),
        }
    return pooled


def _nothing_to_pool(var: str) -> InputError:
    """The error for a variable no sampled tile could fit."""
    return InputError(
        f"no sampled tile had enough observations of {var!r} to learn hyperparameters: "
        "use model.hyperparameters: per_tile"
    )


def _log_medians(vectors: Sequence[Sequence[float]]) -> list[float]:
    """The elementwise log-median of equally long vectors."""
    return [_log_median(column) for column in zip(*vectors, strict=True)]


def _log_median(values: Sequence[float]) -> float:
    return math.exp(float(np.median(np.log(values))))


def candidates(
    samples: Sequence[dict[str, dict | None]], tiles: Sequence[int]
) -> dict[str, list[dict]]:
    """Per variable, the sampled tiles' fits (those that had one), in sample order, each
    with the tile it was fitted on."""
    return {
        var: [
            {**s[var], "fitted_on_tile": t} for s, t in zip(samples, tiles, strict=True) if s[var]
        ]
        for var in samples[0]
    }


def best_supported(
    fits: dict[str, list[dict]], likelihoods: Sequence[dict[str, list[float] | None]]
) -> dict[str, dict]:
    """Per variable, the one fit with the largest log likelihood per observation summed over
    the sampled tiles that scored it (`likelihoods`, one per tile, one value per fit): a set
    some tile fitted, and the one all of them support best, for kernels whose parts trade
    off so that medians taken part by part would describe no fit at all."""
    chosen: dict[str, dict] = {}
    for var, options in fits.items():
        if not options:
            raise _nothing_to_pool(var)
        scored = [t[var] for t in likelihoods if t.get(var) is not None]
        sums = np.sum(scored, axis=0)
        best = int(np.argmax(sums))
        chosen[var] = {
            **{k: v for k, v in options[best].items() if k != "variance_factor"},
            "tiles": len(options),
            "log_likelihood_per_observation": [round(float(s), 4) for s in sums],
        }
    return chosen


def widened(shared: dict[str, dict], factors: Sequence[dict[str, float | None]]) -> dict:
    """`shared` with each variable's outputscale and noise times the log-median over the
    sampled tiles of the factor their moved gaps asked of it (KissGP.calibrate_variance)."""
    out = {}
    for var, values in shared.items():
        factor = _log_median([f[var] for f in factors if f.get(var) is not None])
        out[var] = {
            **values,
            "outputscale": values["outputscale"] * factor,
            "noise": values["noise"] * factor,
            "variance_factor": factor,
        }
    return out
