"""Which GP a tile fits, as one table, and one adapter that fits it and predicts.

A row of the table knows its model: which of the window's observations it takes, how it
is built and fitted (or given the run's shared hyperparameters and only conditioned), and
what it reports about its solve. `ModelTable.row` picks the row for the model type, the
multitask flag and the window's size; `fit_and_predict` runs any row the same way.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from gpkernels import (
    LMCSVGP,
    SVGP,
    ExactGP,
    FitReport,
    Kernel,
    KissGP,
    Lattice,
    MultiScale,
    MultitaskExactGP,
    Product,
    Scale,
    make_kernel,
    seasonal,
)
from pipeline.config import ModelConfig
from pipeline.covariates import Design, universal_moments
from pipeline.tiling import Tile
from pipeline.value_scan import MIN_OBSERVATIONS
from pipeline.work import ModelPlan

KISS_CG_TOL = 1e-4  # relative residual of the mean solve: far below the noise in any field
# Windows with more observations than this go to SVGP: the on-grid solve's vectors and
# local-variance tables would outgrow a worker's memory.
KISS_MAX_OBSERVATIONS = 5_000_000
SVGP_BATCH = 1024
LOVE_ROOT_VALUES = 50_000_000  # 400 MB of float64: the largest variance root a tile keeps


@dataclass(frozen=True)
class Problem:
    """One model's data: inputs `x` and values `y` of the rows it takes (one column per
    variable for multitask models, NaN where missing), the targets `x_core`, the tile's
    seed, the window's lattice (built only when a grid model asks for it), and with
    model.covariates their values at those rows and at the targets."""

    x: np.ndarray
    y: np.ndarray
    x_core: np.ndarray
    seed: int
    lattice: Callable[[], Lattice]
    covariates: np.ndarray | None = None
    target_covariates: np.ndarray | None = None


@dataclass(frozen=True)
class Tensors:
    """A problem's arrays on the device, in the model's dtype."""

    x: torch.Tensor
    y: torch.Tensor
    core: torch.Tensor


class ModelRow(ABC):
    """One model of the table. `fit` returns the fitted model, its report and how many
    observations the hyperparameters were fitted on; `fixed` shared hyperparameters (data
    units) replace the fit where a row takes them."""

    name: ClassVar[str]

    def select(self, values: np.ndarray, tile: Tile, plan: ModelPlan) -> np.ndarray:
        """The window cells (flat indices) the model takes: every observed one."""
        return np.flatnonzero(np.isfinite(values))

    @abstractmethod
    def fit(
        self, plan: ModelPlan, problem: Problem, t: Tensors, fixed: dict | None
    ) -> tuple[object, FitReport, int]: ...

    def solver(self, model) -> dict:  # noqa: ANN001
        """What the model reports about its solve."""
        return _diagnostics(model)


class ExactRow(ModelRow):
    """Dense ExactGP on the `max_points` observations nearest the core: hyperparameters on
    `fit_points` of them at random (L-BFGS, `max_iter`), then conditioned on all."""

    name = "exact"

    def select(self, values: np.ndarray, tile: Tile, plan: ModelPlan) -> np.ndarray:
        observed = np.flatnonzero(np.isfinite(values))
        return nearest_to_core(observed, tile, plan.halo, plan.model.max_points, tile.index)

    def fit(self, plan, problem, t, fixed):  # noqa: ANN001, ANN201
        model = _named(ExactGP(build_kernel(plan), mean=plan.model.tile_mean), plan)
        n = len(problem.y)
        if fixed is not None:
            return model, _condition_on_shared(model, fixed, t), min(plan.model.fit_points, n)
        order = np.random.default_rng(problem.seed).permutation(n)
        fit_idx = np.sort(order[: plan.model.fit_points])
        model.fit(t.x[fit_idx], t.y[fit_idx], max_iter=plan.model.max_iter, seed=problem.seed)
        report = model.fit_report
        model.condition(t.x, t.y)
        return model, report, len(fit_idx)

    def solver(self, model) -> dict:  # noqa: ANN001
        return {"jitter": model.jitter}


class RefinedRow(ModelRow):
    """A model whose hyperparameters start from an exact GP on `fit_points` observations
    (`max_iter` L-BFGS iterations) and are then refined on every observation; `fixed`
    shared hyperparameters replace both fits. A row says how it builds its model, what
    refines it and how many observations the hyperparameters were then fitted on."""

    @abstractmethod
    def build(self, plan: ModelPlan, problem: Problem):  # noqa: ANN201
        """The model, unfitted."""

    @abstractmethod
    def refinement(self, config: ModelConfig) -> dict[str, int]:
        """The model's `fit` budget on all observations, as its keyword arguments."""

    @abstractmethod
    def fitted_on(self, config: ModelConfig, n: int) -> int:
        """How many of the `n` observations the hyperparameters were fitted on."""

    def fit(self, plan, problem, t, fixed):  # noqa: ANN001, ANN201
        config, n = plan.model, len(problem.y)
        model = _named(self.build(plan, problem), plan)
        if fixed is not None:
            return model, _condition_on_shared(model, fixed, t), min(config.fit_points, n)
        model.fit(
            t.x,
            t.y,
            init_points=config.fit_points,
            init_iter=config.max_iter,
            **self.refinement(config),
        )
        return model, model.fit_report, self.fitted_on(config, n)


class KissRow(RefinedRow):
    """KissGP on the window's lattice: `refine_iter` optimiser steps on all observations
    (L-BFGS on the grid) after the exact start, then the exact on-grid solve over every
    observed cell. Targets off the lattice (a new grid) are reached by interpolating the
    data onto it, exactly, as they sit on its nodes."""

    name = "kiss"

    def build(self, plan: ModelPlan, problem: Problem) -> KissGP:
        lattice, config = problem.lattice(), plan.model
        return KissGP(
            build_kernel(plan),
            lattice=lattice,
            interpolate_onto=lattice.padded(2) if plan.off_lattice else None,
            love_rank=_love_rank(len(problem.y), lattice.padded(2).size),
            neighbours=config.neighbours,
            cg_tol=KISS_CG_TOL,
            seed=problem.seed,
            mean=config.tile_mean,
            calibrate=config.calibrate_variance,
        )

    def refinement(self, config: ModelConfig) -> dict[str, int]:
        return {"max_iter": config.refine_iter}

    def fitted_on(self, config: ModelConfig, n: int) -> int:
        return min(config.fit_points, n)


class SvgpRow(RefinedRow):
    """SVGP on every observation of the window (stations, or windows too big for kiss):
    `inducing` points, `epochs` minibatch passes after the exact start."""

    name = "svgp"

    def build(self, plan: ModelPlan, problem: Problem) -> SVGP:
        config = plan.model
        return SVGP(
            build_kernel(plan),
            num_inducing=min(config.inducing, len(problem.y)),
            batch_size=SVGP_BATCH,
            seed=problem.seed,
            mean=config.tile_mean,
        )

    def refinement(self, config: ModelConfig) -> dict[str, int]:
        return {"epochs": config.epochs}

    def fitted_on(self, config: ModelConfig, n: int) -> int:
        return n


class IcmRow(ModelRow):
    """One ICM model (MultitaskExactGP) over the variables that are the columns of y, on
    the rows nearest the core (`max_points` values in all, at least MIN_OBSERVATIONS of
    every variable): kernel from an ExactGP on the first variable, then kernel, the
    variables' covariance (rank `rank`) and per-variable noise on `fit_points` rows."""

    name = "icm"

    def select(self, values: np.ndarray, tile: Tile, plan: ModelPlan) -> np.ndarray:
        rows = np.flatnonzero(np.isfinite(values).any(axis=1))
        limit = max(plan.model.max_points // values.shape[1], MIN_OBSERVATIONS)
        order = nearest_first(rows, tile, plan.halo, tile.index)
        return keeping_every_variable(order[:limit], values, order)

    def fit(self, plan, problem, t, fixed):  # noqa: ANN001, ANN201
        gen = np.random.default_rng(problem.seed)
        kernel = _kernel_from_first_variable(plan, t, gen, problem.seed)
        tasks = problem.y.shape[1]
        model = MultitaskExactGP(kernel, tasks, min(plan.model.rank, tasks), problem.seed)
        order = gen.permutation(len(problem.y))
        fit_idx = keeping_every_variable(order[: plan.model.fit_points], problem.y, order)
        model.fit(t.x[fit_idx], t.y[fit_idx], max_iter=plan.model.max_iter)
        report = model.fit_report
        model.condition(t.x, t.y)
        return model, report, len(fit_idx)

    def solver(self, model) -> dict:  # noqa: ANN001
        return {"jitter": model.jitter}


class LmcRow(ModelRow):
    """LMC SVGP over all variables and every observed row: `rank` latent GPs whose kernel
    starts from an ExactGP on the first variable."""

    name = "lmc"

    def select(self, values: np.ndarray, tile: Tile, plan: ModelPlan) -> np.ndarray:
        return np.flatnonzero(np.isfinite(values).any(axis=1))

    def fit(self, plan, problem, t, fixed):  # noqa: ANN001, ANN201
        gen = np.random.default_rng(problem.seed)
        kernel = _kernel_from_first_variable(plan, t, gen, problem.seed)
        model = LMCSVGP(
            kernel,
            num_outputs=problem.y.shape[1],
            num_latents=max(plan.model.rank, 1),
            num_inducing=min(plan.model.inducing, len(problem.y)),
            batch_size=SVGP_BATCH,
            seed=problem.seed,
        )
        model.fit(t.x, t.y, epochs=plan.model.epochs)
        return model, model.fit_report, len(problem.y)

    def solver(self, model) -> dict:  # noqa: ANN001
        return {}


@dataclass(frozen=True)
class ModelTable:
    """The row for each (model type, multitask); a kiss window with more than
    `kiss_max_observations` observations goes to the svgp row."""

    rows: tuple[tuple[tuple[str, bool], ModelRow], ...] = (
        (("exact", False), ExactRow()),
        (("kiss", False), KissRow()),
        (("svgp", False), SvgpRow()),
        (("exact", True), IcmRow()),
        (("svgp", True), LmcRow()),
    )
    kiss_max_observations: int = KISS_MAX_OBSERVATIONS

    def row(self, model_type: str, multitask: bool, observations: int = 0) -> ModelRow:
        """The model for a window with `observations` observed cells."""
        if model_type == "kiss" and observations > self.kiss_max_observations:
            model_type = "svgp"
        return dict(self.rows)[model_type, multitask]


MODELS = ModelTable()


def fit_and_predict(
    row: ModelRow, plan: ModelPlan, problem: Problem, device: str, fixed: dict | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit `row`'s model to the problem (or condition it on `fixed` shared hyperparameters),
    predict at its targets (std of the field, or of a new observation as the plan asks),
    and collect the diagnostics and timings. With covariates the model is fitted to and
    conditioned on the residuals of their least-squares fit, and its prediction made
    universal kriging's (pipeline/covariates.py)."""
    design = None
    if problem.covariates is not None:
        design = Design.fit(
            problem.covariates, problem.target_covariates, problem.y, plan.model.covariates
        )
        problem = replace(problem, y=design.residuals(problem.y))
    t = Tensors(*tensors(plan, device, problem.x, problem.y, problem.x_core))
    start = time.perf_counter()
    model, report, n_fit = row.fit(plan, problem, t, fixed)
    fitted = time.perf_counter()
    mean, var = model.predict(t.core, include_noise=plan.std_includes_noise)
    regression = None
    if design is not None:
        mean, var, regression = universal_moments(model, design, t.y, t.core, mean, var)
    diagnostics = {
        "model": row.name,
        "fit": report.as_dict(),
        "hyperparameters": model.hyperparameters(),
        "device": str(t.core.device),
        "fit_seconds": fitted - start,
        "predict_seconds": time.perf_counter() - fitted,
        "n_fit": n_fit,
        "n_conditioned": int(np.isfinite(problem.y).sum()),
        "solver": row.solver(model),
    }
    if regression is not None:
        diagnostics["regression"] = regression
    return mean.cpu().numpy(), var.sqrt().cpu().numpy(), diagnostics


def tensors(plan: ModelPlan, device: str, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Arrays as tensors in the plan's dtype, on CUDA when asked for and present."""
    dtype = getattr(torch, plan.model.dtype)
    where = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    return tuple(torch.as_tensor(a, dtype=dtype, device=where) for a in arrays)


def build_kernel(plan: ModelPlan, scales: int | None = None) -> Scale:
    """The kernel the spec names: one factor per input column, except that the `isotropic`
    columns share one factor of their Euclidean distance; with `scales` (the model's by
    default) above 1, that many copies of it summed at different ranges."""
    scales = plan.model.scales if scales is None else scales
    if scales == 1:
        return Scale(_one_range(plan))
    return Scale(MultiScale([Scale(_one_range(plan), 1.0 / scales) for _ in range(scales)]))


def _one_range(plan: ModelPlan) -> Kernel:
    """One copy of the spec's kernel, unscaled: a product of the columns' factors."""
    shared = [plan.columns.index(c) for c in plan.model.isotropic]
    factors = []
    for column, kernel in enumerate(plan.model.kernels):
        if column in shared[1:]:
            continue
        if column in shared[:1]:
            factors.append(make_kernel(kernel.base, dims=shared, isotropic=True))
        elif kernel.period is None:
            factors.append(make_kernel(kernel.base, dims=[column]))
        else:
            factors.append(seasonal(kernel.base, kernel.period, column))
    return factors[0] if shared and len(factors) == 1 else Product(factors)


def trend_kernel(plan: ModelPlan) -> Scale:
    """A smooth kernel for the whole-domain trend: Matérn 3/2 with the spec's grouping of
    columns (the isotropic ones share one factor), no cycle."""
    shared = [plan.columns.index(c) for c in plan.model.isotropic]
    factors = [make_kernel("matern32", dims=shared, isotropic=True)] if shared else []
    factors += [
        make_kernel("matern32", dims=[c]) for c in range(len(plan.columns)) if c not in shared
    ]
    return Scale(factors[0] if len(factors) == 1 else Product(factors))


def nearest_to_core(
    candidates: np.ndarray, tile: Tile, halo: tuple[int, ...], limit: int, seed: int
) -> np.ndarray:
    """The `limit` candidate window cells (flat indices) closest to the tile's core, in
    index order (see nearest_first)."""
    if candidates.size <= limit:
        return candidates
    return np.sort(nearest_first(candidates, tile, halo, seed)[:limit])


def nearest_to_core_centre(candidates: np.ndarray, tile: Tile, limit: int) -> np.ndarray:
    """The `limit` candidate window cells (flat indices) nearest the centre of the tile's
    core, counting cells along every dim: one compact cluster, in index order."""
    if candidates.size <= limit:
        return candidates
    sq = _squared_offsets(candidates, tile, lambda c, core, _: c - (core.start + core.stop - 1) / 2)
    return np.sort(candidates[np.argsort(sq, kind="stable")[:limit]])


def nearest_first(
    candidates: np.ndarray, tile: Tile, halo: tuple[int, ...], seed: int
) -> np.ndarray:
    """The candidate window cells (flat indices), closest to the tile's core first.

    Distance is measured from the core box, per dim in units of that dim's halo, so
    all core cells count as distance 0; ties are broken at random (seeded).
    """

    def outside(c: np.ndarray, core: slice, dim: int) -> np.ndarray:
        beyond = np.maximum(core.start - c, 0) + np.maximum(c - (core.stop - 1), 0)
        return beyond / max(halo[dim], 1)

    sq = _squared_offsets(candidates, tile, outside)
    shuffled = np.random.default_rng(seed).permutation(candidates.size)
    return candidates[shuffled[np.argsort(sq[shuffled], kind="stable")]]


def _squared_offsets(
    candidates: np.ndarray, tile: Tile, offset: Callable[[np.ndarray, slice, int], np.ndarray]
) -> np.ndarray:
    """Per candidate window cell, the sum over dims of offset(its index along the dim, the
    core's slice there, the dim's number) squared."""
    coords = np.unravel_index(candidates, tile.window_shape)
    sq = np.zeros(candidates.size)
    for dim, (c, core) in enumerate(zip(coords, tile.core_in_window, strict=True)):
        sq += offset(c, core, dim) ** 2
    return sq


def keeping_every_variable(chosen: np.ndarray, values: np.ndarray, order: np.ndarray) -> np.ndarray:
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


def _kernel_from_first_variable(plan: ModelPlan, t: Tensors, gen: np.random.Generator, seed: int):  # noqa: ANN202
    """A unit-variance kernel whose lengthscales an ExactGP learned on the first variable
    (column 0 of y, which needs at least 2 observations)."""
    kernel = build_kernel(plan)
    first = np.flatnonzero(np.isfinite(t.y[:, 0].cpu().numpy()))
    start_idx = np.sort(gen.permutation(first)[: plan.model.fit_points])
    ExactGP(kernel).fit(t.x[start_idx], t.y[start_idx, 0], max_iter=plan.model.max_iter, seed=seed)
    return kernel.base


def _named(model, plan: ModelPlan):  # noqa: ANN001, ANN202
    """The model with the input columns' names, for its warnings and notes."""
    model.column_names = plan.columns
    return model


def _condition_on_shared(model, fixed: dict, t: Tensors) -> FitReport:  # noqa: ANN001
    """Set the shared hyperparameters (data units) on `model` and condition it on the data."""
    model.set_shared_hyperparameters(fixed, t.x, t.y)
    model.condition(t.x, t.y)
    reason = f"shared hyperparameters from {fixed['tiles']} sampled tiles"
    return FitReport(0, True, reason, float("nan"), 0.0, 0.0)


def _love_rank(observations: int, nodes: int) -> int:
    """Lanczos rank for variances off the lattice: every observation where the root
    (nodes x rank, float64) stays within LOVE_ROOT_VALUES."""
    return max(64, min(observations, LOVE_ROOT_VALUES // nodes))


def _diagnostics(model) -> dict:  # noqa: ANN001
    """A kiss or svgp model's solver diagnostics (a typed value) as a dict."""
    return model.diagnostics.as_dict()
