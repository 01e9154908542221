"""What the pipeline needs to run one job, as plain picklable values built by jobs/ from specs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.selection import Selection
from pipeline.storage import Location

AXIS_KERNELS = ("rbf", "matern12", "matern32", "matern52")
_AXIS_KERNEL = re.compile(
    r"^\s*(?P<base>[a-z0-9]+)\s*(\+\s*periodic\(\s*(?P<period>[0-9]*\.?[0-9]+)\s*\)\s*)?$"
)


@dataclass(frozen=True)
class AxisKernel:
    """One input column's kernel: a stationary `base` (rbf, matern12/32/52), times a repeating
    cycle of `period` (the column's units, days for datetimes) where one is given."""

    base: str
    period: float | None = None

    @classmethod
    def parse(cls, text: str) -> AxisKernel:
        """`matern32` or `matern32 + periodic(365.25)`; the one place kernel text is read."""
        found = _AXIS_KERNEL.match(text)
        period = float(found["period"]) if found and found["period"] else None
        if not found or found["base"] not in AXIS_KERNELS or period == 0:
            raise ValueError(
                f"kernel {text!r} is not one of {', '.join(AXIS_KERNELS)}, optionally plus a "
                "positive period, e.g. 'matern32 + periodic(365.25)'"
            )
        return cls(found["base"], period)

    def __str__(self) -> str:
        if self.period is None:
            return self.base
        return f"{self.base} + periodic({np.format_float_positional(self.period, trim='-')})"


@dataclass(frozen=True)
class ModelConfig:
    """The per-tile GP: its type, one kernel name per input column, and its budgets.

    kiss: hyperparameters from an exact GP on `fit_points` observations (L-BFGS,
    `max_iter`), refined by `refine_iter` optimiser steps on the whole window (L-BFGS
    on grids), then an exact on-grid solve over every observed cell; variances by local kriging on
    `neighbours` observations. exact: dense GP on at most `max_points` observations;
    with `multitask`, one ICM model (variables' covariance of rank `rank`) over all
    variables, on at most `max_points` observed values. svgp: every observation of the
    window, `inducing` inducing points, `epochs` minibatch passes; with `multitask`,
    an LMC model with `rank` latent GPs. `isotropic` columns share one kernel of their
    Euclidean distance (kiss then solves by FFT and CG, keeping the subsample fit);
    `mean` is the prior mean: a constant or a linear trend fitted per tile, or a trend
    over the whole domain (see pipeline/trend.py) under constant-mean tiles. With
    `scales` 2 the kernel is a sum of two copies of itself at different ranges (kiss
    then solves by FFT and CG, keeping the subsample fit).
    """

    # one per input column (see PipelineConfig.input_columns); None: chosen by the data
    # before the tiles (pipeline/kernel_choice.py)
    kernels: tuple[AxisKernel, ...] | None
    type: str = "kiss"
    fit_points: int = 400
    max_points: int = 2000
    max_iter: int = 100
    refine_iter: int = 0
    neighbours: int = 128
    dtype: str = "float64"
    multitask: bool = False
    rank: int = 1
    inducing: int = 256
    epochs: int = 3
    hyperparameters: str = "per_tile"  # or "shared": learned on a sample of tiles first
    isotropic: tuple[str, ...] = ()  # input columns sharing one Euclidean-distance factor
    # or "linear": a least-squares trend per tile; or "domain": a smooth GP trend over the
    # whole grid (fitted on `trend_points` observations across it) under constant-mean tiles
    mean: str = "constant"
    trend_points: int = 600
    # other variables of the input that each tile's mean regresses on (universal kriging)
    covariates: tuple[str, ...] = ()
    calibrate_variance: bool = False  # kiss: variance scale by conformal hold-out of gaps
    # copies of the kernel at different ranges, summed (gpkernels.MultiScale): 2 gives
    # short-range variation near the data and a long range deep in gaps
    scales: int = 1

    @property
    def tile_mean(self) -> str:
        """The prior mean of each tile's own GP: under a domain trend, a constant."""
        return "constant" if self.mean == "domain" else self.mean


@dataclass(frozen=True)
class Forecast:
    """Predict the `steps` cells that follow the data along `dim` (time), as issued at
    `issue_time` (ISO 8601; None: the last time in the data): only data at or before the
    issue time are read. The driver fills in `issue` (the resolved issue time), `history`
    (how many steps of data precede the target) and `step` (the spacing in coordinate
    units, days for datetimes), so tiles can read back into the history."""

    dim: str
    steps: int
    issue_time: str | None = None
    issue: str | None = None
    history: int = 0
    step: float = 0.0


@dataclass(frozen=True)
class PipelineConfig:
    """A gap-filling run over a (time, lat, lon)-like grid, predicting every grid cell.

    With `station_dim` the data are scattered: along that dim sit stations whose
    positions are the coordinates `station_coords` (e.g. lat, lon), the GP's inputs are
    the other dims' coordinates plus those, and every tile holds all stations.
    """

    input_path: str
    variables: tuple[str, ...]
    dims: tuple[str, ...]
    output_path: str
    tile: tuple[int, ...]
    halo: tuple[int, ...]
    model: ModelConfig
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_in_flight: int = 4
    overwrite: bool = False
    spec_text: str = ""
    station_dim: str | None = None
    station_coords: tuple[str, ...] = ()
    # cells per side over which neighbouring tiles are blended; None: half the halo, where
    # the cores allow it (resolved against the grid, see tiling.auto_blend)
    blend: tuple[int, ...] | None = ()
    # shared hyperparameters: halos of this many lengthscales (phase 1 uses `halo`)
    halo_lengthscales: float | None = None
    wrap: tuple[str, ...] = ()  # dims that wrap around (a global longitude)
    chunks: tuple[int, ...] = ()  # inner chunks: the output is sharded, one shard per tile
    # the output's chunks and shards, independent of tiles (() : the default layout)
    output_chunks: tuple[int, ...] = ()
    output_shards: tuple[int, ...] = ()
    cpu_fallback: bool = False  # run on CPU when GPUs are asked for but none is visible
    forecast: Forecast | None = None  # predict the steps after the data instead of the grid
    # predict on a new grid: (dim, start, step, size) per dim given new coordinates
    regrid: tuple[tuple[str, float, float, int], ...] = ()
    # std of a new observation (the field's plus the learned noise) instead of the field's
    std_includes_noise: bool = False
    # cells never observed along this dim (land in a sea-surface field) are left NaN
    never_observed_along: str | None = None
    warm_start: str | None = None  # a previous output store whose shared hyperparameters to use
    # fsspec storage options (endpoint, credentials) for URL paths; never recorded anywhere
    input_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # the part of the input the run uses (input.sel), applied on every open
    input_sel: Selection = field(default_factory=Selection)
    output_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def input(self) -> Location:
        return Location(self.input_path, self.input_options)

    @property
    def output(self) -> Location:
        return Location(self.output_path, self.output_options)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Names of the GP's input columns (the module function `input_columns`)."""
        return input_columns(self.dims, self.station_dim, self.station_coords)


def input_columns(
    dims: tuple[str, ...], station_dim: str | None, station_coords: tuple[str, ...]
) -> tuple[str, ...]:
    """Names of the GP's input columns: each dim's coordinate, a station dim's positions."""
    columns: list[str] = []
    for dim in dims:
        columns.extend(station_coords if dim == station_dim else (dim,))
    return tuple(columns)
