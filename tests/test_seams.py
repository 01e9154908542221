"""No seams: tiles that share hyperparameters (phase 1) assemble into the whole-domain answer.

A synthetic draw (lengthscale 6 cells in lat and lon) is cut into 16 tiles with halos of
two lengthscales; the reference is one tile over the whole domain at the same (warm-
started) hyperparameters. Runs go through a real local Ray into real zarr stores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.runner import run_pipeline
from pipeline.synthetic import DIMS, SyntheticGrid, write_synthetic
from pipeline.tile_records import read_tile_records

MATERN32 = (AxisKernel("matern32"),)

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHAPE = (4, 64, 64)
TILE = (4, 16, 16)
BOUNDARIES = [15, 31, 47]  # index i: the jump between cells i and i + 1 crosses a tile edge


def config_for(input_path: str, output_path: str, **changes) -> PipelineConfig:  # noqa: ANN003
    model = ModelConfig(kernels=MATERN32 * 3, hyperparameters="shared")
    base = dict(
        input_path=input_path,
        variables=("tas",),
        dims=DIMS,
        output_path=output_path,
        tile=TILE,
        halo=(1, 12, 12),
        model=model,
        max_in_flight=2,
    )
    return PipelineConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("seams")
    source = str(folder / "in.zarr")
    write_synthetic(source, SyntheticGrid(shape=SHAPE, seed=0), chunks=TILE)
    tiled = str(folder / "tiled.zarr")
    run_pipeline(config_for(source, tiled), progress=False)
    whole = str(folder / "whole.zarr")
    run_pipeline(
        config_for(source, whole, tile=SHAPE, halo=(0, 0, 0), warm_start=tiled), progress=False
    )
    return tiled, whole


def boundary_and_inside_jumps(field: np.ndarray) -> tuple[float, float]:
    """Mean |difference| of neighbouring cells along lat and lon: across tile edges, inside."""
    lat, lon = np.abs(np.diff(field, axis=1)), np.abs(np.diff(field, axis=2))
    inside = [i for i in range(SHAPE[1] - 1) if i not in BOUNDARIES]
    across = np.concatenate([lat[:, BOUNDARIES].ravel(), lon[:, :, BOUNDARIES].ravel()])
    within = np.concatenate([lat[:, inside].ravel(), lon[:, :, inside].ravel()])
    return float(across.mean()), float(within.mean())


def test_tiles_match_the_whole_domain_within_a_tenth_of_the_std(runs) -> None:
    tiled, whole = (xr.open_zarr(p) for p in runs)
    difference = np.abs(tiled["tas"].values - whole["tas"].values) / whole["tas_std"].values
    assert float(difference.mean()) < 0.1  # 0.0024 measured
    assert float(np.abs(tiled["tas_std"] / whole["tas_std"] - 1).mean()) < 0.05


def test_jumps_across_tile_edges_are_no_larger_than_inside(runs) -> None:
    """Edges may by chance sit where the field itself jumps more; the reference, which has
    no edges, says by how much, and the tiled field may not exceed that."""
    tiled, whole = (xr.open_zarr(p)["tas"].values for p in runs)
    across, within = boundary_and_inside_jumps(tiled)
    ref_across, ref_within = boundary_and_inside_jumps(whole)
    assert across / within <= 1.01 * ref_across / ref_within
    seam = boundary_and_inside_jumps(tiled - whole)[0]
    assert seam < 0.01 * within  # what tiling adds at an edge: under 1% of a typical step


def test_shared_hyperparameters_are_recorded_and_warm_start_the_next_run(runs) -> None:
    tiled, whole = runs
    shared = json.loads(xr.open_zarr(tiled).attrs["gpgrid_hyperparameters"])
    assert shared == json.loads(xr.open_zarr(whole).attrs["gpgrid_hyperparameters"])
    hyper = shared["tas"]
    assert len(hyper["lengthscales"]) == 3 and hyper["tiles"] == 8
    assert 0.3 < hyper["lengthscales"][1] < 1.2  # the draw's 0.6 degrees
    tiles = read_tile_records(tiled)
    assert all(t["variables"]["tas"]["fit"]["iterations"] == 0 for t in tiles)


@pytest.fixture(scope="module")
def per_tile_runs(runs, tmp_path_factory) -> dict[str, np.ndarray]:
    """Tiles that each learn their own hyperparameters, without and with blending, and the
    whole domain fitted as one tile."""
    folder = tmp_path_factory.mktemp("per_tile")
    source = str(Path(runs[0]).parent / "in.zarr")
    model = ModelConfig(kernels=MATERN32 * 3)
    out = {}
    for name, changes in (
        ("whole", {"tile": SHAPE, "halo": (0, 0, 0)}),
        ("plain", {}),
        ("blended", {"blend": (0, 4, 4)}),
    ):
        path = str(folder / f"{name}.zarr")
        run_pipeline(config_for(source, path, model=model, **changes), progress=False)
        out[name] = xr.open_zarr(path)["tas"].values
    return out


def test_blending_removes_the_seams_of_per_tile_hyperparameters(per_tile_runs) -> None:
    """Without blending, what tiling changes (tiled minus whole-domain) jumps more across
    tile edges than inside tiles (0.0186 vs 0.0157 measured); blended, no more (0.0143 vs
    0.0152)."""
    whole = per_tile_runs["whole"]
    plain = boundary_and_inside_jumps(per_tile_runs["plain"] - whole)
    blended = boundary_and_inside_jumps(per_tile_runs["blended"] - whole)
    assert plain[0] > plain[1]
    assert blended[0] <= blended[1]


def test_halos_sized_from_the_learned_lengthscales(runs, tmp_path) -> None:
    """Phase 1 reads 4-cell halos; phase 2's are two learned lengthscales (about 12 cells
    for the draw's 0.6 degrees at 0.1), and the result matches the whole domain."""
    tiled, whole = runs
    source = str(Path(tiled).parent / "in.zarr")
    out = str(tmp_path / "sized.zarr")
    run_pipeline(config_for(source, out, halo=(1, 4, 4), halo_lengthscales=2.0), progress=False)
    result = xr.open_zarr(out)
    halo = json.loads(result.attrs["gpgrid_halo"])
    shared = json.loads(result.attrs["gpgrid_hyperparameters"])["tas"]["lengthscales"]
    assert halo["lat"] == int(np.ceil(2.0 * shared[1] / 0.1)) and 8 <= halo["lat"] <= 24
    reference = xr.open_zarr(whole)
    difference = np.abs(result["tas"].values - reference["tas"].values)
    assert float((difference / reference["tas_std"].values).mean()) < 0.1


def test_a_store_from_before_multiscale_kernels_warm_starts_halos_by_lengthscale(
    runs, tmp_path
) -> None:
    """Stores written before `columns` was recorded hold one lengthscale per column in
    order: warm-started with halos sized from them, they give the same halos."""
    tiled, _ = runs
    source = str(Path(tiled).parent / "in.zarr")
    old = tmp_path / "old.zarr"
    shutil.copytree(tiled, old)
    group = zarr.open_group(str(old), mode="r+")
    shared = json.loads(group.attrs["gpgrid_hyperparameters"])
    for values in shared.values():
        del values["columns"]
    group.attrs["gpgrid_hyperparameters"] = json.dumps(shared)
    zarr.consolidate_metadata(str(old))
    halos = []
    for start in (tiled, str(old)):
        out = str(tmp_path / f"from_{Path(start).stem}.zarr")
        config = config_for(source, out, halo=(1, 4, 4), halo_lengthscales=2.0, warm_start=start)
        run_pipeline(config, progress=False)
        halos.append(json.loads(xr.open_zarr(out).attrs["gpgrid_halo"]))
    assert halos[0] == halos[1] and halos[0]["lat"] >= 8
