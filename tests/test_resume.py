"""Losing nothing when things fail: resume after a killed driver, retry after a dead worker,
refusal of a second writer and of a store made for another plan, GPUs asked of a CPU machine.

Runs go through a real local Ray; killed drivers are real processes joined to it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.config import AxisKernel, ModelConfig
from pipeline.errors import PlanMismatchError, ResourceUnavailableError, RunInProgressError
from pipeline.faults import CRASH_ONCE_ENV
from pipeline.journal import finished_tiles
from pipeline.runner import run_pipeline
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import (
    assert_identical_stores,
    resumable_config,
    start_driver,
    wait_for_tiles,
)

MATERN32 = (AxisKernel("matern32"),)

pytestmark = pytest.mark.usefixtures("ray_cluster")

RECIPE = SyntheticGrid(shape=(6, 32, 32), seed=3)
TILES = 8


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("input") / "syn.zarr"
    write_synthetic(str(path), RECIPE, chunks=(3, 16, 16))
    return str(path)


config_for = resumable_config


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> str:
    """An uninterrupted run: what every interrupted one must end up identical to."""
    out = str(tmp_path_factory.mktemp("reference") / "ref.zarr")
    summary = run_pipeline(config_for(source, out), progress=False)
    assert summary.tiles == TILES and summary.resumed_tiles == 0
    return out


def test_rerun_after_a_killed_driver_computes_only_the_missing_tiles(
    source, reference, tmp_path
) -> None:
    out = str(tmp_path / "out.zarr")
    driver = start_driver(config_for(source, out), tmp_path)
    wait_for_tiles(out, 2, driver)
    driver.kill()  # SIGKILL: no cleanup of any kind
    driver.wait()
    done_before = len(finished_tiles(out))
    assert 2 <= done_before < TILES

    summary = run_pipeline(config_for(source, out), progress=False)
    assert summary.resumed_tiles == done_before
    assert summary.cells == (TILES - done_before) * 3 * 16 * 16
    assert_identical_stores(out, reference)


def test_a_resumed_shared_run_reuses_phase_one_and_matches(source, tmp_path) -> None:
    """Shared hyperparameters are journalled: the rerun after a kill uses the same ones."""
    model = ModelConfig(kernels=MATERN32 * 3, type="exact", max_points=700)
    shared = replace(model, hyperparameters="shared")
    expected = str(tmp_path / "expected.zarr")
    run_pipeline(config_for(source, expected, model=shared), progress=False)
    out = str(tmp_path / "out.zarr")
    driver = start_driver(config_for(source, out, model=shared), tmp_path)
    wait_for_tiles(out, 2, driver)
    driver.kill()
    driver.wait()
    summary = run_pipeline(config_for(source, out, model=shared), progress=False)
    assert summary.resumed_tiles >= 2
    assert_identical_stores(out, expected)


def test_a_resumed_blended_run_recomputes_neighbours_and_matches(source, tmp_path) -> None:
    """With blending a chunk needs its neighbours' predictions too: the rerun recomputes
    the finished tiles next to unfinished chunks, writes only the unfinished chunks, and
    ends bitwise identical to an uninterrupted blended run."""
    expected = str(tmp_path / "expected.zarr")
    run_pipeline(config_for(source, expected, blend=(0, 3, 3)), progress=False)
    out = str(tmp_path / "out.zarr")
    driver = start_driver(config_for(source, out, blend=(0, 3, 3)), tmp_path)
    wait_for_tiles(out, 1, driver)
    driver.kill()
    driver.wait()
    done_before = len(finished_tiles(out))
    assert 1 <= done_before < TILES
    summary = run_pipeline(config_for(source, out, blend=(0, 3, 3)), progress=False)
    assert summary.resumed_tiles == done_before
    assert summary.cells == (TILES - done_before) * 3 * 16 * 16
    assert_identical_stores(out, expected)


def test_a_worker_dying_mid_tile_is_retried(source, reference, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, f"5:{marker}")  # the worker running tile 5 dies once
    config = config_for(source, str(tmp_path / "out.zarr"))
    summary = run_pipeline(config, progress=False)
    assert marker.exists(), "the fault was not injected"
    assert summary.tiles == TILES
    assert_identical_stores(config.output_path, reference)


def test_a_second_run_on_a_live_store_is_refused_and_the_live_run_finishes(
    source, reference, tmp_path
) -> None:
    out = str(tmp_path / "out.zarr")
    driver = start_driver(config_for(source, out), tmp_path)
    wait_for_tiles(out, 1, driver)
    with pytest.raises(RunInProgressError, match=r"is being written by another run \(pid"):
        run_pipeline(config_for(source, out), progress=False)
    assert driver.wait(timeout=300) == 0
    assert_identical_stores(out, reference)


def test_a_store_made_for_another_plan_is_refused_untouched(source, reference, tmp_path) -> None:
    other = config_for(source, reference, halo=(1, 6, 6))
    before = xr.open_zarr(reference)["tas"].values
    with pytest.raises(PlanMismatchError, match=r"made for another grid or spec \(halo: store"):
        run_pipeline(other, progress=False)
    np.testing.assert_array_equal(xr.open_zarr(reference)["tas"].values, before)


def test_tasks_write_their_own_chunks_when_each_lies_in_one_tile(source, tmp_path) -> None:
    """Chunks inside tile cores, no blending: the driver writes no chunk, only journals,
    and the values are those of a run whose driver wrote everything (blend 0 vs none)."""
    out = str(tmp_path / "own.zarr")
    summary = run_pipeline(config_for(source, out, output_chunks=(3, 8, 16)), progress=False)
    assert summary.driver_chunks == 0 and summary.tiles == TILES
    assembled = str(tmp_path / "assembled.zarr")
    across = run_pipeline(config_for(source, assembled, output_chunks=(3, 32, 32)), False)
    assert across.driver_chunks == 2
    for name in ("tas", "tas_std"):
        np.testing.assert_array_equal(
            zarr.open_group(out, mode="r")[name][...],
            zarr.open_group(assembled, mode="r")[name][...],
        )


def test_rerunning_a_finished_job_computes_nothing(source, reference) -> None:
    summary = run_pipeline(config_for(source, reference), progress=False)
    assert summary.resumed_tiles == TILES and summary.cells == 0


def test_gpus_asked_of_a_machine_without_any_fail_fast_or_fall_back(source, tmp_path) -> None:
    # one tile over the whole grid: the fallback is a property of the run, not of a tile
    whole = dict(tile=RECIPE.shape, halo=(0, 0, 0), num_gpus=0.5)
    config = config_for(source, str(tmp_path / "gpu.zarr"), **whole)
    with pytest.raises(ResourceUnavailableError, match="Ray sees no GPU on this machine"):
        run_pipeline(config, progress=False)
    with pytest.warns(RuntimeWarning, match="running on CPU"):
        summary = run_pipeline(replace(config, cpu_fallback=True), progress=False)
    assert summary.tiles == 1 and summary.cells == 6 * 32 * 32


def test_a_sharded_store_holds_the_same_values(source, reference, tmp_path) -> None:
    """tiling.chunks: one zarr v3 shard per tile, read in smaller chunks; same numbers."""
    out = str(tmp_path / "sharded.zarr")
    run_pipeline(config_for(source, out, chunks=(3, 8, 8), output_chunks=()), progress=False)
    array = zarr.open_group(out, mode="r")["tas"]
    assert array.shards == (3, 16, 16) and array.chunks == (3, 8, 8)
    np.testing.assert_array_equal(array[...], zarr.open_group(reference, mode="r")["tas"][...])
    with pytest.raises(ValueError, match="must divide the tile sizes"):
        bad = config_for(source, str(tmp_path / "bad.zarr"), chunks=(3, 5, 8), output_chunks=())
        run_pipeline(bad)


@pytest.mark.parametrize(
    ("chunks", "shards"),
    [((2, 24, 10), ()), ((6, 32, 32), ()), ((2, 8, 8), (4, 16, 24))],
    ids=["across tile edges", "one chunk", "shards of chunks"],
)
def test_output_chunks_set_apart_from_tiles_hold_the_same_values(
    source, reference, tmp_path, chunks, shards
) -> None:
    """output.chunks (and shards) independent of the tiles: readers get the same values."""
    out = str(tmp_path / "chunked.zarr")
    config = config_for(source, out, output_chunks=chunks, output_shards=shards)
    summary = run_pipeline(config, progress=False)
    assert summary.driver_chunks > 0, "chunks spanning tiles are assembled on the driver"
    got, want = zarr.open_group(out, mode="r"), zarr.open_group(reference, mode="r")
    for name in ("tas", "tas_std"):
        assert got[name].chunks == chunks and got[name].shards == (shards or None)
        np.testing.assert_array_equal(got[name][...], want[name][...])
    opened = xr.open_zarr(out)
    np.testing.assert_array_equal(opened["tas"].values, xr.open_zarr(reference)["tas"].values)


def test_a_killed_run_whose_chunks_span_tiles_resumes_identically(
    source, reference, tmp_path
) -> None:
    """Chunks of 4 tiles each: a tile is journalled once its chunk is written, so the
    kill keeps whole chunks and the rerun computes the others."""
    out = str(tmp_path / "out.zarr")
    config = config_for(source, out, output_chunks=(6, 16, 32))
    driver = start_driver(config, tmp_path)
    wait_for_tiles(out, 4, driver)
    driver.kill()
    driver.wait()
    done_before = len(finished_tiles(out))
    assert done_before == 4, "tiles are journalled chunk by chunk"
    summary = run_pipeline(config, progress=False)
    assert summary.resumed_tiles == 4
    got, want = zarr.open_group(out, mode="r"), zarr.open_group(reference, mode="r")
    for name in ("tas", "tas_std"):
        np.testing.assert_array_equal(got[name][...], want[name][...])
