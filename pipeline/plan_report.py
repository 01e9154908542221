"""A run's plan without running it (`gpgrid run --dry-run`): tiles, output chunks, the
bytes the tasks will read and write, who writes, and the size of the store's root
metadata, measured on the real template made in a scratch folder. Starts no Ray."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.inputs import check_input, open_input
from pipeline.resolved import resolve_run
from pipeline.storage import Location, check_reached
from pipeline.store import finalize_store
from pipeline.template import create_template
from pipeline.tile_records import write_tile_records
from pipeline.writes import workers_can_write

OUTPUT_ITEM_BYTES = 4  # float32 mean and std


@dataclass(frozen=True)
class PlanReport:
    """What a run would do; `seconds` is how long planning it took."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    tile: tuple[int, ...]
    tiles: int
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    stored_objects: int
    read_bytes: int
    write_bytes: int
    workers_write: bool
    metadata_bytes: int
    seconds: float

    def lines(self) -> list[str]:
        def per_dim(values: tuple[int, ...]) -> str:
            return ", ".join(f"{d} {v:,}" for d, v in zip(self.dims, values, strict=True))

        kind = "shard" if self.shards else "chunk"
        output = f"{self.stored_objects:,} {kind}{'s' if self.stored_objects != 1 else ''} of "
        if self.shards:
            output += f"{per_dim(self.shards)}, in chunks of {per_dim(self.chunks)}"
        else:
            output += per_dim(self.chunks)
        return [
            f"grid      {per_dim(self.shape)} ({math.prod(self.shape):,} cells)",
            f"tiles     {self.tiles:,} of {per_dim(self.tile)}",
            f"output    {output}",
            f"read      {_bytes(self.read_bytes)} (every tile's window, halos included)",
            f"write     {_bytes(self.write_bytes)} (mean and std, float32)",
            "writers   "
            + (
                "the tile tasks, each its own chunks (the driver only journals)"
                if self.workers_write
                else "the driver (tiles overlap or chunks span tiles)"
            ),
            f"metadata  {_bytes(self.metadata_bytes)} root zarr.json (before fitted parameters)",
            f"planned in {self.seconds:.1f} s; nothing was started or written",
        ]


def plan_report(config: PipelineConfig) -> PlanReport:
    """Resolve the run `config` asks for over its input, and measure what it would do."""
    start = time.perf_counter()
    check_reached(config.input, "input")
    ds = open_input(config.input, config.input_sel)
    check_input(ds, config)
    run = resolve_run(config, ds)
    read = sum(math.prod(s.stop - s.start for s in tile.window) for tile in run.tiles) * sum(
        ds[name].dtype.itemsize for name in (*config.variables, *config.model.covariates)
    )
    cells = math.prod(run.shape)
    overlapping = any(run.config.blend or ()) or bool(config.regrid)
    with tempfile.TemporaryDirectory(prefix="gpgrid-plan-") as scratch:
        template = Path(scratch) / "template.zarr"
        create_template(run, Location(str(template)))
        write_tile_records(str(template), [{}] * len(run.tiles))  # its array's metadata
        finalize_store(str(template), {})
        metadata = (template / "zarr.json").stat().st_size
    return PlanReport(
        dims=config.dims,
        shape=run.shape,
        tile=run.chunks,
        tiles=len(run.tiles),
        chunks=run.inner or run.store_chunks,
        shards=run.store_chunks if run.inner else None,
        stored_objects=math.prod(
            math.ceil(n / c) for n, c in zip(run.shape, run.store_chunks, strict=True)
        ),
        read_bytes=read,
        write_bytes=cells * OUTPUT_ITEM_BYTES * 2 * len(config.variables),
        workers_write=workers_can_write(run.shape, run.chunks, run.store_chunks, overlapping),
        metadata_bytes=metadata,
        seconds=time.perf_counter() - start,
    )


def _bytes(count: float) -> str:
    """`12.3 MB`: decimal units, as storage bills them."""
    units = ["B", "kB", "MB", "GB", "TB"]
    while count >= 1000 and len(units) > 1:
        count /= 1000
        units.pop(0)
    return f"{count:,.1f} {units[0]}"
