"""Drive a run on Ray: plan tiles, keep a bounded number of tile tasks in flight, write results.

A run holds its output's lock, journals every finished tile and resumes a store made
by an interrupted run of the same plan (see journal.py); tile tasks are retried when
their worker dies and on the transient errors below.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
import zarr
from tqdm import tqdm

from pipeline import __version__
from pipeline.blend import Blender
from pipeline.cluster import ensure_ray
from pipeline.config import PipelineConfig
from pipeline.coordinates import coordinate_values
from pipeline.errors import InputError, ResourceUnavailableError, StorageError
from pipeline.fingerprint import input_fingerprint, values_fingerprint
from pipeline.grid import history as history_steps
from pipeline.hyperparameters import pool, sample_tile_indices
from pipeline.inputs import check_input, open_input
from pipeline.journal import (
    RunLock,
    check_plan,
    finished_tiles,
    flagged_tiles,
    mark_complete,
    plan_of,
    read_plan,
    read_shared,
    record_tile,
    reset,
    write_plan,
    write_shared,
)
from pipeline.output_guard import (
    check_output_location,
    check_replaceable,
    is_gpgrid_store,
    remove_store,
)
from pipeline.store import create_output_store, finalize_store, write_tile
from pipeline.target import FORECAST_COORDS, check_new_grid, resolve_forecast, target_dataset
from pipeline.tiling import Tile, TileResult, plan_tiles
from pipeline.value_scan import scan_input

# Errors worth another try on another worker: storage or network hiccups.
TRANSIENT_ERRORS = (OSError, TimeoutError, ConnectionError)
MAX_RETRIES = 3


@dataclass
class RunSummary:
    """What a run did: how many tiles and cells it wrote, how many a previous run had, how long."""

    output_path: str
    tiles: int
    cells: int
    seconds: float
    resumed_tiles: int = 0
    # per variable, the tiles left NaN ("skipped": too few observations) or predicted as
    # a constant ("degenerate"); empty when every tile was fitted
    flagged: dict = field(default_factory=dict)
    # driver-side wall seconds: setup (input, store, Ray), phase1, tiles (the task loop),
    # write (writing chunks and journal records, inside the loop), finalize
    timings: dict = field(default_factory=dict)

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else float("nan")


def predict_tile_on_worker(config: PipelineConfig, tile: Tile) -> TileResult:
    """The Ray task: imports the solvers on the worker, so the driver never loads torch."""
    if config.crash_once is not None:
        index, marker = config.crash_once
        if tile.index == index and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)  # fault injection for tests: this worker process dies mid-tile
    from pipeline.tasks import predict_tile

    return predict_tile(config, tile)


def fit_hyperparameters_on_worker(config: PipelineConfig, tile: Tile) -> dict:
    """Phase 1's Ray task: one sampled tile's hyperparameters per variable."""
    from pipeline.tasks import fit_tile_hyperparameters

    return fit_tile_hyperparameters(config, tile)


def run_pipeline(
    config: PipelineConfig, progress: bool = True, address: str | None = None
) -> RunSummary:
    """Predict every grid cell of the job's variables into its zarr store, tile by tile.

    A store left by an interrupted run of the same plan is resumed: only its missing
    tiles are computed. `address` says Ray is a cluster (which may add GPU nodes on
    demand) rather than the embedded local one.
    """
    start = time.perf_counter()
    ds = open_input(config.input_path)
    check_input(ds, config)
    if config.forecast is not None:
        config = resolve_forecast(config, ds)
    if config.regrid:
        check_new_grid(config, ds)
    target = target_dataset(config, ds)
    shape = tuple(target.sizes[d] for d in config.dims)
    # Tiles cut the input's grid; on a new target grid each writes the cells in its core.
    tiled = tuple(ds.sizes[d] for d in config.dims) if config.regrid else shape
    chunks = tuple(min(t, n) for t, n in zip(config.tile, tiled, strict=True))
    wrap = [dim in config.wrap for dim in config.dims]
    history = [history_steps(config, dim) for dim in config.dims]
    tiles = plan_tiles(tiled, chunks, config.halo, config.blend, wrap, history)
    check_output_location(config.output_path, _protected_paths(config))
    if config.overwrite:
        check_replaceable(config.output_path)
    plan = plan_of(config, shape, _fingerprint(config, ds))
    inner = _inner_chunks(config, chunks)
    store_chunks = tuple(
        max(1, min(round(c * n / m), n)) for c, n, m in zip(chunks, shape, tiled, strict=True)
    )
    if not _resumable(config, plan):  # a resume reads the data its first run checked
        scan_input(ds, config.variables, config.input_path)
    ensure_ray()
    config = _placement(config, address)
    with RunLock(config.output_path):
        done = _finished_of_this_plan(config, plan)
        created = not done  # a store without finished tiles starts again from its template
        try:
            if created:
                _new_store(config, plan, target, store_chunks, inner)
            timings = {"setup": time.perf_counter() - start}
            attrs: dict = {}
            if config.model.hyperparameters == "shared":
                mark = time.perf_counter()
                shared = _shared_hyperparameters(config, tiles, progress)
                config = replace(config, shared_hyperparameters=shared)
                attrs["gpgrid_hyperparameters"] = shared
                if config.halo_lengthscales:
                    config = replace(config, halo=_halo_from_lengthscales(config, ds, chunks))
                    tiles = plan_tiles(tiled, chunks, config.halo, config.blend, wrap, history)
                    attrs["gpgrid_halo"] = dict(zip(config.dims, config.halo, strict=True))
                timings["phase1"] = time.perf_counter() - mark
            blender = None
            if any(config.blend):
                pending = {tile.index for tile in tiles} - done
                blender = Blender(tiles, shape, config.blend, config.variables, pending, wrap)
                todo = [tile for tile in tiles if tile.index in blender.tiles_needed()]
            else:
                todo = [tile for tile in tiles if tile.index not in done]
            if done and progress:
                print(
                    f"resuming {config.output_path}: {len(done)} of {len(tiles)} tiles already "
                    f"written; computing the other {len(todo)}",
                    file=sys.stderr,
                )
            mark = time.perf_counter()
            cells, timings["write"] = _run_tiles(config, todo, progress, start, blender)
            timings["tiles"] = time.perf_counter() - mark
            mark = time.perf_counter()
            records = finished_tiles(config.output_path)
            attrs["gpgrid_tiles"] = [_provenance(records[i]) for i in sorted(records)]
            finalize_store(config.output_path, attrs)
            mark_complete(config.output_path)
            timings["finalize"] = time.perf_counter() - mark
        except BaseException:
            if created and not finished_tiles(config.output_path):
                reset(config.output_path)  # nothing was written: leave nothing behind
                shutil.rmtree(config.output_path, ignore_errors=True)
            raise
    seconds = time.perf_counter() - start
    return RunSummary(
        config.output_path,
        len(tiles),
        cells,
        seconds,
        resumed_tiles=len(done),
        timings=timings,
        flagged=flagged_tiles(records),
    )


def _finished_of_this_plan(config: PipelineConfig, plan: dict) -> set[int]:
    """The tiles an existing output already holds, refusing one made for another plan;
    none when there is no store yet or it is to be overwritten."""
    if not Path(config.output_path).exists() or config.overwrite:
        return set()
    check_plan(config.output_path, plan, is_gpgrid_store(config.output_path))
    return set(finished_tiles(config.output_path))


def _new_store(
    config: PipelineConfig,
    plan: dict,
    target,  # noqa: ANN001
    chunks: tuple[int, ...],
    inner: tuple[int, ...] | None,
) -> None:
    """Replace whatever gpgrid store is there by a fresh template and journal; the plan is
    written first, so a store interrupted while being created is still known as ours."""
    remove_store(config.output_path)
    reset(config.output_path)
    write_plan(config.output_path, plan)
    _create_store(config, target, chunks, inner)


def _inner_chunks(config: PipelineConfig, chunks: tuple[int, ...]) -> tuple[int, ...] | None:
    """The chunks inside each tile's shard (None: unsharded), checked to divide the tiles."""
    if not config.chunks:
        return None
    inner = tuple(min(c, t) for c, t in zip(config.chunks, chunks, strict=True))
    if any(t % c for t, c in zip(chunks, inner, strict=True)):
        raise InputError(
            f"tiling.chunks {dict(zip(config.dims, inner, strict=True))} must divide the "
            f"tile sizes {dict(zip(config.dims, chunks, strict=True))}: each tile is one "
            "shard of whole chunks"
        )
    return inner


def _create_store(
    config: PipelineConfig,
    ds,
    chunks: tuple[int, ...],
    inner: tuple[int, ...] | None,  # noqa: ANN001
) -> None:
    kernels = dict(zip(config.input_columns, config.model.kernels, strict=True))
    attrs = {
        "title": "gpgrid Gaussian-process predictions",
        "Conventions": "CF-1.8",
        "source": f"gpgrid {__version__}",
        "gpgrid_version": __version__,
        "gpgrid_spec": config.spec_text,
        "gpgrid_input": config.input_path,
        "gpgrid_model": f"{config.model.type} GP per tile, kernels {kernels}",
    }
    create_output_store(
        config.output_path,
        ds,
        config.variables,
        config.dims,
        chunks,
        attrs,
        (*config.station_coords, *(FORECAST_COORDS if config.forecast else ())),
        inner,
        config.std_includes_noise,
    )


def _shared_hyperparameters(config: PipelineConfig, tiles: list[Tile], progress: bool) -> dict:
    """Phase 1: the journal's copy when resuming, a warm start's, or pooled fits on a sample
    of tiles (run as Ray tasks); journalled so a resumed run uses the same values."""
    shared = read_shared(config.output_path)
    if shared is None and config.warm_start:
        shared = _warm_start(config.warm_start, config.variables)
    if shared is None:
        sample = sample_tile_indices(len(tiles))
        if progress:
            print(f"phase 1: hyperparameters on {len(sample)} sampled tiles", file=sys.stderr)
        remote = ray.remote(fit_hyperparameters_on_worker).options(
            num_cpus=config.num_cpus, num_gpus=config.num_gpus, max_retries=MAX_RETRIES
        )
        config_ref = ray.put(config)
        shared = pool(ray.get([remote.remote(config_ref, tiles[i]) for i in sample]))
    write_shared(config.output_path, shared)
    return shared


def _halo_from_lengthscales(
    config: PipelineConfig,
    ds,
    chunks: tuple[int, ...],  # noqa: ANN001
) -> tuple[int, ...]:
    """Halos of `halo_lengthscales` times each dim's longest shared lengthscale, in cells
    (at least the blend margin; a wrapped dim's at most what fits around the circle)."""
    halo = []
    for i, dim in enumerate(config.dims):
        if dim == config.station_dim:
            halo.append(0)
            continue
        column = config.input_columns.index(dim)
        longest = max(v["lengthscales"][column] for v in config.shared_hyperparameters.values())
        step = float(np.median(np.abs(np.diff(coordinate_values(ds[dim])))))
        cells = max(
            math.ceil(config.halo_lengthscales * longest / step),
            config.blend[i] if config.blend else 0,
        )
        n = ds.sizes[dim]
        limit = (n - chunks[i]) // 2 if dim in config.wrap else n
        halo.append(min(cells, limit))
    return tuple(halo)


def _warm_start(store_path: str, variables: tuple[str, ...]) -> dict:
    """Shared hyperparameters recorded by an earlier run's store."""
    attrs = zarr.open_group(store_path, mode="r").attrs
    if "gpgrid_hyperparameters" not in attrs:
        raise InputError(
            f"warm start {store_path!r} holds no shared hyperparameters: give a store made "
            "with model.hyperparameters: shared, or drop model.warm_start"
        )
    shared = json.loads(attrs["gpgrid_hyperparameters"])
    missing = [v for v in variables if v not in shared]
    if missing:
        raise InputError(
            f"warm start {store_path!r} has no hyperparameters for {missing} (it has "
            f"{sorted(shared)}): give a store made for these variables"
        )
    return {v: shared[v] for v in variables}


def _resumable(config: PipelineConfig, plan: dict) -> bool:
    """Whether the output holds finished tiles of this very plan (input fingerprint included)."""
    path = config.output_path
    return (
        not config.overwrite
        and Path(path).exists()
        and read_plan(path) == plan
        and bool(finished_tiles(path))
    )


def _fingerprint(config: PipelineConfig, ds) -> dict:  # noqa: ANN001
    """What identifies the data a run reads: for a forecast, the values of the history its
    tiles read (so steps appended after the issue time leave it unchanged); otherwise the
    whole input's metadata and files."""
    forecast = config.forecast
    if forecast is None:
        return input_fingerprint(config.input_path, ds, config.variables)
    back = config.halo[config.dims.index(forecast.dim)]
    read = ds.isel({forecast.dim: slice(max(0, forecast.history - back), forecast.history)})
    return values_fingerprint(read, config.variables)


def _protected_paths(config: PipelineConfig) -> dict[str, str]:
    """What the output must never be, hold or lie in: the input and a warm-start store."""
    protected = {config.input_path: "the input"}
    if config.warm_start:
        protected[config.warm_start] = "the warm-start store"
    return protected


def _placement(config: PipelineConfig, address: str | None) -> PipelineConfig:
    """Fail fast when a task asks for more CPUs than the embedded Ray has (it would wait
    forever), or for GPUs it has none of (or fall back to CPU)."""
    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    cpus = ray.cluster_resources().get("CPU", 0)
    if embedded and config.num_cpus > cpus:
        raise ResourceUnavailableError(
            f"resources.num_cpus is {config.num_cpus:g} but this machine's Ray has {cpus:g} "
            f"CPUs, so no tile could ever start: set resources.num_cpus to at most {cpus:g}, "
            "or run on a cluster with --address"
        )
    if config.num_gpus <= 0 or ray.cluster_resources().get("GPU", 0) > 0:
        return config
    if address or os.environ.get("RAY_ADDRESS"):
        return config  # a cluster's autoscaler may still add GPU workers
    if config.cpu_fallback:
        warnings.warn(
            f"resources.num_gpus is {config.num_gpus:g} but Ray sees no GPU on this machine: "
            "running on CPU (resources.cpu_fallback is true)",
            RuntimeWarning,
            stacklevel=3,
        )
        return replace(config, num_gpus=0.0)
    raise ResourceUnavailableError(
        f"resources.num_gpus is {config.num_gpus:g} but Ray sees no GPU on this machine: set "
        "resources.num_gpus: 0, set resources.cpu_fallback: true, or run on a GPU cluster "
        "with --address"
    )


def _run_tiles(
    config: PipelineConfig,
    tiles: list[Tile],
    progress: bool,
    start: float,
    blender: Blender | None = None,
) -> tuple[int, float]:
    """Compute `tiles` with at most `max_in_flight` tasks at once; write and journal each
    chunk (through the `blender` when tiles overlap). Returns the cells written and the
    seconds the driver spent writing."""
    remote = ray.remote(predict_tile_on_worker).options(
        num_cpus=config.num_cpus,
        num_gpus=config.num_gpus,
        max_retries=MAX_RETRIES,
        retry_exceptions=list(TRANSIENT_ERRORS),
    )
    config_ref = ray.put(config)
    pending: dict = {}
    cells, writing = 0, 0.0
    bar = tqdm(total=len(tiles), unit="tile", disable=not progress, desc="tiles", mininterval=1.0)

    def collect(ref: ray.ObjectRef) -> None:
        nonlocal cells, writing
        result: TileResult = _result_of(ref, pending[ref])
        mark = time.perf_counter()
        if blender is None:
            chunks = [(result.tile, result.predictions, result.diagnostics)]
        else:
            chunks = blender.add(result.tile, result.predictions, result.diagnostics)
        for chunk, predictions, diagnostics in chunks:
            try:
                write_tile(config.output_path, chunk, predictions)
                record_tile(config.output_path, chunk.index, diagnostics)
            except OSError as err:
                raise StorageError(
                    f"writing tile {chunk.index} to {config.output_path!r} failed: "
                    f"{err.strerror or err} ({err.filename or 'a chunk file'}); the tiles "
                    "written so far are kept: fix the storage (free disk space) and rerun "
                    "to resume"
                ) from err
            cells += math.prod(chunk.core_shape)
        writing += time.perf_counter() - mark
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
    return cells, writing


def _result_of(ref: ray.ObjectRef, tile: Tile) -> TileResult:
    """A finished task's result; an InputError raised inside it is raised here as itself
    (one sentence naming the tile), not as a remote traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, InputError):
            raise InputError(f"tile {tile.index} ({_window_text(tile)}): {cause}") from None
        raise


def _window_text(tile: Tile) -> str:
    """A tile's core as `start:stop` per dim, for messages."""
    return ", ".join(f"{s.start}:{s.stop}" for s in tile.core)


def _provenance(diagnostics: object) -> object:
    """A tile's diagnostics without its timings and worker, so reruns give identical metadata."""
    if isinstance(diagnostics, dict):
        return {
            k: _provenance(v)
            for k, v in diagnostics.items()
            if "seconds" not in k and k != "worker_pid"
        }
    if isinstance(diagnostics, list):
        return [_provenance(v) for v in diagnostics]
    return diagnostics
