"""The resolved run: the user's config made concrete against the opened input, built once.

`resolve_run` fixes everything the config leaves to the data (a forecast's issue time,
history and store path; the target grid; the tile plan; the journal's plan) and refuses
what cannot run, in one place. The driver then only adds what Ray and phase 1 decide (the
device, the shared hyperparameters and the halos sized from them) when it builds the
`TileWork` that tasks receive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from pipeline.config import PipelineConfig
from pipeline.coordinates import coordinate_values
from pipeline.errors import InputError
from pipeline.fingerprint import input_fingerprint, values_fingerprint
from pipeline.hyperparameters import sample_tile_indices
from pipeline.journal import plan_of
from pipeline.output_guard import check_output_location, check_replaceable
from pipeline.storage import Location
from pipeline.target import check_new_grid, resolve_forecast, target_dataset
from pipeline.tiling import Tile, auto_blend, plan_tiles
from pipeline.work import ModelPlan, TileWork, WindowSource

DEFAULT_CHUNK_CELLS = 2**20  # 4 MB of float32: a few MB per object, as readers like


@dataclass(frozen=True)
class SharedPlan:
    """How a run gets shared hyperparameters: from a warm-start store, else fitted on the
    `sample` tiles (phase 1, with the spec's halo); with `halo_lengthscales`, halos are then
    that many of the learned lengthscales."""

    warm_start: str | None
    sample: tuple[int, ...]
    halo_lengthscales: float | None


@dataclass(frozen=True)
class ResolvedRun:
    """One run, concrete: where it writes, what it reads, the grids and the tile plan.

    `shape` is the output grid, `tiled` the grid the tiles cut (the input's, on a new
    target grid), `chunks` the tile cores, `store_chunks` and `inner` the output store's
    chunks and shard chunks (None: unsharded), `tiles` the plan with the spec's `halo`,
    `plan` what the journal records, and `shared` how shared hyperparameters are got
    (None: each tile learns its own).
    """

    config: PipelineConfig
    output: Location
    source: WindowSource
    target: xr.Dataset
    shape: tuple[int, ...]
    tiled: tuple[int, ...]
    chunks: tuple[int, ...]
    store_chunks: tuple[int, ...]
    inner: tuple[int, ...] | None
    halo: tuple[int, ...]
    tiles: list[Tile]
    plan: dict
    shared: SharedPlan | None

    @property
    def wrap(self) -> list[bool]:
        return [dim in self.config.wrap for dim in self.config.dims]

    def tiles_with(self, halo: tuple[int, ...]) -> list[Tile]:
        """The tile plan with other halos (sized from shared lengthscales)."""
        history = [self.source.history(dim) for dim in self.config.dims]
        return plan_tiles(self.tiled, self.chunks, halo, self.config.blend, self.wrap, history)

    def work(
        self,
        device: str,
        halo: tuple[int, ...] | None = None,
        shared: dict | None = None,
        trends: dict | None = None,
        kernels: tuple | None = None,
    ) -> TileWork:
        """What each tile task receives: phase 1's (no shared values, the spec's halo) or
        phase 2's; with the whole-domain trends where the model has them, and the kernels
        chosen by the data where the spec named none."""
        config = self.config
        model = config.model if kernels is None else replace(config.model, kernels=kernels)
        plan = ModelPlan(
            model=model,
            columns=self.source.input_columns,
            halo=self.halo if halo is None else halo,
            shared=shared,
            std_includes_noise=config.std_includes_noise,
            off_lattice=bool(config.regrid),
            trends=trends,
        )
        return TileWork(self.source, plan, device)


def resolve_run(config: PipelineConfig, ds: xr.Dataset) -> ResolvedRun:
    """The run `config` asks for over the opened input `ds`; InputError for what cannot run
    (a forecast without history, a new grid outside the data, an output that may not be
    written, tiles or chunks that do not fit)."""
    forecast, output_path = config.forecast, config.output_path
    if forecast is not None:
        forecast, output_path = resolve_forecast(forecast, output_path, ds)
    if config.regrid:
        check_new_grid(config.regrid, ds)
    source = WindowSource(
        config.input_path,
        config.variables,
        config.dims,
        config.station_dim,
        config.station_coords,
        forecast,
        config.regrid,
        config.never_observed_along,
        config.model.covariates,
        config.input_options,
        config.input_sel,
    )
    target = target_dataset(source, ds)
    shape = tuple(target.sizes[d] for d in config.dims)
    # Tiles cut the input's grid; on a new target grid each writes the cells in its core.
    tiled = tuple(ds.sizes[d] for d in config.dims) if config.regrid else shape
    chunks = tuple(min(t, n) for t, n in zip(config.tile, tiled, strict=True))
    wrap = [dim in config.wrap for dim in config.dims]
    if config.blend is None:  # blending where it can run: same grid, no shards, no forecast
        plain = not (config.regrid or config.chunks or forecast is not None)
        margins = auto_blend(tiled, chunks, config.halo, wrap) if plain else ()
        config = replace(config, blend=margins)
    history = [source.history(dim) for dim in config.dims]
    tiles = plan_tiles(tiled, chunks, config.halo, config.blend, wrap, history)
    output = Location(output_path, config.output_options)
    check_output_location(output, _protected_paths(config))
    if config.overwrite:
        check_replaceable(output)
    plan = plan_of(config, forecast, shape, _fingerprint(config, source, ds))
    tile_cells = tuple(
        max(1, min(round(c * n / m), n)) for c, n, m in zip(chunks, shape, tiled, strict=True)
    )
    store_chunks, inner = _store_layout(config, tile_cells, shape, chunks)
    return ResolvedRun(
        config,
        output,
        source,
        target,
        shape,
        tiled,
        chunks,
        store_chunks,
        inner,
        config.halo,
        tiles,
        plan,
        _shared_plan(config, len(tiles)),
    )


def _shared_plan(config: PipelineConfig, tiles: int) -> SharedPlan | None:
    if config.model.hyperparameters != "shared":
        return None
    sample = tuple(sample_tile_indices(tiles))
    return SharedPlan(config.warm_start, sample, config.halo_lengthscales)


def halo_from_lengthscales(run: ResolvedRun, shared: dict, ds: xr.Dataset) -> tuple[int, ...]:
    """Halos of `halo_lengthscales` times each dim's longest shared lengthscale (over every
    factor reading it), in cells
    (at least the blend margin; a wrapped dim's at most what fits around the circle)."""
    config = run.config
    halo = []
    for i, dim in enumerate(config.dims):
        if dim == config.station_dim:
            halo.append(0)
            continue
        column = config.input_columns.index(dim)
        longest = max(
            scale
            for v in shared.values()
            for scale, columns in zip(v["lengthscales"], v["columns"], strict=True)
            if column in columns
        )
        step = float(np.median(np.abs(np.diff(coordinate_values(ds[dim])))))
        cells = max(
            math.ceil(run.shared.halo_lengthscales * longest / step),
            config.blend[i] if config.blend else 0,
        )
        n = ds.sizes[dim]
        limit = (n - run.chunks[i]) // 2 if dim in config.wrap else n
        halo.append(min(cells, limit))
    return tuple(halo)


def _store_layout(
    config: PipelineConfig,
    tile_cells: tuple[int, ...],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The units the store is written in (chunks, or shards) and the chunks inside shards
    (None: unsharded): output.shards and output.chunks as given; tiling.chunks, one shard
    per tile; otherwise whole tiles, grouped to a few MB where a tile is smaller."""
    if config.output_shards:
        inner = tuple(min(c, n) for c, n in zip(config.output_chunks, shape, strict=True))
        given = zip(config.output_shards, inner, shape, strict=True)
        shards = tuple(min(s, math.ceil(n / c) * c) for s, c, n in given)
        return shards, inner
    if config.output_chunks:
        return tuple(min(c, n) for c, n in zip(config.output_chunks, shape, strict=True)), None
    if config.chunks:
        return tile_cells, _inner_chunks(config, chunks)
    return default_chunks(tile_cells, shape), None


def default_chunks(
    tile_cells: tuple[int, ...], shape: tuple[int, ...], target: int = DEFAULT_CHUNK_CELLS
) -> tuple[int, ...]:
    """Whole tiles as chunks when one holds at least a quarter of `target` cells; else the
    smallest block of k x k x ... tiles that holds `target` (or the whole grid)."""
    if math.prod(tile_cells) * 4 >= target:
        return tile_cells
    k = 2
    while True:
        chunk = tuple(min(k * t, n) for t, n in zip(tile_cells, shape, strict=True))
        if math.prod(chunk) >= target or chunk == shape:
            return chunk
        k += 1


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


def _fingerprint(config: PipelineConfig, source: WindowSource, ds: xr.Dataset) -> dict:
    """What identifies the data a run reads: for a forecast, the values of the history its
    tiles read (so steps appended after the issue time leave it unchanged); otherwise the
    whole input's metadata and files."""
    forecast = source.forecast
    if forecast is None:
        return input_fingerprint(config.input, ds, config.variables)
    back = config.halo[config.dims.index(forecast.dim)]
    read = ds.isel({forecast.dim: slice(max(0, forecast.history - back), forecast.history)})
    return values_fingerprint(read, config.variables)


def _protected_paths(config: PipelineConfig) -> dict[str, str]:
    """What the output must never be, hold or lie in: the input and a warm-start store."""
    protected = {config.input_path: "the input"}
    if config.warm_start:
        protected[config.warm_start] = "the warm-start store"
    return protected
