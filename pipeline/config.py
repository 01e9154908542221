"""What the pipeline needs to run one job, as plain picklable values built by jobs/ from specs."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    """The per-tile GP: its type, one kernel name per grid dim, and its budgets.

    kiss: hyperparameters from an exact GP on `fit_points` observations (L-BFGS,
    `max_iter`), refined by `refine_iter` Adam steps on the whole window, then an
    exact on-grid solve over every observed cell; variances by local kriging on
    `neighbours` observations. exact: dense GP on at most `max_points` observations;
    with `multitask`, one ICM model (variables' covariance of rank `rank`) over all
    variables, on at most `max_points` observed values.
    """

    kernels: tuple[str, ...]
    type: str = "kiss"
    fit_points: int = 400
    max_points: int = 2000
    max_iter: int = 100
    refine_iter: int = 0
    neighbours: int = 128
    dtype: str = "float64"
    multitask: bool = False
    rank: int = 1


@dataclass(frozen=True)
class PipelineConfig:
    """A gap-filling run over a (time, lat, lon)-like grid, predicting every grid cell."""

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

    def as_dict(self) -> dict:
        return asdict(self)
