"""Drive a run on Ray: plan tiles, keep a bounded number of tile tasks in flight, write results."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import ray
from tqdm import tqdm

from pipeline import __version__
from pipeline.cluster import ensure_ray
from pipeline.config import PipelineConfig
from pipeline.inputs import check_input, open_input
from pipeline.store import create_output_store, finalize_store, write_tile
from pipeline.tiling import Tile, TileResult, plan_tiles


@dataclass
class RunSummary:
    """What a run did: how many tiles and cells it wrote and how long it took."""

    output_path: str
    tiles: int
    cells: int
    seconds: float

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else float("nan")


def predict_tile_on_worker(config: PipelineConfig, tile: Tile) -> TileResult:
    """The Ray task: imports the solvers on the worker, so the driver never loads torch."""
    from pipeline.tasks import predict_tile

    return predict_tile(config, tile)


def run_pipeline(config: PipelineConfig, progress: bool = True) -> RunSummary:
    """Predict every grid cell of the job's variables into a new zarr store, tile by tile."""
    start = time.perf_counter()
    ds = open_input(config.input_path)
    check_input(ds, config.variables, config.dims, config.station_dim, config.station_coords)
    shape = tuple(ds.sizes[d] for d in config.dims)
    chunks = tuple(min(t, n) for t, n in zip(config.tile, shape, strict=True))
    tiles = plan_tiles(shape, chunks, config.halo)
    kernels = dict(zip(config.input_columns, config.model.kernels, strict=True))
    attrs = {
        "title": "gpgrid Gaussian-process predictions",
        "Conventions": "CF-1.8",
        "source": f"gpgrid {__version__}",
        "gpgrid_version": __version__,
        "gpgrid_spec": config.spec_text,
        "gpgrid_model": f"{config.model.type} GP per tile, kernels {kernels}",
    }
    create_output_store(
        config.output_path,
        ds,
        config.variables,
        config.dims,
        chunks,
        attrs,
        config.overwrite,
        config.station_coords,
    )
    ensure_ray()
    remote = ray.remote(predict_tile_on_worker).options(
        num_cpus=config.num_cpus, num_gpus=config.num_gpus, max_retries=3
    )
    config_ref = ray.put(config)
    pending: dict = {}
    diagnostics: list[dict] = []
    cells = 0
    bar = tqdm(total=len(tiles), unit="tile", disable=not progress, desc="tiles", mininterval=1.0)

    def collect(ref: ray.ObjectRef) -> None:
        nonlocal cells
        result: TileResult = ray.get(ref)
        write_tile(config.output_path, result.tile, result.predictions)
        diagnostics.append(result.diagnostics)
        cells += math.prod(result.tile.core_shape)
        bar.update(1)
        bar.set_postfix(cells_per_s=f"{cells / (time.perf_counter() - start):,.0f}")

    for tile in tiles:
        while len(pending) >= config.max_in_flight:
            done, _ = ray.wait(list(pending), num_returns=1)
            collect(done[0])
            pending.pop(done[0])
        pending[remote.remote(config_ref, tile)] = tile
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        collect(done[0])
        pending.pop(done[0])
    bar.close()
    diagnostics.sort(key=lambda d: d["tile"])
    finalize_store(config.output_path, {"gpgrid_tiles": diagnostics})
    return RunSummary(config.output_path, len(tiles), cells, time.perf_counter() - start)
