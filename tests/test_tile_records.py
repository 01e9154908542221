"""Tile records live in an array of the store, so its root metadata does not grow with
tiles and stays strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.runner import run_pipeline
from pipeline.store import create_output_store, finalize_store
from pipeline.synthetic import DIMS, SyntheticGrid, write_synthetic
from pipeline.tile_records import read_tile_records, strict_json, write_tile_records

pytestmark = pytest.mark.usefixtures("ray_cluster")

RECIPE = SyntheticGrid(shape=(2, 24, 24), seed=4)


def test_strict_json_writes_nan_and_infinities_as_null() -> None:
    text = strict_json({"lml": math.nan, "x": [1.5, -math.inf], "ok": "yes"})
    assert json.loads(text) == {"lml": None, "x": [1.5, None], "ok": "yes"}


def refuse_constants(name: str) -> None:
    raise ValueError(f"{name} is not strict JSON")


def root_metadata(store: Path) -> bytes:
    """The store's root zarr.json (consolidated metadata included), checked to be strict JSON."""
    text = (store / "zarr.json").read_bytes()
    json.loads(text, parse_constant=refuse_constants)
    return text


def test_root_metadata_stays_the_same_size_at_36_times_the_tiles(tmp_path) -> None:
    """4 tiles and 144 tiles: the same root metadata size to within a few digits, every
    tile's record read back in tile order, and nothing of them among the data variables."""
    source = str(tmp_path / "in.zarr")
    write_synthetic(source, RECIPE, chunks=(2, 12, 12))
    sizes = {}
    for tile in (12, 2):
        out = tmp_path / f"tiles{tile}.zarr"
        config = PipelineConfig(
            input_path=source,
            variables=("tas",),
            dims=DIMS,
            output_path=str(out),
            tile=(2, tile, tile),
            halo=(0, 2, 2),
            model=ModelConfig(kernels=(AxisKernel("matern32"),) * 3, type="exact", max_iter=5),
            max_in_flight=4,
            spec_text="# test spec",
        )
        summary = run_pipeline(config, progress=False)
        records = read_tile_records(str(out))
        assert [r["tile"] for r in records] == list(range(summary.tiles))
        assert all(r["variables"]["tas"]["status"] == "ok" for r in records)
        assert set(xr.open_zarr(out).data_vars) == {"tas", "tas_std"}
        sizes[summary.tiles] = len(root_metadata(out))
    assert set(sizes) == {4, 144}
    assert abs(sizes[144] - sizes[4]) < 64, sizes
    assert sizes[144] < 64 * 1024


def test_root_metadata_of_ten_thousand_tiles_is_small_strict_json(tmp_path) -> None:
    """A store of 10,000 tiles, made and finished by the run's own writers with a real
    tile's record for each (NaN-holding fields included): its root metadata stays under
    64 kB and strict JSON, and every record reads back in order."""
    source = str(tmp_path / "in.zarr")
    write_synthetic(source, RECIPE, chunks=(2, 12, 12))
    out = tmp_path / "one.zarr"
    config = PipelineConfig(
        input_path=source,
        variables=("tas",),
        dims=DIMS,
        output_path=str(out),
        tile=(2, 24, 24),
        halo=(0, 0, 0),
        model=ModelConfig(kernels=(AxisKernel("matern32"),) * 3, type="exact", max_iter=5),
        spec_text="# test spec",
    )
    run_pipeline(config, progress=False)
    record = read_tile_records(str(out))[0] | {"lml": math.nan}
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)

    grid = xr.Dataset(coords={d: np.arange(100.0) for d in DIMS})
    grid["tas"] = (DIMS, np.zeros((100, 100, 100), dtype=np.float32))
    big = tmp_path / "big.zarr"
    create_output_store(str(big), grid, ("tas",), DIMS, (1, 10, 10), attrs)
    records = [{**record, "tile": i} for i in range(10_000)]
    write_tile_records(str(big), records)
    finalize_store(str(big), attrs)
    assert len(root_metadata(big)) < 64 * 1024
    assert [r["tile"] for r in read_tile_records(str(big))] == list(range(10_000))
    assert read_tile_records(str(big))[0]["lml"] is None
