"""Scores by band of distance to the nearest observation, and a headline re-weighted to the
cells a job will fill.

A GP's std is least trustworthy in the middle of a large gap, and a random hold-out samples
few such cells. So hidden cells are scored per band of their distance (Euclidean, in grid
cells over every grid dim) to the nearest observation left after hiding, and the headline
weights each band by its share of the cells the job will fill: known from the input's mask
before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.scores import score

BAND_EDGES = (2.0, 4.0, 8.0, 16.0)  # cells: 0-2, 2-4, 4-8, 8-16, 16+
# The same idea in learned lengthscales: beyond about 1 the data barely inform a cell.
RANGE_EDGES = (0.25, 0.5, 1.0, 2.0)
COVERAGE_RANGE = (0.90, 0.98)  # a band's 95% coverage outside this is warned about
WARN_MIN_CELLS = 30  # fewer hidden cells than this in a band: too noisy to warn about


def band_labels(edges: Sequence[float] = BAND_EDGES) -> list[str]:
    """'0-2', '2-4', ..., '16+': a band holds distances in (low, high]."""
    lows = (0.0, *edges)
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(lows, edges, strict=False)] + [f"{edges[-1]:g}+"]


def distance_to_observed(
    observed: np.ndarray, sampling: Sequence[float] | None = None
) -> np.ndarray:
    """Each cell's distance to the nearest observed cell (0 on one; inf everywhere when
    nothing is observed): in cells, or with `sampling` (one step per axis) in those units."""
    if not observed.any():
        return np.full(observed.shape, np.inf)
    return ndimage.distance_transform_edt(~observed, sampling=sampling)


def band_index(distance: np.ndarray, edges: Sequence[float] = BAND_EDGES) -> np.ndarray:
    """The band of each distance: 0 for (0, 2], 1 for (2, 4], ..., 4 beyond 16."""
    return np.searchsorted(np.asarray(edges), distance, side="left")


def fill_shares(distance: np.ndarray) -> dict[str, float]:
    """Each band's share of the cells to fill, from their distances (empty: no cells)."""
    if distance.size == 0:
        return {}
    counts = np.bincount(band_index(distance.ravel()), minlength=len(BAND_EDGES) + 1)
    labels = band_labels()
    return {label: count / distance.size for label, count in zip(labels, counts, strict=True)}


def banded_scores(
    mean: np.ndarray,
    std: np.ndarray,
    truth: np.ndarray,
    distance: np.ndarray,
    edges: Sequence[float] = BAND_EDGES,
) -> dict[str, dict[str, float]]:
    """Scores of the given cells (flat arrays) per distance band, bands without cells left out."""
    bands = band_index(distance, edges)
    return {
        label: score(mean[bands == i], std[bands == i], truth[bands == i])
        for i, label in enumerate(band_labels(edges))
        if (bands == i).any()
    }


@dataclass(frozen=True)
class Headline:
    """Scores re-weighted to the fill cells' bands; `measured_share` is the share of fill
    cells whose band had hidden cells to score (the rest is left out, not guessed)."""

    rmse: float
    mae: float
    crps: float
    coverage95: float
    measured_share: float

    def as_dict(self) -> dict[str, float]:
        return {
            "rmse": self.rmse,
            "mae": self.mae,
            "crps": self.crps,
            "coverage95": self.coverage95,
            "measured_share": self.measured_share,
        }


def reweighted(
    banded: Mapping[str, Mapping[str, float]], shares: Mapping[str, float]
) -> Headline | None:
    """The headline over the fill cells' distance distribution (None if no band overlaps)."""
    weights = {label: share for label, share in shares.items() if label in banded and share > 0}
    measured = sum(weights.values())
    if measured == 0:
        return None

    def weighted(key: str, power: int = 1) -> float:
        return sum(w * banded[b][key] ** power for b, w in weights.items()) / measured

    return Headline(
        rmse=math.sqrt(weighted("rmse", 2)),
        mae=weighted("mae"),
        crps=weighted("crps"),
        coverage95=weighted("coverage95"),
        measured_share=measured,
    )


# What to try when a band's intervals are too narrow: a second range for the kernel (one
# range fitted to two-scale data is too long near the data), or widening on moved gaps.
UNDERSTATED_FIX = "try model.scales: 2 (a short and a long range) or model.calibrate_variance: true"


def coverage_warnings(variable: str, banded: Mapping[str, Mapping[str, float]]) -> list[str]:
    """A line for each band (with enough cells) whose 95% coverage leaves COVERAGE_RANGE,
    with what to try where the std understates the error."""
    low, high = COVERAGE_RANGE
    return [
        f"{variable}: 95% coverage {s['coverage95']:.3f} at {label} cells from the nearest "
        f"observation ({s['n']:,} hidden cells) is outside {low:.2f}-{high:.2f}: the std "
        + (
            f"understates the error there; {UNDERSTATED_FIX}"
            if s["coverage95"] < low
            else "overstates the error there"
        )
        for label, s in banded.items()
        if s["n"] >= WARN_MIN_CELLS and not low <= s["coverage95"] <= high
    ]
