"""One tile's work as a plain function: read its window, fit a GP per variable, predict its core.

Ray runs `predict_tile` remotely (see runner.py); tests and single-machine code call it
directly. Everything random is seeded by the tile index, so a retry gives the same numbers.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from gpkernels import (
    LMCSVGP,
    SVGP,
    ExactGP,
    FitReport,
    KissGP,
    Lattice,
    MultitaskExactGP,
    NumericalWarning,
    Product,
    Scale,
    make_kernel,
    seasonal,
    separable,
)
from pipeline.config import PipelineConfig, parse_axis_kernel
from pipeline.grid import (
    never_observed,
    read_window,
    target_inputs,
    target_region,
    window_axes,
    window_inputs,
    window_lattice,
)
from pipeline.inputs import open_input
from pipeline.store import std_name
from pipeline.tiling import Tile, TileResult
from pipeline.value_scan import MIN_OBSERVATIONS

KISS_CG_TOL = 1e-4  # relative residual of the mean solve: far below the noise in any field
# Windows with more observations than this go to SVGP: the on-grid solve's vectors and
# local-variance tables would outgrow a worker's memory.
KISS_MAX_OBSERVATIONS = 5_000_000
SVGP_BATCH = 1024
LOVE_ROOT_VALUES = 50_000_000  # 400 MB of float64: the largest variance root a tile keeps
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


def nearest_to_core(
    candidates: np.ndarray, tile: Tile, halo: tuple[int, ...], limit: int, seed: int
) -> np.ndarray:
    """The `limit` candidate window cells (flat indices) closest to the tile's core, in
    index order (see nearest_first)."""
    if candidates.size <= limit:
        return candidates
    return np.sort(nearest_first(candidates, tile, halo, seed)[:limit])


def nearest_first(
    candidates: np.ndarray, tile: Tile, halo: tuple[int, ...], seed: int
) -> np.ndarray:
    """The candidate window cells (flat indices), closest to the tile's core first.

    Distance is measured from the core box, per dim in units of that dim's halo, so
    all core cells count as distance 0; ties are broken at random (seeded).
    """
    coords = np.unravel_index(candidates, tile.window_shape)
    sq = np.zeros(candidates.size)
    for c, core, h in zip(coords, tile.core_in_window, halo, strict=True):
        outside = np.maximum(core.start - c, 0) + np.maximum(c - (core.stop - 1), 0)
        sq += (outside / max(h, 1)) ** 2
    shuffled = np.random.default_rng(seed).permutation(candidates.size)
    return candidates[shuffled[np.argsort(sq[shuffled], kind="stable")]]


def _kernel(config: PipelineConfig):  # noqa: ANN202
    """The kernel the spec names: one factor per input column, except that the `isotropic`
    columns share one factor of their Euclidean distance."""
    shared = [config.input_columns.index(c) for c in config.model.isotropic]
    factors = []
    for column, text in enumerate(config.model.kernels):
        base, period = parse_axis_kernel(text)
        if column in shared[1:]:
            continue
        if column in shared[:1]:
            factors.append(make_kernel(base, dims=shared, isotropic=True))
        else:
            factors.append(
                make_kernel(base, dims=[column])
                if period is None
                else seasonal(base, period, column)
            )
    if shared and len(factors) == 1:
        return Scale(factors[0])
    if shared:
        return Scale(Product(factors))
    return separable(factors)


def _tensors(config: PipelineConfig, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    dtype = getattr(torch, config.model.dtype)
    device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return tuple(torch.as_tensor(a, dtype=dtype, device=device) for a in arrays)


def _fit_and_predict(
    model,  # noqa: ANN001
    fit,  # noqa: ANN001
    x_core: torch.Tensor,
    config: PipelineConfig,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run `fit()`, predict at x_core (std of the field, or of a new observation as the
    config asks), and collect the timings and diagnostics."""
    start = time.perf_counter()
    report = fit()
    fitted = time.perf_counter()
    mean, var = model.predict(x_core, include_noise=config.std_includes_noise)
    diagnostics = {
        "fit": report.as_dict(),
        "hyperparameters": model.hyperparameters(),
        "device": str(x_core.device),
        "fit_seconds": fitted - start,
        "predict_seconds": time.perf_counter() - fitted,
    }
    return mean.cpu().numpy(), var.sqrt().cpu().numpy(), diagnostics


def predict_exact(
    x: np.ndarray,
    y: np.ndarray,
    x_core: np.ndarray,
    config: PipelineConfig,
    seed: int,
    fixed: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """ExactGP: hyperparameters on a subsample (or `fixed` shared ones), then condition on
    all of (x, y)."""
    tx, ty, tc = _tensors(config, x, y, x_core)
    fit_idx = np.sort(np.random.default_rng(seed).permutation(len(y))[: config.model.fit_points])
    model = ExactGP(_kernel(config), mean=config.model.mean)
    model.column_names = config.input_columns

    def fit():  # noqa: ANN202
        if fixed is not None:
            return _condition_on_shared(model, fixed, tx, ty)
        report = model.fit(
            tx[fit_idx], ty[fit_idx], max_iter=config.model.max_iter, seed=seed
        ).fit_report
        model.condition(tx, ty)
        return report

    mean, std, info = _fit_and_predict(model, fit, tc, config)
    info.update(n_fit=len(fit_idx), n_conditioned=len(y), solver={"jitter": model.jitter})
    return mean, std, info


def predict_kiss(
    x: np.ndarray,
    y: np.ndarray,
    x_core: np.ndarray,
    lattice: Lattice,
    config: PipelineConfig,
    seed: int,
    fixed: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """KissGP on the window's lattice: every observed cell enters the exact on-grid solve.
    With `fixed` shared hyperparameters it only conditions. A new target grid lies off the
    lattice: the data are then interpolated onto it (exactly, as they sit on its nodes),
    which lets the model predict anywhere inside."""
    tx, ty, tc = _tensors(config, x, y, x_core)
    model = KissGP(
        _kernel(config),
        lattice=lattice,
        interpolate_onto=lattice.padded(2) if config.regrid else None,
        love_rank=_love_rank(len(y), lattice.padded(2).size),
        neighbours=config.model.neighbours,
        cg_tol=KISS_CG_TOL,
        seed=seed,
        mean=config.model.mean,
        calibrate=config.model.calibrate_variance,
    )
    model.column_names = config.input_columns

    def fit():  # noqa: ANN202
        if fixed is not None:
            return _condition_on_shared(model, fixed, tx, ty)
        return model.fit(
            tx, ty, max_iter=config.model.refine_iter, init_points=config.model.fit_points
        ).fit_report

    mean, std, info = _fit_and_predict(model, fit, tc, config)
    info.update(
        n_fit=min(config.model.fit_points, len(y)),
        n_conditioned=len(y),
        solver=dict(model.diagnostics),
    )
    return mean, std, info


def _love_rank(observations: int, nodes: int) -> int:
    """Lanczos rank for variances off the lattice: every observation where the root
    (nodes x rank, float64) stays within LOVE_ROOT_VALUES."""
    return max(64, min(observations, LOVE_ROOT_VALUES // nodes))


def _condition_on_shared(model, fixed: dict, tx: torch.Tensor, ty: torch.Tensor) -> FitReport:  # noqa: ANN001
    """Set the shared hyperparameters (data units) on `model` and condition it on (tx, ty)."""
    model.set_separable_hyperparameters(fixed, tx, ty)
    model.condition(tx, ty)
    reason = f"shared hyperparameters from {fixed['tiles']} sampled tiles"
    return FitReport(0, True, reason, float("nan"), 0.0, 0.0)


def fit_tile_hyperparameters(config: PipelineConfig, tile: Tile) -> dict[str, dict | None]:
    """Phase 1 on one sampled tile: per variable, an ExactGP's hyperparameters (L-BFGS on the
    `fit_points` observations nearest the core), in the data's units; None when too few
    or constant."""
    ds = open_input(config.input_path)
    x = window_inputs(config, tile, ds)
    found: dict[str, dict | None] = {}
    for var in config.variables:
        values = read_window(config, tile, ds, var).reshape(-1)
        observed = np.flatnonzero(np.isfinite(values))
        if observed.size < max(MIN_OBSERVATIONS, 10) or constant_observations(values[observed]):
            found[var] = None  # too few, or constant: no hyperparameters to learn
            continue
        used = nearest_to_core(observed, tile, config.halo, config.model.fit_points, tile.index)
        tx, ty = _tensors(config, x[used], values[used])
        model = ExactGP(_kernel(config), mean=config.model.mean)
        model.fit(tx, ty, max_iter=config.model.max_iter, seed=tile.index)
        found[var] = model.separable_hyperparameters()
    return found


def predict_svgp(
    x: np.ndarray, y: np.ndarray, x_core: np.ndarray, config: PipelineConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """SVGP on every observation of the window (stations, or windows too big for kiss)."""
    tx, ty, tc = _tensors(config, x, y, x_core)
    model = SVGP(
        _kernel(config),
        num_inducing=min(config.model.inducing, len(y)),
        batch_size=SVGP_BATCH,
        seed=seed,
        mean=config.model.mean,
    )
    model.column_names = config.input_columns

    def fit():  # noqa: ANN202
        return model.fit(
            tx, ty, epochs=config.model.epochs, init_points=config.model.fit_points
        ).fit_report

    mean, std, info = _fit_and_predict(model, fit, tc, config)
    info.update(n_fit=len(y), n_conditioned=len(y), solver=dict(model.diagnostics))
    return mean, std, info


def _keeping_every_variable(
    chosen: np.ndarray, values: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """The rows `chosen` of `values` (one column per variable), sorted, plus, for each
    variable with fewer than MIN_OBSERVATIONS observations in them, its first
    MIN_OBSERVATIONS observed rows in `order` (the candidate rows, most wanted first).

    A joint model standardises every variable by its own observations in the rows it is
    given, so a subset drawn over all rows must not miss a sparsely observed variable.
    Where every variable is well covered, this is just `chosen`.
    """
    short = [
        order[np.isfinite(values[order, t])][:MIN_OBSERVATIONS]
        for t in range(values.shape[1])
        if np.isfinite(values[chosen, t]).sum() < MIN_OBSERVATIONS
    ]
    return np.union1d(chosen, np.concatenate(short)) if short else np.sort(chosen)


def predict_multitask(
    x: np.ndarray, values: np.ndarray, x_core: np.ndarray, config: PipelineConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One ICM model over the variables that are the columns of `values` (NaN where
    missing; each needs at least MIN_OBSERVATIONS observations, not all equal).

    The kernel starts from an ExactGP fit to the first variable's observations; then
    kernel, the variables' covariance (rank `rank`, at most their number) and
    per-variable noise are learned on `fit_points` random rows (and a few more where a
    variable has fewer than MIN_OBSERVATIONS there), and the model conditions on all.
    """
    tx, ty, tc = _tensors(config, x, values, x_core)
    gen = np.random.default_rng(seed)
    kernel = _kernel_from_first_variable(config, tx, ty, gen, seed)
    if config.model.type == "svgp":
        return _predict_lmc(kernel, tx, ty, tc, config, seed)
    tasks = values.shape[1]
    model = MultitaskExactGP(kernel, tasks, min(config.model.rank, tasks), seed)
    order = gen.permutation(len(values))
    fit_idx = _keeping_every_variable(order[: config.model.fit_points], values, order)

    def fit():  # noqa: ANN202
        report = model.fit(tx[fit_idx], ty[fit_idx], max_iter=config.model.max_iter).fit_report
        model.condition(tx, ty)
        return report

    mean, std, info = _fit_and_predict(model, fit, tc, config)
    info.update(n_fit=len(fit_idx), n_conditioned=int(np.isfinite(values).sum()))
    info["solver"] = {"jitter": model.jitter}
    return mean, std, info


def _kernel_from_first_variable(
    config: PipelineConfig,
    tx: torch.Tensor,
    ty: torch.Tensor,
    gen: np.random.Generator,
    seed: int,
):  # noqa: ANN202
    """A unit-variance kernel whose lengthscales an ExactGP learned on the first variable
    (column 0 of `ty`, which needs at least 2 observations)."""
    kernel = _kernel(config)
    first = np.flatnonzero(np.isfinite(ty[:, 0].cpu().numpy()))
    start_idx = np.sort(gen.permutation(first)[: config.model.fit_points])
    ExactGP(kernel).fit(tx[start_idx], ty[start_idx, 0], max_iter=config.model.max_iter, seed=seed)
    return kernel.base


def _predict_lmc(kernel, tx, ty, tc, config: PipelineConfig, seed: int) -> tuple:  # noqa: ANN001
    """LMC SVGP over all variables: `rank` latent GPs, every observed row of the window."""
    model = LMCSVGP(
        kernel,
        num_outputs=ty.shape[1],
        num_latents=max(config.model.rank, 1),
        num_inducing=min(config.model.inducing, ty.shape[0]),
        batch_size=SVGP_BATCH,
        seed=seed,
    )

    def fit():  # noqa: ANN202
        return model.fit(tx, ty, epochs=config.model.epochs).fit_report

    mean, std, info = _fit_and_predict(model, fit, tc, config)
    info.update(n_fit=ty.shape[0], n_conditioned=int(torch.isfinite(ty).sum()), solver={})
    return mean, std, info


def _predict_variables_jointly(
    config: PipelineConfig,
    tile: Tile,
    ds,  # noqa: ANN001
    x: np.ndarray,
    x_core: np.ndarray,
    shape: tuple[int, ...],
) -> tuple[dict[str, np.ndarray], dict]:
    """The multitask branch of predict_tile: predictions and per-variable diagnostics.

    A variable with too few or constant observations is left NaN or predicted as its
    constant, as in the apart path: the joint model standardises every variable by its
    own observations and has nothing to learn from these. The others share one model,
    on the rows where any of them is observed, nearest first; a single one left is
    fitted alone, exactly as the apart path fits it.
    """
    predictions: dict[str, np.ndarray] = {}
    diagnostics: dict = {}
    fitted: dict[str, np.ndarray] = {}  # the window's values of the variables left to fit
    for var in config.variables:
        values, observed, info = _read_variable(config, tile, ds, var)
        diagnostics[var] = info
        without = _predict_without_gp(config, tile, var, values[observed], len(x_core), info)
        if without is None:
            fitted[var] = values
        else:
            predictions[var], predictions[std_name(var)] = (a.reshape(shape) for a in without)
    if len(fitted) == 1:
        ((var, values),) = fitted.items()
        mean, std, fit_info = _fit_variable(config, tile, ds, x, x_core, var, values)
        diagnostics[var].update(fit_info)
        predictions[var], predictions[std_name(var)] = mean.reshape(shape), std.reshape(shape)
    elif fitted:
        values = np.stack(list(fitted.values()), axis=1)
        rows = np.flatnonzero(np.isfinite(values).any(axis=1))
        if config.model.type == "svgp":
            used = rows
        else:
            limit = max(config.model.max_points // len(fitted), MIN_OBSERVATIONS)
            order = nearest_first(rows, tile, config.halo, tile.index)
            used = _keeping_every_variable(order[:limit], values, order)
        mean, std, info = predict_multitask(x[used], values[used], x_core, config, tile.index)
        for t, var in enumerate(fitted):
            diagnostics[var].update(info, status="ok", joint_variables=list(fitted))
            predictions[var] = mean[:, t].reshape(shape)
            predictions[std_name(var)] = std[:, t].reshape(shape)
    names = [n for v in config.variables for n in (v, std_name(v))]
    return {n: predictions[n] for n in names}, diagnostics


def predict_tile(config: PipelineConfig, tile: Tile) -> TileResult:
    """Read the tile's window, fit and predict each variable, return core mean and std."""
    start = time.perf_counter()
    ds = open_input(config.input_path)
    x = window_inputs(config, tile, ds)
    if config.regrid:  # predict the new grid's cells that fall in this tile's core
        written = replace(tile, core=target_region(config, tile, ds), output=None)
        x_core = target_inputs(config, written.core, ds)
    else:
        written = tile
        predicted = np.zeros(tile.window_shape, dtype=bool)
        predicted[tile.output_in_window] = True
        x_core = x[predicted.reshape(-1)]
    diagnostics: dict = {"tile": tile.index}
    shape = written.output_shape
    if not len(x_core):  # a new grid may have no cell inside this tile's core
        empty = np.full(shape, np.nan)
        predictions = {n: empty for v in config.variables for n in (v, std_name(v))}
        diagnostics["variables"] = dict.fromkeys(config.variables, {"status": "no target cells"})
    elif config.model.multitask:
        predictions, diagnostics["variables"] = _predict_variables_jointly(
            config, tile, ds, x, x_core, shape
        )
    else:
        predictions, diagnostics["variables"] = _predict_variables_apart(
            config, tile, ds, x, x_core, shape
        )
    if config.never_observed_along:
        for var in config.variables:
            mask = never_observed(config, tile, ds, var)
            for name in (var, std_name(var)):
                predictions[name] = np.where(mask, np.nan, predictions[name])
    diagnostics["seconds"] = time.perf_counter() - start
    diagnostics["worker_pid"] = os.getpid()
    return TileResult(written, predictions, diagnostics)


def _predict_variables_apart(
    config: PipelineConfig,
    tile: Tile,
    ds,  # noqa: ANN001
    x: np.ndarray,
    x_core: np.ndarray,
    shape: tuple[int, ...],
) -> tuple[dict[str, np.ndarray], dict]:
    """One model per variable (kiss, exact or svgp by config and size), none for too few or
    constant observations: predictions and per-variable diagnostics."""
    predictions: dict[str, np.ndarray] = {}
    diagnostics: dict = {}
    for var in config.variables:
        values, observed, info = _read_variable(config, tile, ds, var)
        without = _predict_without_gp(config, tile, var, values[observed], len(x_core), info)
        if without is None:
            mean, std, fit_info = _fit_variable(config, tile, ds, x, x_core, var, values)
            info.update(fit_info)
        else:
            mean, std = without
        predictions[var] = mean.reshape(shape)
        predictions[std_name(var)] = std.reshape(shape)
        diagnostics[var] = info
    return predictions, diagnostics


def _read_variable(
    config: PipelineConfig,
    tile: Tile,
    ds,  # noqa: ANN001
    var: str,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The window's values of `var` (flat, NaN where missing), the observed cells, and
    the variable's diagnostics begun: how many were observed and how long the read took."""
    read_start = time.perf_counter()
    values = read_window(config, tile, ds, var).reshape(-1)
    observed = np.flatnonzero(np.isfinite(values))
    info = {"n_observed": int(observed.size), "read_seconds": time.perf_counter() - read_start}
    return values, observed, info


def _predict_without_gp(
    config: PipelineConfig, tile: Tile, var: str, observations: np.ndarray, cells: int, info: dict
) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std at `cells` targets for a variable no GP can learn from, or None when
    one can.

    Fewer than MIN_OBSERVATIONS `observations` (the finite values) give NaN and `info["skipped"]`;
    (nearly) constant ones give their constant (predict_constant), `info["degenerate"]`
    and a DegenerateTileWarning, since a GP would have no variance to standardise by.
    """
    if observations.size < MIN_OBSERVATIONS:
        plural = "" if observations.size == 1 else "s"
        info["skipped"] = f"{observations.size} observation{plural}, fewer than {MIN_OBSERVATIONS}"
        info["status"] = f"skipped: {info['skipped']}"
        return np.full(cells, np.nan), np.full(cells, np.nan)
    constant = constant_observations(observations)
    if constant is None:
        return None
    fixed = (config.shared_hyperparameters or {}).get(var)
    mean, std, how = predict_constant(observations, cells, fixed)
    info.update(degenerate=constant, status=f"degenerate: {constant}", model="constant")
    warnings.warn(
        f"tile {tile.index}, variable {var!r}: {constant}; predicted that mean "
        f"{float(mean[0])!r} with std {float(std[0]):.3g} ({how}) instead of fitting a GP, "
        "which has no variance to learn from",
        DegenerateTileWarning,
        stacklevel=3,
    )
    return mean, std


def _fit_variable(
    config: PipelineConfig,
    tile: Tile,
    ds,  # noqa: ANN001
    x: np.ndarray,
    x_core: np.ndarray,
    var: str,
    values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Variable `var`'s GP on the window's `values` (flat, NaN where missing): svgp, kiss
    or an exact GP on the observations nearest the core, by config and size, with the
    run's shared hyperparameters where it has them; its mean and std at x_core and its
    fit diagnostics, with the status."""
    fixed = (config.shared_hyperparameters or {}).get(var)
    observed = np.flatnonzero(np.isfinite(values))
    use_svgp = config.model.type == "svgp" or (
        config.model.type == "kiss" and observed.size > KISS_MAX_OBSERVATIONS
    )
    if use_svgp:
        mean, std, info = predict_svgp(x[observed], values[observed], x_core, config, tile.index)
        info["model"] = "svgp"
    elif config.model.type == "kiss":
        lattice = window_lattice(window_axes(config, tile, ds), config.dims)
        mean, std, info = predict_kiss(
            x[observed], values[observed], x_core, lattice, config, tile.index, fixed
        )
    else:
        used = nearest_to_core(observed, tile, config.halo, config.model.max_points, tile.index)
        mean, std, info = predict_exact(x[used], values[used], x_core, config, tile.index, fixed)
    converged = info["solver"].get("cg_converged", True)
    info["status"] = "ok" if converged else "solve did not converge"
    return mean, std, info
