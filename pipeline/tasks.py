"""One tile's work as a plain function: read its window, fit a GP per variable, predict its core.

Ray runs `predict_tile` remotely (see runner.py); tests and single-machine code call it
directly. Everything random is seeded by the tile index, so a retry gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gpkernels import ExactGP, separable
from pipeline.config import PipelineConfig
from pipeline.inputs import coordinate_values, open_input
from pipeline.store import std_name
from pipeline.tiling import Tile

MIN_OBSERVATIONS = 3


@dataclass
class TileResult:
    """Core predictions (output variable name -> array of the core's shape) and diagnostics."""

    tile: Tile
    predictions: dict[str, np.ndarray]
    diagnostics: dict = field(default_factory=dict)


def window_inputs(config: PipelineConfig, tile: Tile, ds) -> np.ndarray:  # noqa: ANN001
    """GP inputs (n_window_cells, n_dims) in physical units, in C order over the window."""
    axes = [
        coordinate_values(ds[dim])[window]
        for dim, window in zip(config.dims, tile.window, strict=True)
    ]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def nearest_to_core(
    candidates: np.ndarray, tile: Tile, halo: tuple[int, ...], limit: int, seed: int
) -> np.ndarray:
    """The `limit` candidate window cells (flat indices) closest to the tile's core.

    Distance is measured from the core box, per dim in units of that dim's halo, so
    all core cells count as distance 0; ties are broken at random (seeded).
    """
    if candidates.size <= limit:
        return candidates
    coords = np.unravel_index(candidates, tile.window_shape)
    sq = np.zeros(candidates.size)
    for c, core, h in zip(coords, tile.core_in_window, halo, strict=True):
        outside = np.maximum(core.start - c, 0) + np.maximum(c - (core.stop - 1), 0)
        sq += (outside / max(h, 1)) ** 2
    shuffled = np.random.default_rng(seed).permutation(candidates.size)
    order = shuffled[np.argsort(sq[shuffled], kind="stable")]
    return np.sort(candidates[order[:limit]])


def fit_and_predict(
    x: np.ndarray, y: np.ndarray, x_core: np.ndarray, config: PipelineConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit an ExactGP on a subsample, condition on all of (x, y), predict mean and std at x_core."""
    dtype = getattr(torch, config.model.dtype)
    device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    tx = torch.as_tensor(x, dtype=dtype, device=device)
    ty = torch.as_tensor(y, dtype=dtype, device=device)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.permutation(len(y))[: config.model.fit_points])
    model = ExactGP(separable(config.model.kernels))
    start = time.perf_counter()
    report = model.fit(tx[fit_idx], ty[fit_idx], max_iter=config.model.max_iter, seed=seed)
    model.condition(tx, ty)
    fitted = time.perf_counter()
    mean, var = model.predict(torch.as_tensor(x_core, dtype=dtype, device=device))
    predicted = time.perf_counter()
    diagnostics = {
        "fit": report.as_dict(),
        "hyperparameters": model.hyperparameters(),
        "n_fit": len(fit_idx),
        "n_conditioned": len(y),
        "jitter": model.jitter,
        "device": device,
        "fit_seconds": fitted - start,
        "predict_seconds": predicted - fitted,
    }
    return mean.cpu().numpy(), var.sqrt().cpu().numpy(), diagnostics


def predict_tile(config: PipelineConfig, tile: Tile) -> TileResult:
    """Read the tile's window, fit and predict each variable, return core mean and std."""
    start = time.perf_counter()
    ds = open_input(config.input_path)
    window = dict(zip(config.dims, tile.window, strict=True))
    x = window_inputs(config, tile, ds)
    core_mask = np.zeros(tile.window_shape, dtype=bool)
    core_mask[tile.core_in_window] = True
    x_core = x[core_mask.reshape(-1)]
    predictions: dict[str, np.ndarray] = {}
    diagnostics: dict = {"tile": tile.index, "variables": {}}
    for var in config.variables:
        read_start = time.perf_counter()
        values = ds[var].isel(window).transpose(*config.dims).values.reshape(-1)
        observed = np.flatnonzero(np.isfinite(values))
        info: dict = {
            "n_observed": int(observed.size),
            "read_seconds": time.perf_counter() - read_start,
        }
        if observed.size < MIN_OBSERVATIONS:
            info["status"] = f"skipped: {observed.size} observations in the window"
            mean = std = np.full(len(x_core), np.nan)
        else:
            used = nearest_to_core(observed, tile, config.halo, config.model.max_points, tile.index)
            mean, std, fit_info = fit_and_predict(x[used], values[used], x_core, config, tile.index)
            info.update(fit_info, status="ok")
        predictions[var] = mean.reshape(tile.core_shape)
        predictions[std_name(var)] = std.reshape(tile.core_shape)
        diagnostics["variables"][var] = info
    diagnostics["seconds"] = time.perf_counter() - start
    return TileResult(tile, predictions, diagnostics)
