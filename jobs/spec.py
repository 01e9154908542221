"""Job specs: YAML validated into typed objects; errors name the field, the value and the fix.

Loading a spec never executes code (yaml.safe_load, then pydantic validation).
Relative paths in a spec are resolved against the spec file's folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.config import AxisKernel, Forecast, ModelConfig, PipelineConfig
from pipeline.errors import InputError
from pipeline.selection import Selection
from pipeline.storage import Location, check_reachable, is_url


def _unique(names: list[str]) -> list[str]:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{repeated} appear more than once: list each name once")
    return names


UniqueNames = Annotated[list[str], AfterValidator(_unique)]


def _local(path: str) -> str:
    """Refuse URLs where only a local path will do: `s3://bucket/x.zarr` would otherwise
    become a local folder named `s3:`."""
    if is_url(path):
        raise ValueError(
            "a warm-start store is read from a local path: copy it to a local disk, or "
            "mount the bucket, and give that path"
        )
    return path


def _readable(path: str) -> str:
    check_reachable(path, "input.path")
    return path


def _writable(path: str) -> str:
    check_reachable(path, "output.path", writable=True)
    return path


LocalPath = Annotated[str, AfterValidator(_local)]
InputPath = Annotated[str, AfterValidator(_readable)]
OutputPath = Annotated[str, AfterValidator(_writable)]
STORAGE_OPTIONS_TEXT = (
    "fsspec storage options for a URL path, e.g. {endpoint_url: https://...} for an "
    "S3-compatible server; credentials are best left to their usual places (AWS_* "
    "variables, profiles, instance roles); none of this is ever written into the store, "
    "its journal or a log"
)
NOT_RECORDED = "<not recorded>"


def _options_need_a_url(section: str, path: str, options: dict) -> None:
    if options and not is_url(path):
        raise ValueError(
            f"{section}.storage_options apply to URL paths (s3://...), but {section}.path "
            f"{path!r} is local: drop {section}.storage_options, or give a URL"
        )


def _axis_kernel(value: object) -> AxisKernel:
    """Kernel text parsed into its value, once, when the spec is read."""
    if isinstance(value, AxisKernel):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return AxisKernel.parse(value)


KERNEL_TEXT = (
    "rbf, matern12, matern32 or matern52, optionally plus a repeating cycle: "
    "'matern32 + periodic(365.25)' (period in the column's units, days for times)"
)
KernelField = Annotated[
    AxisKernel,
    BeforeValidator(_axis_kernel),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": KERNEL_TEXT}),
    Field(description=KERNEL_TEXT),
]
WHOLE_DIM = 2**31 - 1  # a tile size that spans any dim


class SpecError(InputError):
    """A job spec that cannot be used; the message lists every problem and its fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSpec(Strict):
    dim: str = Field(description="the dim along which stations sit, e.g. station")
    coords: UniqueNames = Field(
        min_length=1, description="coordinates along that dim giving positions, e.g. [lat, lon]"
    )


def _label(value: object) -> object:
    """A label of `input.sel`: a number or text; YAML's unquoted dates read as ISO text."""
    return value.isoformat() if isinstance(value, (date, datetime)) else value


SelLabel = Annotated[StrictInt | StrictFloat | str, BeforeValidator(_label)]


class InputSpec(Strict):
    path: InputPath = Field(
        description="zarr store or netCDF file holding the gridded data: a local path, a "
        "pattern of local netCDF files (data/sst_*.nc, combined along their coordinates and "
        "read lazily), or a URL (s3://, gs://, az://, https://) of a zarr store"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description=STORAGE_OPTIONS_TEXT)
    variables: UniqueNames = Field(min_length=1, description="data variables to predict")
    dims: UniqueNames = Field(min_length=1, description="grid dims in order, e.g. [time, lat, lon]")
    stations: StationSpec | None = Field(
        None, description="scattered data: the station dim and its position coordinates"
    )
    wrap: UniqueNames = Field(
        default_factory=list,
        description="dims that wrap around, e.g. [lon] for a global grid: tiles at one end "
        "read across to the other",
    )
    sel: dict[str, SelLabel | list[SelLabel]] = Field(
        default_factory=dict,
        description="the part of the input to use, by coordinate labels: one value picks it "
        "and drops the dim (level: 850), [low, high] keeps an inclusive range in either "
        "direction of the coordinate (lat: [20, 60], time: [2020-01-01, 2020-03-31]); "
        "nothing outside it is read",
    )

    @model_validator(mode="after")
    def _options_for_urls(self) -> InputSpec:
        _options_need_a_url("input", self.path, self.storage_options)
        return self

    @model_validator(mode="after")
    def _selection_fits_dims(self) -> InputSpec:
        for dim, value in self.sel.items():
            if isinstance(value, list) and len(value) != 2:
                raise ValueError(
                    f"input.sel.{dim} is {value}: give one value, or a range [low, high]"
                )
            if not isinstance(value, list) and dim in self.dims:
                raise ValueError(
                    f"input.sel.{dim} picks one value, which drops {dim!r}: remove it from "
                    "input.dims, or give a range [low, high]"
                )
            if isinstance(value, list) and dim not in self.dims:
                raise ValueError(
                    f"input.sel.{dim} is a range, so {dim!r} stays a dim: add it to "
                    "input.dims, or pick one value"
                )
        return self

    @property
    def location(self) -> Location:
        return Location(self.path, self.storage_options)

    @property
    def selection(self) -> Selection:
        return Selection.from_mapping(self.sel)

    @property
    def columns(self) -> list[str]:
        """The GP's input columns: each dim's coordinate, or the station positions."""
        out: list[str] = []
        for dim in self.dims:
            out.extend(
                self.stations.coords if self.stations and dim == self.stations.dim else [dim]
            )
        return out

    @property
    def tiled_dims(self) -> list[str]:
        """Dims the tiling cuts: all but a station dim (every tile holds all stations)."""
        return [d for d in self.dims if not (self.stations and d == self.stations.dim)]


class AxisGrid(Strict):
    start: StrictFloat = Field(description="first coordinate of the new axis")
    step: StrictFloat = Field(gt=0, description="spacing of the new axis, in the input's units")
    size: StrictInt = Field(ge=1, le=10_000_000, description="cells along the new axis")


class TargetSpec(Strict):
    kind: Literal["same_grid", "grid", "forecast"] = Field(
        "same_grid",
        description="same_grid: every cell of the input grid (gap filling); grid: a new grid "
        "(`grid` gives new coordinates for some dims); forecast: the `steps` cells after the "
        "data along `dim`, one store per issue time",
    )
    grid: dict[str, AxisGrid] = Field(
        default_factory=dict,
        description="grid: new regular coordinates per dim, e.g. {lat: {start: 30, step: 0.1, "
        "size: 100}}; dims left out keep the input's",
    )
    dim: str = Field("time", description="forecast: the dim to extend (time)")
    steps: StrictInt | None = Field(None, ge=1, le=100_000, description="forecast: steps ahead")
    issue_time: str | None = Field(
        None,
        description="forecast: use only data at or before this time (ISO 8601); default the "
        "last time in the data; `gpgrid run --issue-time` and schedules override it",
    )
    never_observed_along: str | None = Field(
        None,
        description="leave NaN the cells never observed along this dim, e.g. time: land "
        "cells of a sea-surface field",
    )

    @field_validator("issue_time", mode="before")
    @classmethod
    def _issue_date_as_text(cls, value: object) -> object:
        return _date_as_text(value)


def _date_as_text(value: object) -> object:
    """YAML reads an unquoted 1999-12-31 as a date: keep it as ISO text."""
    return value.isoformat() if isinstance(value, date | datetime) else value


class ScheduleSpec(Strict):
    cron: str = Field(
        description="when to issue forecasts, 5-field cron in UTC, e.g. '0 6 * * *' (06:00 daily)"
    )
    missed: Literal["catch_up", "skip"] = Field(
        "skip",
        description="ticks missed while the scheduler was down: skip runs only the latest; "
        "catch_up runs each one after the last finished forecast, oldest first",
    )
    catch_up_limit: StrictInt = Field(
        24, ge=1, description="catch_up: most missed ticks run at once"
    )
    start: datetime | None = Field(None, description="no issue time before this is run")

    @field_validator("start", mode="before")
    @classmethod
    def _date_is_midnight(cls, value: object) -> object:
        return _date_as_text(value)

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str) -> str:
        from jobs.cron import CronSchedule

        CronSchedule.parse(value)
        return value


MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))


def _default(name: str) -> object:
    """ModelConfig's default for a field: model defaults are written down once, there."""
    return ModelConfig.__dataclass_fields__[name].default


class ModelSpec(Strict):
    type: Literal["auto", "kiss", "exact", "svgp"] = Field(
        "auto",
        description="auto: kiss on grids, svgp for stations; kiss: exact structured solve over "
        "every observed cell; exact: dense; svgp: stochastic variational",
    )
    kernel: dict[str, KernelField] | None = Field(
        None,
        description="one kernel per input column (each dim, or a station dim's coords), "
        "e.g. {time: matern32 + periodic(365.25), lat: matern32, lon: matern32}; omitted: "
        "one Matérn smoothness (1/2, 3/2 or 5/2) for every column, chosen by likelihood on "
        "a few tiles before the run",
    )
    fit_points: StrictInt = Field(
        _default("fit_points"),
        ge=10,
        le=5000,
        description="observations used to learn hyperparameters",
    )
    max_points: StrictInt = Field(
        _default("max_points"),
        ge=10,
        le=20000,
        description="exact only: observations a tile conditions on",
    )
    max_iter: StrictInt = Field(_default("max_iter"), ge=1, description="L-BFGS iterations at most")
    refine_iter: StrictInt = Field(
        _default("refine_iter"),
        ge=0,
        description="kiss only: whole-window L-BFGS or Adam steps after the subsample fit",
    )
    neighbours: StrictInt = Field(
        _default("neighbours"),
        ge=16,
        le=4096,
        description="kiss only: observations each variance conditions on",
    )
    dtype: Literal["float32", "float64"] = _default("dtype")
    multitask: StrictBool = Field(
        _default("multitask"),
        description="exact: one ICM model over all variables per tile; svgp: one LMC model",
    )
    rank: StrictInt = Field(
        _default("rank"),
        ge=0,
        le=8,
        description="multitask: rank of the variables' covariance (svgp: latents)",
    )
    inducing: StrictInt = Field(
        _default("inducing"), ge=4, le=4096, description="svgp only: inducing points per tile"
    )
    epochs: StrictInt = Field(
        _default("epochs"), ge=1, le=100, description="svgp only: minibatch passes over a tile"
    )
    hyperparameters: Literal["per_tile", "shared"] = Field(
        _default("hyperparameters"),
        description="per_tile: each tile learns its own; shared: learned on a sample of tiles "
        "first, then used by every tile (kiss and exact, one model per variable)",
    )
    warm_start: LocalPath | None = Field(
        None, description="shared: take the hyperparameters of this earlier output store"
    )
    isotropic: UniqueNames = Field(
        default_factory=list,
        description="input columns that share one kernel of their Euclidean distance (one "
        "lengthscale), e.g. [lat, lon] for projected coordinates in one unit; their "
        "model.kernel entries must name the same kernel",
    )
    mean: Literal["constant", "linear", "domain"] = Field(
        _default("mean"),
        description="prior mean: a constant or a linear trend per tile (least squares), or "
        "domain: a smooth GP trend over the whole grid, learned on trend_points observations "
        "drawn across it, under constant-mean tiles that model what it leaves",
    )
    covariates: UniqueNames = Field(
        default_factory=list,
        description="other variables of the input (over the same dims or some of them, e.g. "
        "elevation over lat and lon; finite everywhere) that each tile's mean regresses on, "
        "with the coefficients' uncertainty in the std (universal kriging); kiss or exact "
        "on the input's own grid, one model per variable",
    )
    trend_points: StrictInt = Field(
        _default("trend_points"),
        ge=100,
        le=5000,
        description="mean domain: observations the whole-domain trend is learned on",
    )
    calibrate_variance: StrictBool | None = Field(
        None,
        description="kiss only: after fitting, widen the variances where 95% intervals "
        "cover fewer than 95% of observed cells hidden under the tile's own gaps, moved "
        "(conformal); omitted: on for kiss on the input's own grid (one model per variable, "
        "no forecast), else off",
    )

    scales: Literal[1, 2] | None = Field(
        None,
        description="copies of the kernel summed at different ranges, each with its own "
        "variance: 2 for short-range variation near the data plus a long range that carries "
        "into large gaps (kiss then keeps the subsample fit); omitted: 2 when model.kernel "
        "is omitted too (the data choose the family), else 1",
    )

    def resolved_type(self, stations: bool) -> str:
        """The model type to run: `auto` becomes kiss on grids and svgp for stations."""
        if self.type != "auto":
            return self.type
        return "svgp" if stations else "kiss"

    def resolved_scales(self, new_grid: bool) -> int:
        """How many ranges the kernel sums: as given, else 2 when the data choose the kernel
        (1 for a new grid, whose interpolated path needs one separable kernel)."""
        if self.scales is not None:
            return self.scales
        return 2 if self.kernel is None and not new_grid else 1

    def resolved_calibration(self, stations: bool, target_kind: str) -> bool:
        """Whether kiss tiles widen their variances on their own moved gaps: as given, else
        wherever it can run (kiss on the input's own grid, one model per variable)."""
        if self.calibrate_variance is not None:
            return self.calibrate_variance
        kiss = self.resolved_type(stations) == "kiss"
        return kiss and not stations and target_kind == "same_grid" and not self.multitask

    def to_model_config(self, columns: list[str], stations: bool, target_kind: str) -> ModelConfig:
        """The pipeline's model config: the fields the two share, copied by name, plus the
        kernels in column order, the resolved type, number of scales and calibration."""
        new_grid = target_kind == "grid"
        shared = MODEL_FIELDS - {
            "kernels",
            "type",
            "isotropic",
            "scales",
            "covariates",
            "calibrate_variance",
        }
        return ModelConfig(
            **self.model_dump(include=shared),
            kernels=None if self.kernel is None else tuple(self.kernel[c] for c in columns),
            type=self.resolved_type(stations),
            isotropic=tuple(self.isotropic),
            covariates=tuple(self.covariates),
            calibrate_variance=self.resolved_calibration(stations, target_kind),
            scales=self.resolved_scales(new_grid),
        )


class TilingSpec(Strict):
    tile: dict[str, StrictInt] = Field(
        description="cells per tile core along each dim (output chunks)"
    )
    halo: dict[str, StrictInt] = Field(
        description="extra context cells on each side along each dim"
    )
    halo_lengthscales: StrictFloat | None = Field(
        None,
        ge=0.5,
        le=10,
        description="with shared hyperparameters: size each halo to this many learned "
        "lengthscales (2-3 hide tile edges); `halo` is then used by phase 1 only",
    )
    chunks: dict[str, StrictInt] = Field(
        default_factory=dict,
        description="inner chunk sizes: the output becomes a zarr v3 sharded store, one "
        "shard per tile (dims left out: the tile size)",
    )
    blend: dict[str, StrictInt] | None = Field(
        None,
        description="cells per side over which neighbouring tiles' predictions are blended "
        "(at most the halo; dims left out: 0); omitted: half the halo where the tiles allow "
        "it (on the input's own grid, without shards or forecasts), so no tile edge shows",
    )


class ResourcesSpec(Strict):
    num_cpus: StrictFloat = Field(1.0, gt=0, description="CPUs per tile task")
    num_gpus: StrictFloat = Field(0.0, ge=0, description="GPUs per tile task (fractions allowed)")
    max_in_flight: StrictInt = Field(4, ge=1, description="tile tasks submitted at once")
    cpu_fallback: StrictBool = Field(
        False, description="run on CPU when num_gpus is set but this machine has no GPU"
    )


class OutputSpec(Strict):
    path: OutputPath = Field(
        description="zarr store to create: a local path, or a URL (s3://, gs://, az://)"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description=STORAGE_OPTIONS_TEXT)
    chunks: dict[str, StrictInt] = Field(
        default_factory=dict,
        description="the output's zarr chunks, independent of tiles (a chunk may span "
        "several): e.g. {time: 1, lat: 721, lon: 1440} for maps, {time: 8760, lat: 8, lon: 8} "
        "for time series; dims left out: the tile size; omitted: whole tiles, several of "
        "them together where one is under 1 MB (about 4 MB)",
    )
    shards: dict[str, StrictInt] = Field(
        default_factory=dict,
        description="zarr v3 shards holding several chunks each (multiples of chunks; dims "
        "left out: the chunk size): fewer, larger objects on object storage",
    )
    overwrite: StrictBool = Field(False, description="replace an existing store at path")
    std: Literal["field", "observation"] = Field(
        "field",
        description="field: the std of the noise-free field; observation: of a new "
        "measurement, the learned noise included (what a held-out reading is compared with)",
    )

    @model_validator(mode="after")
    def _options_for_urls(self) -> OutputSpec:
        _options_need_a_url("output", self.path, self.storage_options)
        return self

    @property
    def location(self) -> Location:
        return Location(self.path, self.storage_options)


class JobSpec(Strict):
    """A whole job: where the data is, where to predict, with which model, on what resources."""

    input: InputSpec
    target: TargetSpec = TargetSpec()
    model: ModelSpec
    tiling: TilingSpec
    resources: ResourcesSpec = ResourcesSpec()
    output: OutputSpec
    schedule: ScheduleSpec | None = Field(
        None, description="forecast jobs: issue one forecast per cron tick (gpgrid schedule)"
    )

    @model_validator(mode="after")
    def _per_dim_maps_match_dims(self) -> JobSpec:
        stations = self.input.stations
        model_type = self.model.resolved_type(stations is not None)
        if self.model.multitask and (
            model_type not in ("exact", "svgp") or len(self.input.variables) < 2
        ):
            raise ValueError(
                f"model.multitask needs model.type exact or svgp and at least 2 "
                f"input.variables; got type {model_type!r} with variables "
                f"{self.input.variables}: set type: exact (or svgp) and list the variables, "
                "or drop multitask"
            )
        if (self.model.hyperparameters == "shared" or self.model.warm_start) and (
            model_type not in ("kiss", "exact") or self.model.multitask
        ):
            raise ValueError(
                f"model.hyperparameters: shared (and warm_start) work with kiss and exact models "
                f"fitted per variable; got type {model_type!r}, multitask "
                f"{self.model.multitask}: use hyperparameters: per_tile"
            )
        if self.tiling.halo_lengthscales and self.model.hyperparameters != "shared":
            raise ValueError(
                "tiling.halo_lengthscales sizes halos from shared hyperparameters: set "
                "model.hyperparameters: shared, or give tiling.halo alone"
            )
        if self.model.warm_start and self.model.hyperparameters != "shared":
            raise ValueError(
                "model.warm_start gives shared hyperparameters: set model.hyperparameters: shared"
            )
        self._check_target(model_type)
        self._check_model_options(model_type)
        if stations is not None:
            if stations.dim not in self.input.dims:
                raise ValueError(
                    f"input.stations.dim {stations.dim!r} is not one of input.dims "
                    f"{self.input.dims}: add it to dims or fix the name"
                )
            if model_type == "kiss":
                raise ValueError(
                    "model.type: kiss needs a regular grid, but input.stations makes the data "
                    "scattered: use svgp (the default for stations) or exact"
                )
        columns, dims = self.input.columns, self.input.tiled_dims
        columns_are = "input.dims (a station dim replaced by its coords) give the columns"
        dims_are = "input.dims (less the station dim, which is never tiled) are"
        for field_name, mapping, expected, are, what in (
            ("model.kernel", self.model.kernel, columns, columns_are, "input column"),
            ("tiling.tile", self.tiling.tile, dims, dims_are, "tiled dim"),
            ("tiling.halo", self.tiling.halo, dims, dims_are, "tiled dim"),
        ):
            if mapping is not None and set(mapping) != set(expected):
                raise ValueError(
                    f"{field_name} has keys {sorted(mapping)} but {are} {expected}: "
                    f"give exactly one entry per {what}"
                )
        not_tiled = sorted(set(self.input.wrap) - set(dims))
        if not_tiled:
            raise ValueError(
                f"input.wrap has {not_tiled}, which are not tiled dims {dims}: fix the names"
            )
        self._check_output_chunks()
        blend = self.tiling.blend or {}
        unknown = sorted((set(blend) | set(self.tiling.chunks)) - set(dims))
        if unknown:
            raise ValueError(
                f"tiling.blend or tiling.chunks has keys {unknown} that are not tiled dims {dims}"
            )
        for dim, margin in blend.items():
            if not 0 <= margin <= self.tiling.halo[dim]:
                raise ValueError(
                    f"tiling.blend for dim {dim!r} is {margin}: it must lie between 0 and the "
                    f"halo ({self.tiling.halo[dim]}), since tiles can only predict what they read"
                )
        for dim in dims:
            if self.tiling.tile[dim] < 1 or self.tiling.halo[dim] < 0:
                raise ValueError(
                    f"tiling for dim {dim!r}: tile {self.tiling.tile[dim]} must be >= 1 and "
                    f"halo {self.tiling.halo[dim]} >= 0"
                )
        return self

    def _check_target(self, model_type: str) -> None:
        """Forecast fields only with kind forecast, on a tiled dim that neither wraps nor
        holds stations; a schedule only for forecasts; periodic kernels per tile."""
        target, dims = self.target, self.input.tiled_dims
        if target.kind == "forecast":
            if target.steps is None:
                raise ValueError("target.kind forecast needs target.steps: how many steps ahead")
            if target.dim not in dims or target.dim in self.input.wrap:
                raise ValueError(
                    f"target.dim {target.dim!r} must be one of the tiled dims {dims} and not "
                    "wrapped: name the time dim"
                )
            if self.tiling.halo[target.dim] < 1:
                raise ValueError(
                    f"tiling.halo for the forecast dim {target.dim!r} is how many steps of "
                    "history each tile reads: give at least 1 (e.g. a few cycles)"
                )
            along = target.never_observed_along
            if along is not None and along != target.dim:
                raise ValueError(
                    f"target.never_observed_along must be the forecast dim {target.dim!r} "
                    f"(cells never observed in the history); got {along!r}"
                )
        elif target.steps is not None or target.issue_time is not None:
            raise ValueError(
                "target.steps and target.issue_time are for forecasts: set target.kind: forecast"
            )
        if target.kind == "grid":
            self._check_new_grid(dims)
        elif target.grid:
            raise ValueError("target.grid gives a new grid: set target.kind: grid")
        along = target.never_observed_along
        if along is not None and along not in dims:
            raise ValueError(
                f"target.never_observed_along {along!r} is not one of the tiled dims {dims}"
            )
        if self.schedule is not None and target.kind != "forecast":
            raise ValueError(
                "a schedule issues forecasts: set target.kind: forecast (and target.steps)"
            )
        periodic = [c for c, k in (self.model.kernel or {}).items() if k.period is not None]
        if periodic and (self.model.hyperparameters == "shared" or model_type == "svgp"):
            raise ValueError(
                f"model.kernel {periodic} has a periodic part, which needs kiss or exact models "
                "with hyperparameters: per_tile: change the type, or drop the periodic part"
            )

    def _check_model_options(self, model_type: str) -> None:
        """Calibrated variances on kiss grids only; two scales not onto a new grid by kiss; a
        linear mean per variable; isotropic
        columns: two or more known ones, one kernel name with no periodic part, and no
        wrapping, shared hyperparameters or multitask."""
        model, columns = self.model, self.input.columns
        if model.calibrate_variance and (model_type != "kiss" or self.input.stations):
            raise ValueError(
                f"model.calibrate_variance hides cells of a grid: it needs model.type kiss "
                f"on gridded data, got {model_type!r}: drop calibrate_variance"
            )
        if model.scales == 2 and self.target.kind == "grid" and model_type == "kiss":
            raise ValueError(
                "model.scales 2 sums two kernels, but kiss reaches a new grid (target.kind "
                "grid) by interpolation, which needs one separable kernel: drop model.scales"
            )
        chosen = model.isotropic
        if model.mean != "constant" and model.multitask:
            raise ValueError(f"model.mean {model.mean} fits one trend per variable: drop multitask")
        self._check_domain_trend()
        self._check_covariates(model_type)
        if not chosen:
            return
        if len(set(chosen)) < 2 or not set(chosen) <= set(columns):
            raise ValueError(
                f"model.isotropic {chosen}: name two or more of the input columns {columns}"
            )
        kernels = {model.kernel.get(c) for c in chosen} if model.kernel else {AxisKernel("auto")}
        if None in kernels or len(kernels) != 1 or next(iter(kernels)).period is not None:
            raise ValueError(
                f"model.isotropic {chosen} share one kernel, but model.kernel gives them "
                f"{sorted(str(k) for k in kernels)}: name the same kernel, without a periodic part"
            )
        wrapped = sorted(set(chosen) & set(self.input.wrap))
        if wrapped or model.hyperparameters == "shared" or model.multitask:
            raise ValueError(
                f"model.isotropic cannot be combined with input.wrap on its columns ({wrapped}), "
                "hyperparameters: shared or multitask: drop one"
            )

    def _check_covariates(self, model_type: str) -> None:
        """Covariates are other variables of the input, read at the input's own cells, by a
        model that conditions each variable on its whole window (kiss or exact)."""
        covariates = self.model.covariates
        if not covariates:
            return
        targets = sorted(set(covariates) & set(self.input.variables))
        if targets:
            raise ValueError(
                f"model.covariates {targets} are also input.variables: a covariate is given "
                "everywhere, not predicted; drop it from one of the two"
            )
        blocked = [
            name
            for name, present in (
                (f"model.type {model_type}", model_type not in ("kiss", "exact")),
                ("model.multitask", self.model.multitask),
                ("model.mean linear", self.model.mean == "linear"),
                ("input.stations", self.input.stations is not None),
                (f"target.kind {self.target.kind}", self.target.kind != "same_grid"),
            )
            if present
        ]
        if blocked:
            raise ValueError(
                f"model.covariates regress each variable's mean on other variables at the "
                f"input's own cells, which {blocked} do not allow: use model.type kiss or "
                "exact, one model per variable, mean constant or domain, target.kind "
                "same_grid; or drop model.covariates"
            )

    def _check_domain_trend(self) -> None:
        """A whole-domain trend needs a gap-filling grid: its lattice spans the data's grid."""
        if self.model.mean != "domain":
            return
        blocked = [
            name
            for name, present in (
                ("input.stations", self.input.stations is not None),
                ("target.kind forecast", self.target.kind == "forecast"),
                ("input.wrap", bool(self.input.wrap)),
            )
            if present
        ]
        if blocked:
            raise ValueError(
                f"model.mean domain fits a trend over the input's own grid, which {blocked} "
                "do not fit: use mean constant or linear, or drop them"
            )

    def _check_new_grid(self, dims: list[str]) -> None:
        """A new grid: some tiled, unwrapped dims get new coordinates; no blending, shards or
        never-observed masks (tiles then write parts of chunks, not whole ones)."""
        target = self.target
        if self.input.stations is not None:
            raise ValueError(
                "target.kind grid puts predictions on a new grid; station data have no grid: "
                "drop input.stations or use target.kind same_grid"
            )
        if not target.grid or not set(target.grid) <= set(dims):
            raise ValueError(
                f"target.grid has keys {sorted(target.grid)}: give new coordinates for one or "
                f"more of the tiled dims {dims}"
            )
        wrapped = sorted(set(target.grid) & set(self.input.wrap))
        if wrapped or self.tiling.blend or self.tiling.chunks or target.never_observed_along:
            raise ValueError(
                f"target.kind grid cannot be combined with input.wrap on the new dims "
                f"({wrapped}), tiling.blend, tiling.chunks or target.never_observed_along: "
                "drop those"
            )

    def _check_output_chunks(self) -> None:
        """output.chunks and output.shards: known dims, positive sizes, shards made of
        whole chunks, and not together with tiling.chunks (shards of one tile each)."""
        output, dims = self.output, self.input.dims
        for name, mapping in (("output.chunks", output.chunks), ("output.shards", output.shards)):
            unknown = sorted(set(mapping) - set(dims))
            if unknown:
                raise ValueError(f"{name} has keys {unknown} that are not input.dims {dims}")
            small = {d: n for d, n in mapping.items() if n < 1}
            if small:
                raise ValueError(f"{name} must be >= 1 cell along every dim; got {small}")
        if (output.chunks or output.shards) and self.tiling.chunks:
            raise ValueError(
                "tiling.chunks (one shard per tile) and output.chunks/output.shards both lay "
                "out the output: give one of them (output.shards: a shard of several tiles)"
            )
        chunks, shards = self.output_chunks(), self.output_shards()
        if shards and any(s % c for s, c in zip(shards, chunks, strict=True)):
            raise ValueError(
                f"output.shards {dict(zip(dims, shards, strict=True))} must be whole multiples "
                f"of output.chunks {dict(zip(dims, chunks, strict=True))}: fix one of them"
            )

    def output_chunks(self) -> tuple[int, ...]:
        """output.chunks per dim, the tile size where left out; () when not given."""
        chunks, tile = self.output.chunks, self.tiling.tile
        if not (chunks or self.output.shards):
            return ()
        return tuple(chunks.get(d, tile.get(d, WHOLE_DIM)) for d in self.input.dims)

    def output_shards(self) -> tuple[int, ...]:
        """output.shards per dim, the chunk size where left out; () when not given."""
        if not self.output.shards:
            return ()
        chunks = self.output_chunks()
        return tuple(
            self.output.shards.get(d, c) for d, c in zip(self.input.dims, chunks, strict=True)
        )

    def to_pipeline_config(
        self, spec_text: str = "", issue_time: str | None = None
    ) -> PipelineConfig:
        """The pipeline's config for this spec; `issue_time` (ISO 8601) overrides a
        forecast's target.issue_time."""
        dims = tuple(self.input.dims)
        stations = self.input.stations
        return PipelineConfig(
            input_path=self.input.path,
            variables=tuple(self.input.variables),
            dims=dims,
            output_path=self.output.path,
            # a station dim is never cut: one tile spans it (the runner clips to its size)
            tile=tuple(self.tiling.tile.get(d, WHOLE_DIM) for d in dims),
            halo=tuple(self.tiling.halo.get(d, 0) for d in dims),
            blend=None
            if self.tiling.blend is None
            else tuple(self.tiling.blend.get(d, 0) for d in dims),
            wrap=tuple(self.input.wrap),
            chunks=tuple(
                self.tiling.chunks.get(d, self.tiling.tile.get(d, WHOLE_DIM)) for d in dims
            )
            if self.tiling.chunks
            else (),
            halo_lengthscales=self.tiling.halo_lengthscales,
            model=self.model.to_model_config(
                self.input.columns, stations is not None, self.target.kind
            ),
            num_cpus=self.resources.num_cpus,
            num_gpus=self.resources.num_gpus,
            max_in_flight=self.resources.max_in_flight,
            cpu_fallback=self.resources.cpu_fallback,
            warm_start=self.model.warm_start,
            overwrite=self.output.overwrite,
            spec_text=self._recorded_text(spec_text),
            station_dim=stations.dim if stations else None,
            station_coords=tuple(stations.coords) if stations else (),
            forecast=Forecast(
                self.target.dim, self.target.steps, issue_time or self.target.issue_time
            )
            if self.target.kind == "forecast"
            else None,
            never_observed_along=self.target.never_observed_along,
            regrid=tuple((d, g.start, g.step, g.size) for d, g in self.target.grid.items()),
            std_includes_noise=self.output.std == "observation",
            input_options=self.input.storage_options,
            input_sel=self.input.selection,
            output_options=self.output.storage_options,
            output_chunks=self.output_chunks(),
            output_shards=self.output_shards(),
        )

    def _recorded_text(self, spec_text: str) -> str:
        """The spec as the store records it: as written, unless it has storage options,
        whose values (credentials, perhaps) are then left out."""
        if not (self.input.storage_options or self.output.storage_options):
            return spec_text or self.to_yaml()
        data = self.model_dump()
        for section in ("input", "output"):
            options = data[section]["storage_options"]
            data[section]["storage_options"] = dict.fromkeys(options, NOT_RECORDED)
        return yaml.safe_dump(data, sort_keys=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


# pydantic's type errors say what is wrong; these say what to write instead
TYPE_FIXES = {
    "int_type": ": give a whole number, e.g. 10",
    "float_type": ": give a number, e.g. 0.5",
    "bool_type": ": give true or false",
}


def _describe(error: dict, lines: dict[tuple, int]) -> str:
    """One problem as `field (line N): what is wrong; the fix`."""
    loc = tuple(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields: its message starts with the field it names
        named = re.match(r"[a-z_]+(\.[a-z_]+)*", message)
        loc = tuple(named.group(0).split(".")) if named else ()
        return f"{_line_of(loc, lines)}{message}"
    line = _line_of(loc, lines)
    where = ".".join(loc) + (f" ({line.removesuffix(': ')})" if line else "")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (value {error['input']!r}); remove it or fix its spelling"
    if error["type"] == "missing":
        return f"{where}: required but missing; add it"
    fix = TYPE_FIXES.get(error["type"], "")
    return f"{where}: got {error['input']!r}; {message}{fix}"


def _line_of(loc: tuple, lines: dict[tuple, int]) -> str:
    """`line N: ` for the deepest part of `loc` that the YAML text has, or ''."""
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in lines:
            return f"line {lines[loc[:depth]]}: "
    return ""


def parse_spec(
    data: object, base_dir: Path | None = None, lines: dict[tuple, int] | None = None
) -> JobSpec:
    """Validate a spec mapping; relative paths are taken from `base_dir`, `~` is expanded.

    `lines` maps a field's path to its line in the YAML text, so errors can name it."""
    if not isinstance(data, dict):
        raise SpecError(
            "a job spec must be a mapping with the sections input, model, tiling and output "
            f"(target, resources, schedule optional); got {type(data).__name__}"
        )
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        problems = "\n".join(f"  - {_describe(e, lines or {})}" for e in err.errors())
        raise SpecError(f"invalid job spec:\n{problems}") from None
    if base_dir is None:
        return spec
    warm_start = spec.model.warm_start and _resolve(spec.model.warm_start, base_dir)
    return spec.model_copy(
        update={
            "input": spec.input.model_copy(update={"path": _resolve(spec.input.path, base_dir)}),
            "model": spec.model.model_copy(update={"warm_start": warm_start}),
            "output": spec.output.model_copy(update={"path": _resolve(spec.output.path, base_dir)}),
        }
    )


def _resolve(path: str, base_dir: Path) -> str:
    """A local path made absolute: `~` expanded, relative ones taken from the spec's folder
    (links are kept as given, so the output is checked as what the user named); a URL as
    it is."""
    if is_url(path):
        return path
    return os.path.normpath(base_dir / Path(path).expanduser())


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise SpecError(
                    f"key {key!r} is given twice, on lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}: keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _field_lines(node: yaml.Node | None, path: tuple = ()) -> dict[tuple, int]:
    """Every mapping key's and list item's path in the YAML tree -> its line (from 1)."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            key = (*path, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            lines.update(_field_lines(value, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, str(i))] = item.start_mark.line + 1
            lines.update(_field_lines(item, (*path, str(i))))
    return lines


def read_yaml(text: str) -> tuple[object, dict[tuple, int]]:
    """Parse spec text safely (no code runs); returns the data and each field's line."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" {err.context}," if err.context else ""
        raise SpecError(f"not valid YAML{where}:{context} {err.problem}: fix the syntax") from None
    finally:
        loader.dispose()
    return data, _field_lines(node)


def load_spec(path: str | Path) -> tuple[JobSpec, str]:
    """Read and validate a YAML spec file; returns the spec and its text (kept as provenance)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SpecError(
            f"{str(path)!r} is a folder, not a job spec: give the spec's YAML file "
            f"(e.g. {str(path / 'job.yaml')!r})"
        )
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist: check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"spec file {str(path)!r} is not UTF-8 text (byte {err.start} is "
            f"{err.object[err.start : err.start + 1]!r}): save it as UTF-8"
        ) from None
    try:
        data, lines = read_yaml(text)
        return parse_spec(data, base_dir=path.parent.resolve(), lines=lines), text
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def spec_json_schema() -> str:
    """JobSpec's JSON schema (draft 2020-12), as editors read it."""
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gpgrid job spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
