"""What a tile task receives: how to read its window, the model plan, and the device.

Plain picklable values, built once per run by the driver (see resolved.py) and shipped
to every tile task; none holds the run's whole config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import xarray as xr

from pipeline.config import Forecast, ModelConfig, input_columns
from pipeline.inputs import open_input
from pipeline.selection import Selection
from pipeline.storage import Location

if TYPE_CHECKING:
    from pipeline.trend import TrendField


@dataclass(frozen=True)
class WindowSource:
    """How to read a tile's window from the input: the store, the variables and dims, the
    station layout, a resolved forecast (its history and step), a new target grid
    (`regrid`: (dim, start, step, size) per dim given new coordinates), the dim along
    which never-observed cells are left NaN, and the covariates the mean regresses on."""

    input_path: str
    variables: tuple[str, ...]
    dims: tuple[str, ...]
    station_dim: str | None = None
    station_coords: tuple[str, ...] = ()
    forecast: Forecast | None = None
    regrid: tuple[tuple[str, float, float, int], ...] = ()
    never_observed_along: str | None = None
    covariates: tuple[str, ...] = ()  # read at every window cell (model.covariates)
    input_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    selection: Selection = field(default_factory=Selection)  # input.sel

    @property
    def input(self) -> Location:
        """Where the input is, with the storage options that reach it."""
        return Location(self.input_path, self.input_options)

    def open(self) -> xr.Dataset:
        """The input, opened lazily and cut to the run's selection."""
        return open_input(self.input, self.selection)

    def history(self, dim: str) -> int:
        """Steps of data before the target along `dim` (a forecast's history; otherwise 0)."""
        forecast = self.forecast
        return forecast.history if forecast is not None and forecast.dim == dim else 0

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Names of the GP's input columns (see `pipeline.config.input_columns`)."""
        return input_columns(self.dims, self.station_dim, self.station_coords)


@dataclass(frozen=True)
class ModelPlan:
    """What the per-tile GP needs beyond the data: the model config, the input columns'
    names, the halo (distances from the core are measured in its units), the shared
    hyperparameters per variable (None: each tile learns its own), whether the std
    includes the noise, whether targets lie off the input's lattice (a new grid), and
    the whole-domain trend per variable (model.mean: domain)."""

    model: ModelConfig
    columns: tuple[str, ...]
    halo: tuple[int, ...]
    shared: dict[str, dict] | None = None
    std_includes_noise: bool = False
    off_lattice: bool = False
    trends: dict[str, TrendField | None] | None = None

    def fixed(self, var: str) -> dict | None:
        """The shared hyperparameters of `var`, or None when the tile learns its own."""
        return (self.shared or {}).get(var)

    def trend(self, var: str) -> TrendField | None:
        """The whole-domain trend of `var` (model.mean: domain), or None."""
        return (self.trends or {}).get(var)


@dataclass(frozen=True)
class TileWork:
    """Everything a tile task uses besides its Tile: `device` is "cuda" or "cpu";
    `writes_to`, the output store the task writes its own chunks to (None: it returns
    its predictions to the driver)."""

    source: WindowSource
    plan: ModelPlan
    device: str = "cpu"
    writes_to: Location | None = None
