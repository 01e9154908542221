"""Scores of gridded predictions against a known truth: accuracy and calibration."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

Z95 = 1.959963984540054


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score of N(mean, std^2) at the truth (lower is better)."""
    z = (truth - mean) / std
    return std * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


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
