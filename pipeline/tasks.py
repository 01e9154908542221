"""One tile's work as a plain function: read its window, fit a GP per variable, predict its core.

Ray runs `predict_tile` remotely (see runner.py); tests and single-machine code call it
directly. A task receives its Tile and a TileWork (how to read the window, the model plan,
the device), never the run's config; which model each variable gets is models.MODELS.
Everything random is seeded by the tile index, so a retry gives the same numbers.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from gpkernels import NumericalWarning
from pipeline.grid import (
    never_observed,
    read_covariates,
    read_window,
    target_inputs,
    target_region,
    window_axes,
    window_inputs,
    window_lattice,
)
from pipeline.models import (
    MODELS,
    ModelTable,
    Problem,
    fit_and_predict,
)
from pipeline.store import std_name
from pipeline.tiling import Tile, TileResult
from pipeline.value_scan import MIN_OBSERVATIONS
from pipeline.work import TileWork

# Observations whose range is within this fraction of their magnitude count as constant: a
# few float32 rounding steps, a field with nothing for a GP to learn (zero precipitation).
CONSTANT_RTOL = 1e-6


class DegenerateTileWarning(NumericalWarning):
    """A tile's variable was predicted without a GP: its observations are (nearly) constant."""


def constant_observations(values: np.ndarray) -> str | None:
    """Why finite `values` (at least one) count as constant, or None when they vary.

    Constant: their range is at most CONSTANT_RTOL of their largest magnitude (all
    equal, all zero, or equal to float32 rounding). A GP learns nothing from such data:
    the variance to standardise by is zero, and no lengthscale or noise is identifiable.
    """
    low, high = float(values.min()), float(values.max())
    if high - low > CONSTANT_RTOL * max(abs(low), abs(high)):
        return None
    if low == high:
        return f"constant: all {values.size} observations equal {low!r}"
    return f"constant: all {values.size} observations within {low!r} to {high!r}"


def predict_constant(
    values: np.ndarray, cells: int, fixed: dict | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Mean and std at `cells` targets for (nearly) constant observations, and how the std
    was chosen.

    The mean is the observations' mean. The std is the noise std: the shared noise when the
    run pooled hyperparameters, else the observations' own standard deviation, floored at
    the resolution of the stored values there (one unit in the last place of the largest
    magnitude, in their dtype), since data that show no spread can claim no less.
    """
    mean = float(values.astype(np.float64).mean())
    if fixed is not None:
        std, how = float(np.sqrt(fixed["noise"])), "the shared noise std"
    else:
        resolution = float(np.spacing(np.abs(values).max()))
        std = max(float(values.astype(np.float64).std()), resolution)
        how = f"the observations' std, at least their resolution {resolution:.3g}"
    return np.full(cells, mean), np.full(cells, std), how


@dataclass(frozen=True)
class _Window:
    """A tile being predicted: its work and table, the opened input, the window's GP inputs,
    the targets' inputs, the shape its predictions are written in, and the covariates at
    the window's cells and at the targets (None without model.covariates)."""

    work: TileWork
    models: ModelTable
    tile: Tile
    ds: object  # the opened input (xarray Dataset)
    x: np.ndarray
    x_core: np.ndarray
    shape: tuple[int, ...]
    covariates: np.ndarray | None = None
    target_covariates: np.ndarray | None = None


def predict_tile(work: TileWork, tile: Tile, models: ModelTable = MODELS) -> TileResult:
    """Read the tile's window, fit and predict each variable, return core mean and std."""
    start = time.perf_counter()
    source = work.source
    ds = source.open()
    x = window_inputs(source, tile, ds)
    covariates = read_covariates(source, tile, ds)
    target_covariates = None
    if source.regrid:  # predict the new grid's cells that fall in this tile's core
        written = replace(tile, core=target_region(source, tile, ds), output=None)
        x_core = target_inputs(source, written.core, ds)
    else:
        written = tile
        predicted = np.zeros(tile.window_shape, dtype=bool)
        predicted[tile.output_in_window] = True
        x_core = x[predicted.reshape(-1)]
        if covariates is not None:  # covariates come with the input's own grid only
            target_covariates = covariates[predicted.reshape(-1)]
    window = _Window(
        work, models, tile, ds, x, x_core, written.output_shape, covariates, target_covariates
    )
    diagnostics: dict = {"tile": tile.index}
    if not len(x_core):  # a new grid may have no cell inside this tile's core
        empty = np.full(window.shape, np.nan)
        predictions = {n: empty for v in source.variables for n in (v, std_name(v))}
        diagnostics["variables"] = dict.fromkeys(source.variables, {"status": "no target cells"})
    elif work.plan.model.multitask:
        predictions, diagnostics["variables"] = _predict_variables_jointly(window)
    else:
        predictions, diagnostics["variables"] = _predict_variables_apart(window)
    if source.never_observed_along:
        for var in source.variables:
            mask = never_observed(source, tile, ds, var)
            for name in (var, std_name(var)):
                predictions[name] = np.where(mask, np.nan, predictions[name])
    diagnostics["seconds"] = time.perf_counter() - start
    diagnostics["worker_pid"] = os.getpid()
    return TileResult(written, predictions, diagnostics)


def _predict_variables_apart(window: _Window) -> tuple[dict[str, np.ndarray], dict]:
    """One model per variable (by the table, from the model type and the window's size),
    none for too few or constant observations: predictions and per-variable diagnostics."""
    predictions: dict[str, np.ndarray] = {}
    diagnostics: dict = {}
    for var in window.work.source.variables:
        values, observed, info = _read_variable(window, var)
        without = _predict_without_gp(window, var, values[observed], info)
        if without is None:
            mean, std, fit_info = _fit_variable(window, var, values)
            info.update(fit_info)
        else:
            mean, std = without
        predictions[var] = mean.reshape(window.shape)
        predictions[std_name(var)] = std.reshape(window.shape)
        diagnostics[var] = info
    return predictions, diagnostics


def _predict_variables_jointly(window: _Window) -> tuple[dict[str, np.ndarray], dict]:
    """The multitask branch of predict_tile: predictions and per-variable diagnostics.

    A variable with too few or constant observations is left NaN or predicted as its
    constant, as in the apart path: the joint model standardises every variable by its
    own observations and has nothing to learn from these. The others share one model,
    on the rows its table row takes; a single one left is fitted alone, exactly as the
    apart path fits it.
    """
    shape, variables = window.shape, window.work.source.variables
    predictions: dict[str, np.ndarray] = {}
    diagnostics: dict = {}
    fitted: dict[str, np.ndarray] = {}  # the window's values of the variables left to fit
    for var in variables:
        values, observed, info = _read_variable(window, var)
        diagnostics[var] = info
        without = _predict_without_gp(window, var, values[observed], info)
        if without is None:
            fitted[var] = values
        else:
            predictions[var], predictions[std_name(var)] = (a.reshape(shape) for a in without)
    if len(fitted) == 1:
        ((var, values),) = fitted.items()
        mean, std, fit_info = _fit_variable(window, var, values)
        diagnostics[var].update(fit_info)
        predictions[var], predictions[std_name(var)] = mean.reshape(shape), std.reshape(shape)
    elif fitted:
        mean, std, info = _fit_jointly(window, np.stack(list(fitted.values()), axis=1))
        for t, var in enumerate(fitted):
            diagnostics[var].update(info, status="ok", joint_variables=list(fitted))
            predictions[var] = mean[:, t].reshape(shape)
            predictions[std_name(var)] = std[:, t].reshape(shape)
    names = [n for v in variables for n in (v, std_name(v))]
    return {n: predictions[n] for n in names}, diagnostics


def _read_variable(window: _Window, var: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The window's values of `var` (flat, NaN where missing), the observed cells, and
    the variable's diagnostics begun: how many were observed and how long the read took."""
    read_start = time.perf_counter()
    values = read_window(window.work.source, window.tile, window.ds, var).reshape(-1)
    observed = np.flatnonzero(np.isfinite(values))
    info = {"n_observed": int(observed.size), "read_seconds": time.perf_counter() - read_start}
    return values, observed, info


def _predict_without_gp(
    window: _Window, var: str, observations: np.ndarray, info: dict
) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std at the window's targets for a variable no GP can learn from, or None
    when one can.

    Fewer than MIN_OBSERVATIONS `observations` (the finite values) give NaN and `info["skipped"]`;
    (nearly) constant ones give their constant (predict_constant), `info["degenerate"]`
    and a DegenerateTileWarning, since a GP would have no variance to standardise by.
    """
    cells = len(window.x_core)
    if observations.size < MIN_OBSERVATIONS:
        plural = "" if observations.size == 1 else "s"
        info["skipped"] = f"{observations.size} observation{plural}, fewer than {MIN_OBSERVATIONS}"
        info["status"] = f"skipped: {info['skipped']}"
        return np.full(cells, np.nan), np.full(cells, np.nan)
    constant = constant_observations(observations)
    if constant is None:
        return None
    mean, std, how = predict_constant(observations, cells, window.work.plan.fixed(var))
    info.update(degenerate=constant, status=f"degenerate: {constant}", model="constant")
    warnings.warn(
        f"tile {window.tile.index}, variable {var!r}: {constant}; predicted that mean "
        f"{float(mean[0])!r} with std {float(std[0]):.3g} ({how}) instead of fitting a GP, "
        "which has no variance to learn from",
        DegenerateTileWarning,
        stacklevel=3,
    )
    return mean, std


def _fit_variable(
    window: _Window, var: str, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Variable `var`'s GP on the window's `values` (flat, NaN where missing), the table's
    row for the model type and the number observed, with the run's shared hyperparameters
    where it has them; its mean and std at the targets and its diagnostics, with the status."""
    plan = window.work.plan
    observed = int(np.isfinite(values).sum())
    row = window.models.row(plan.model.type, False, observed)
    trend = plan.trend(var)
    if trend is not None:  # the tile's GP models what the whole-domain trend leaves
        values = values - trend.at(window.x)
    mean, std, info = _run_row(window, row, values, plan.fixed(var))
    if trend is not None:
        mean = mean + trend.at(window.x_core)
    converged = info["solver"].get("cg_converged", True)
    info["status"] = "ok" if converged else "solve did not converge"
    return mean, std, info


def _fit_jointly(window: _Window, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """One multitask model over the columns of `values` (each a variable, NaN where
    missing; each with at least MIN_OBSERVATIONS observations, not all equal)."""
    row = window.models.row(window.work.plan.model.type, True)
    return _run_row(window, row, values, None)


def _run_row(window: _Window, row, values: np.ndarray, fixed: dict | None) -> tuple:  # noqa: ANN001
    """Fit and predict `row`'s model on the window cells it selects from `values`."""
    work, tile = window.work, window.tile
    used = row.select(values, tile, work.plan)
    problem = Problem(
        window.x[used],
        values[used],
        window.x_core,
        tile.index,
        lambda: window_lattice(window_axes(work.source, tile, window.ds), work.source.dims),
        None if window.covariates is None else window.covariates[used],
        window.target_covariates,
    )
    return fit_and_predict(row, work.plan, problem, work.device, fixed)
