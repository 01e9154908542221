"""Drive a run on Ray: plan tiles, keep a bounded number of tile tasks in flight, write results.

A run holds its output's lock, journals every finished tile and resumes a store made
by an interrupted run of the same plan (see journal.py); tile tasks are retried when
their worker dies and on the transient errors below.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import ray
import zarr
from tqdm import tqdm

from pipeline.assembly import ChunkAssembler, write_order
from pipeline.blend import Blender
from pipeline.cluster import ensure_ray
from pipeline.config import AxisKernel, PipelineConfig
from pipeline.errors import InputError, ResourceUnavailableError, StorageError
from pipeline.faults import crash_if_injected, task_runtime_env
from pipeline.grid import target_region
from pipeline.hyperparameters import (
    best_supported,
    candidates,
    pool,
    sample_tile_indices,
    widened,
)
from pipeline.inputs import check_input, open_input
from pipeline.journal import (
    check_plan,
    finished_tile_indices,
    finished_tiles,
    flagged_tiles,
    mark_complete,
    read_plan,
    read_shared,
    reset,
    run_lock,
    write_plan,
    write_shared,
)
from pipeline.kernel_choice import KERNEL_CHOICE_TILES, choose_family
from pipeline.locks import RunLock
from pipeline.output_guard import is_gpgrid_store, remove_store
from pipeline.resolved import ResolvedRun, halo_from_lengthscales, resolve_run
from pipeline.storage import Location, check_reached
from pipeline.store import finalize_store, std_name
from pipeline.template import create_template
from pipeline.tile_records import write_tile_records
from pipeline.tiling import Tile, TileResult
from pipeline.value_scan import scan_input
from pipeline.work import TileWork
from pipeline.writes import AssembledWrites, WorkerWrites, workers_can_write, write_own_chunks

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
    # output chunks the driver wrote, their bytes, and the bytes of tile predictions it
    # received (all 0 when tasks wrote their own chunks)
    driver_chunks: int = 0
    driver_bytes_written: int = 0
    driver_bytes_received: int = 0

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else float("nan")


def predict_tile_on_worker(work: TileWork, tile: Tile) -> TileResult:
    """The Ray task: imports the solvers on the worker, so the driver never loads torch."""
    crash_if_injected(tile.index)
    from pipeline.tasks import predict_tile

    result = predict_tile(work, tile)
    result.diagnostics["worker_node"] = ray.get_runtime_context().get_node_id()
    return result if work.writes_to is None else write_own_chunks(work, result)


def fit_hyperparameters_on_worker(work: TileWork, tile: Tile, calibrate: bool) -> dict:
    """Phase 1's Ray task: one sampled tile's hyperparameters per variable."""
    from pipeline.phase_one import fit_tile_hyperparameters

    return fit_tile_hyperparameters(work, tile, calibrate)


def likelihoods_on_worker(work: TileWork, tile: Tile, fits: dict) -> dict:
    """Phase 1's Ray task for multi-scale kernels: one sampled tile's likelihood of each fit."""
    from pipeline.phase_one import tile_likelihoods

    return tile_likelihoods(work, tile, fits)


def variance_factors_on_worker(work: TileWork, tile: Tile, shared: dict) -> dict:
    """Phase 1's Ray task: how much one sampled tile's moved gaps widen the chosen set."""
    from pipeline.phase_one import tile_variance_factors

    return tile_variance_factors(work, tile, shared)


def fit_trends_on_worker(work: TileWork) -> dict:
    """The whole-domain trends' Ray task (model.mean: domain), before any tile."""
    from pipeline.trend import fit_trends

    return fit_trends(work)


def family_likelihoods_on_worker(work: TileWork, tile: Tile) -> dict:
    """The kernel choice's Ray task: one sampled tile's likelihood per candidate family."""
    from pipeline.kernel_choice import family_likelihoods

    return family_likelihoods(work, tile)


def run_pipeline(
    config: PipelineConfig, progress: bool = True, address: str | None = None
) -> RunSummary:
    """Predict every grid cell of the job's variables into its zarr store, tile by tile.

    A store left by an interrupted run of the same plan is resumed: only its missing
    tiles are computed. Ray is joined at `address` (a cluster, which may add GPU nodes on
    demand), or at RAY_ADDRESS, or started embedded; once, here.
    """
    start = time.perf_counter()
    check_reached(config.input, "input")
    check_reached(config.output, "output")
    ds = open_input(config.input, config.input_sel)
    check_input(ds, config)
    run = resolve_run(config, ds)
    if not _resumable(run):  # a resume reads the data its first run checked
        scan_input(ds, config.variables, config.input, cut=bool(config.input_sel))
    ensure_ray(address)
    num_gpus = _placement(config, address)
    with run_lock(run.output) as lock:
        return _run_locked(run, ds, num_gpus, progress, start, lock)


def _run_locked(
    run: ResolvedRun,
    ds,  # noqa: ANN001
    num_gpus: float,
    progress: bool,
    start: float,
    lock: RunLock,
) -> RunSummary:
    """The run, holding its store's `lock`: phase 1 where hyperparameters are shared, the
    tiles still missing, the store finished; a store this run created and left without a
    finished tile is removed again."""
    path = run.output
    done = _finished_of_this_plan(run)
    created = not done  # a store without finished tiles starts again from its template
    try:
        if created:
            _new_store(run)
        timings = {"setup": time.perf_counter() - start}
        resources = {"num_cpus": run.config.num_cpus, "num_gpus": num_gpus}
        work, tiles, attrs = _phase_one(run, ds, resources, progress, timings)
        todo, blender = _still_to_compute(run, tiles, done)
        todo, writer = _result_writer(run, ds, todo, done, blender)
        if isinstance(writer, WorkerWrites):
            work = replace(work, writes_to=run.output)
        if done and progress:
            print(
                f"resuming {path.url}: {len(done)} of {len(tiles)} tiles already written; "
                f"computing the other {len(todo)}",
                file=sys.stderr,
            )
        mark = time.perf_counter()
        cells, timings["write"] = _run_tiles(
            run, work, resources, todo, progress, start, lock, writer
        )
        timings["tiles"] = time.perf_counter() - mark
        mark = time.perf_counter()
        records = finished_tiles(path)
        lock.confirm()
        write_tile_records(path, [_provenance(records[i]) for i in sorted(records)])
        finalize_store(path, attrs)
        mark_complete(path)
        timings["finalize"] = time.perf_counter() - mark
    except BaseException:
        if created and not finished_tile_indices(path):
            reset(path)  # nothing was written: leave nothing behind
            path.remove_tree()
        raise
    seconds = time.perf_counter() - start
    return RunSummary(
        path.url,
        len(tiles),
        cells,
        seconds,
        resumed_tiles=len(done),
        timings=timings,
        flagged=flagged_tiles(records),
        driver_chunks=writer.chunks_written,
        driver_bytes_written=writer.bytes_written,
        driver_bytes_received=writer.bytes_received,
    )


def _phase_one(
    run: ResolvedRun,
    ds,  # noqa: ANN001
    resources: dict,
    progress: bool,
    timings: dict,
) -> tuple[TileWork, list[Tile], dict]:
    """What the tiles receive, their plan and the store attributes phase 1 adds: the
    whole-domain trends where the model has them; with shared hyperparameters, those (and
    halos sized from them), else the spec's halo."""
    device = "cuda" if resources["num_gpus"] > 0 else "cpu"
    attrs: dict = {}
    kernels = _chosen_kernels(run, device, resources, progress, attrs)
    trends = _domain_trends(run, run.work(device, kernels=kernels), resources, progress, timings)
    if trends is not None:
        attrs["gpgrid_trend"] = {v: t and t.hyperparameters for v, t in trends.items()}
    found = {"trends": trends, "kernels": kernels}
    if run.shared is None:
        return run.work(device, **found), run.tiles, attrs
    mark = time.perf_counter()
    shared = _shared_hyperparameters(run, run.work(device, **found), resources, progress)
    attrs["gpgrid_hyperparameters"] = shared
    halo = run.halo
    if run.shared.halo_lengthscales:
        halo = halo_from_lengthscales(run, shared, ds)
        attrs["gpgrid_halo"] = dict(zip(run.config.dims, halo, strict=True))
    timings["phase1"] = time.perf_counter() - mark
    return run.work(device, halo, shared, **found), run.tiles_with(halo), attrs


def _chosen_kernels(
    run: ResolvedRun, device: str, resources: dict, progress: bool, attrs: dict
) -> tuple | None:
    """Where the spec names no kernel: the family with the best likelihood on a few tiles
    spread over the plan (Ray tasks), for every column; recorded in `attrs`."""
    if run.config.model.kernels is not None:
        return None
    sample = sample_tile_indices(len(run.tiles), KERNEL_CHOICE_TILES)
    if progress:
        print(f"kernel: choosing by likelihood on {len(sample)} tiles", file=sys.stderr)
    remote = ray.remote(family_likelihoods_on_worker).options(**resources, max_retries=MAX_RETRIES)
    work = ray.put(run.work(device))  # each candidate sets its own kernels (with_family)
    family, sums = choose_family(ray.get([remote.remote(work, run.tiles[i]) for i in sample]))
    attrs["gpgrid_kernel_choice"] = {
        "chosen": family,
        "log_likelihood_per_observation": sums,
        "tiles": list(sample),
    }
    if progress:
        print(f"kernel: {family} (summed log likelihood per observation {sums})", file=sys.stderr)
    return (AxisKernel(family),) * len(run.config.input_columns)


def _domain_trends(
    run: ResolvedRun, work: TileWork, resources: dict, progress: bool, timings: dict
) -> dict | None:
    """The whole-domain trend of every variable (one Ray task), or None without one."""
    if run.config.model.mean != "domain":
        return None
    mark = time.perf_counter()
    if progress:
        points = run.config.model.trend_points
        print(f"trend: a whole-domain GP on {points:,} observations per variable", file=sys.stderr)
    remote = ray.remote(fit_trends_on_worker).options(**resources, max_retries=MAX_RETRIES)
    trends = ray.get(remote.remote(work))
    timings["trend"] = time.perf_counter() - mark
    return trends


def _still_to_compute(
    run: ResolvedRun, tiles: list[Tile], done: set[int]
) -> tuple[list[Tile], Blender | None]:
    """The tiles to compute, and the blender that assembles overlapping ones (None when
    tiles do not overlap): unfinished tiles, and with blending their finished neighbours."""
    config = run.config
    if not any(config.blend):
        return [tile for tile in tiles if tile.index not in done], None
    pending = {tile.index for tile in tiles} - done
    blender = Blender(tiles, run.shape, config.blend, config.variables, pending, run.wrap)
    return [tile for tile in tiles if tile.index in blender.tiles_needed()], blender


def _result_writer(
    run: ResolvedRun,
    ds,  # noqa: ANN001
    todo: list[Tile],
    done: set[int],
    blender: Blender | None,
) -> tuple[list[Tile], AssembledWrites | WorkerWrites]:
    """The tiles to compute in the order that fills the store's chunks one after another,
    and who writes their chunks: the tasks themselves where each chunk lies in one tile
    core, else the driver, assembling the results into chunks."""
    overlapping = blender is not None or bool(run.config.regrid)
    if workers_can_write(run.shape, run.chunks, run.store_chunks, overlapping):
        return todo, WorkerWrites(run.output)
    regions = {tile.index: _output_region(run, ds, tile) for tile in todo}
    by_index = {tile.index: tile for tile in todo}
    ordered = [by_index[i] for i in write_order(regions, run.store_chunks)]
    names = [name for var in run.config.variables for name in (var, std_name(var))]
    pending = {i: region for i, region in regions.items() if i not in done}
    assembler = ChunkAssembler(run.shape, run.store_chunks, pending, names)
    return ordered, AssembledWrites(run.output, assembler, blender)


def _output_region(run: ResolvedRun, ds, tile: Tile) -> tuple[slice, ...]:  # noqa: ANN001
    """The output cells a tile's result covers: its core, or on a new grid the new cells
    in it."""
    return target_region(run.source, tile, ds) if run.config.regrid else tile.core


def _finished_of_this_plan(run: ResolvedRun) -> set[int]:
    """The tiles an existing output already holds, refusing one made for another plan;
    none when there is no store yet or it is to be overwritten."""
    path = run.output
    if run.config.overwrite or not path.exists():
        return set()
    check_plan(path, run.plan, is_gpgrid_store(path))
    return finished_tile_indices(path)


def _new_store(run: ResolvedRun) -> None:
    """Replace whatever gpgrid store is there by a fresh template and journal; the plan is
    written first, so a store interrupted while being created is still known as ours."""
    remove_store(run.output)
    reset(run.output)
    write_plan(run.output, run.plan)
    create_template(run, run.output)


def _shared_hyperparameters(
    run: ResolvedRun, work: TileWork, resources: dict, progress: bool
) -> dict:
    """Phase 1: the journal's copy when resuming, a warm start's, or pooled fits on a sample
    of tiles (run as Ray tasks); journalled so a resumed run uses the same values."""
    shared = read_shared(run.output)
    if shared is None and run.shared.warm_start:
        shared = _warm_start(run.shared.warm_start, run.config.variables)
    if shared is None:
        shared = _pooled_fits(run, work, resources, progress)
    write_shared(run.output, shared)
    return shared


def _pooled_fits(run: ResolvedRun, work: TileWork, resources: dict, progress: bool) -> dict:
    """Phase 1's fits on the sampled tiles, pooled: one range, each tile's calibrated fit
    and their medians; several ranges (parts that trade off), the fit the sampled tiles'
    likelihoods support best, then calibrated on each of them (see pipeline/phase_one.py)."""
    sample = [run.tiles[i] for i in run.shared.sample]
    work_ref = ray.put(work)

    def on_sample(task: Callable, *args: object) -> list:
        """`task` run on every sampled tile (Ray tasks), with `args` after the tile."""
        remote = ray.remote(task).options(**resources, max_retries=MAX_RETRIES)
        return ray.get([remote.remote(work_ref, tile, *args) for tile in sample])

    if progress:
        print(f"phase 1: hyperparameters on {len(sample)} sampled tiles", file=sys.stderr)
    calibrate = run.config.model.calibrate_variance
    if run.config.model.scales == 1:
        return pool(on_sample(fit_hyperparameters_on_worker, calibrate))
    fits = candidates(on_sample(fit_hyperparameters_on_worker, False), run.shared.sample)
    shared = best_supported(fits, on_sample(likelihoods_on_worker, fits))
    if progress:
        chosen = {var: values["fitted_on_tile"] for var, values in shared.items()}
        print(
            f"phase 1: per variable, the tile whose fit the sampled tiles support best: {chosen}",
            file=sys.stderr,
        )
    if calibrate:
        shared = widened(shared, on_sample(variance_factors_on_worker, shared))
    return shared


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
    return {v: _with_columns(shared[v]) for v in variables}


def _with_columns(values: dict | None) -> dict | None:
    """Shared values as this version records them: stores written before multi-scale
    kernels hold one lengthscale per input column, in order, and no `columns`."""
    if values is None or "columns" in values:
        return values
    return {**values, "columns": [[i] for i in range(len(values["lengthscales"]))]}


def _resumable(run: ResolvedRun) -> bool:
    """Whether the output holds finished tiles of this very plan (input fingerprint included)."""
    path = run.output
    return (
        not run.config.overwrite
        and path.exists()
        and read_plan(path) == run.plan
        and bool(finished_tile_indices(path))
    )


def _placement(config: PipelineConfig, address: str | None) -> float:
    """The GPUs each task asks for. Fails fast when a task asks for more CPUs than the
    embedded Ray has (it would wait forever), or for GPUs it has none of (or falls back to
    CPU: 0)."""
    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    cpus = ray.cluster_resources().get("CPU", 0)
    if embedded and config.num_cpus > cpus:
        raise ResourceUnavailableError(
            f"resources.num_cpus is {config.num_cpus:g} but this machine's Ray has {cpus:g} "
            f"CPUs, so no tile could ever start: set resources.num_cpus to at most {cpus:g}, "
            "or run on a cluster with --address"
        )
    if config.num_gpus <= 0 or ray.cluster_resources().get("GPU", 0) > 0:
        return config.num_gpus
    if not embedded:
        return config.num_gpus  # a cluster's autoscaler may still add GPU workers
    if config.cpu_fallback:
        warnings.warn(
            f"resources.num_gpus is {config.num_gpus:g} but Ray sees no GPU on this machine: "
            "running on CPU (resources.cpu_fallback is true)",
            RuntimeWarning,
            stacklevel=3,
        )
        return 0.0
    raise ResourceUnavailableError(
        f"resources.num_gpus is {config.num_gpus:g} but Ray sees no GPU on this machine: set "
        "resources.num_gpus: 0, set resources.cpu_fallback: true, or run on a GPU cluster "
        "with --address"
    )


def _run_tiles(
    run: ResolvedRun,
    work: TileWork,
    resources: dict,
    tiles: list[Tile],
    progress: bool,
    start: float,
    lock: RunLock,
    writer: AssembledWrites | WorkerWrites,
) -> tuple[int, float]:
    """Compute `tiles` with at most `max_in_flight` tasks at once; hand each result to the
    `writer` (which writes and journals what it completes) while the run still holds its
    `lock`. Returns the cells finished and the seconds the driver spent writing."""
    remote = ray.remote(predict_tile_on_worker).options(
        **resources,
        max_retries=MAX_RETRIES,
        retry_exceptions=list(TRANSIENT_ERRORS),
        **task_runtime_env(),
    )
    work_ref = ray.put(work)
    pending: dict = {}
    cells, writing = 0, 0.0
    bar = tqdm(total=len(tiles), unit="tile", disable=not progress, desc="tiles", mininterval=1.0)

    def collect(ref: ray.ObjectRef) -> None:
        nonlocal cells, writing
        result: TileResult = _result_of(ref, pending.pop(ref))
        mark = time.perf_counter()
        lock.confirm()
        cells += _write_result(run.output, result, writer)
        writing += time.perf_counter() - mark
        bar.update(1)
        bar.set_postfix(cells_per_s=f"{cells / (time.perf_counter() - start):,.0f}")

    for tile in tiles:
        while len(pending) >= run.config.max_in_flight:
            collect(ray.wait(list(pending), num_returns=1)[0][0])
        pending[remote.remote(work_ref, tile)] = tile
    while pending:
        collect(ray.wait(list(pending), num_returns=1)[0][0])
    bar.close()
    return cells, writing


def _write_result(
    path: Location, result: TileResult, writer: AssembledWrites | WorkerWrites
) -> int:
    """Write and journal what a tile's result completes; returns the cells it finished.
    A storage failure is named, keeping what was written for the resume."""
    try:
        return writer.add(result)
    except OSError as err:
        raise StorageError(
            f"writing tile {result.tile.index}'s chunks to {path.url!r} failed: "
            f"{err.strerror or err} ({err.filename or 'a chunk file'}); the tiles "
            "written so far are kept: fix the storage (free disk space) and rerun "
            "to resume"
        ) from err


def _result_of(ref: ray.ObjectRef, tile: Tile) -> TileResult:
    """A finished task's result; an InputError raised inside it is raised here as itself
    (one sentence naming the tile), not as a remote traceback, and storage that kept
    failing (a worker reading the input or writing its chunks) as a StorageError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, InputError):
            raise InputError(f"tile {tile.index} ({_window_text(tile)}): {cause}") from None
        if isinstance(cause, OSError):
            where = cause.filename or "a chunk or input file"
            raise StorageError(
                f"tile {tile.index} ({_window_text(tile)}) failed on storage {MAX_RETRIES + 1} "
                f"times: {cause.strerror or cause} ({where}); the tiles written so far are "
                "kept: fix the storage (free disk space) and rerun to resume"
            ) from err
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
            if "seconds" not in k and k not in ("worker_pid", "worker_node")
        }
    if isinstance(diagnostics, list):
        return [_provenance(v) for v in diagnostics]
    return diagnostics
