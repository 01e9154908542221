"""Scores of gridded predictions against a known truth: accuracy and calibration."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from scipy.special import ndtr

from pipeline.errors import InputError
from pipeline.store import std_name

Z95 = 1.959963984540054


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score of N(mean, std^2) at the truth (lower is better)."""
    z = (truth - mean) / std
    density = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return std * (z * (2 * ndtr(z) - 1) + 2 * density - 1 / math.sqrt(math.pi))


def score(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, CRPS, 95% interval score and 95% coverage over the given cells."""
    mean, std, truth = (np.asarray(a, dtype=np.float64).ravel() for a in (mean, std, truth))
    err = truth - mean
    lower, upper = mean - Z95 * std, mean + Z95 * std
    interval = (upper - lower) + (2 / 0.05) * (
        np.maximum(lower - truth, 0) + np.maximum(truth - upper, 0)
    )
    return {
        "n": int(err.size),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "crps": float(np.mean(gaussian_crps(mean, std, truth))),
        "interval_score95": float(np.mean(interval)),
        "coverage95": float(np.mean((truth >= lower) & (truth <= upper))),
    }


def score_gap_cells(output: xr.Dataset, source: xr.Dataset, variable: str) -> dict[str, float]:
    """Scores on the cells missing from the input, against the true field `<variable>_true`
    (cells where the truth itself is missing are skipped).

    Only synthetic inputs carry the truth; the true field's standard deviation over
    the gaps is reported too, as the scale RMSE should be compared with.
    """
    truth_name = f"{variable}_true"
    if truth_name not in source:
        raise InputError(
            f"{truth_name!r} is not in the input: only synthetic inputs carry the truth to "
            "score against; use gpgrid validate on real data"
        )
    gaps = np.isnan(source[variable].values) & np.isfinite(source[truth_name].values)
    truth = source[truth_name].values[gaps]
    scores = score(output[variable].values[gaps], output[std_name(variable)].values[gaps], truth)
    scores["truth_std"] = float(np.nanstd(source[truth_name].values))
    return scores
