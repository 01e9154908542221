"""model.covariates through the real pipeline: a field that follows a covariate (elevation
over lat and lon) is filled better with it, its intervals still cover, and the tiles
report coefficients that bracket the true one."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jobs.run import run_job
from jobs.spec import JobSpec
from pipeline.scores import score_gap_cells
from pipeline.store import consolidated_v3_allowed
from pipeline.synthetic import SyntheticGrid, make_synthetic_dataset
from pipeline.tile_records import read_tile_records

pytestmark = pytest.mark.usefixtures("ray_cluster", "failure_logs")

EFFECT = 2.0  # field units per unit of elevation


def with_elevation(path: str) -> xr.Dataset:
    """A GP draw with gaps in blobs, plus EFFECT x a rough elevation (ridges a few cells
    apart, which no smooth GP bridges across a gap) in both the readings and the truth."""
    ds = make_synthetic_dataset(SyntheticGrid(shape=(4, 48, 48), gap_fraction=0.3, seed=5))
    gen = np.random.default_rng(5)
    i, j = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    elev = np.sin(i / 1.7) * np.cos(j / 2.3) + 0.5 * gen.standard_normal((48, 48))
    ds = ds.assign(elev=(("lat", "lon"), elev))
    for name in ("tas", "tas_true"):
        ds[name] = ds[name] + EFFECT * ds["elev"]
    with consolidated_v3_allowed():
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    return ds


def spec(tmp_path, covariates: list[str], name: str, mean: str = "constant") -> JobSpec:  # noqa: ANN001
    return JobSpec.model_validate(
        {
            "input": {
                "path": str(tmp_path / "in.zarr"),
                "variables": ["tas"],
                "dims": ["time", "lat", "lon"],
            },
            "model": {
                "kernel": {"time": "matern32", "lat": "matern32", "lon": "matern32"},
                "covariates": covariates,
                "mean": mean,
            },
            "tiling": {
                "tile": {"time": 4, "lat": 24, "lon": 24},
                "halo": {"time": 0, "lat": 4, "lon": 4},
            },
            "output": {"path": str(tmp_path / name)},
        }
    )


def test_a_covariate_the_field_follows_fills_its_gaps_and_is_uncertain_honestly(tmp_path):
    source = with_elevation(str(tmp_path / "in.zarr"))
    scores, stores, paths = {}, {}, {}
    runs = {
        "with": (["elev"], "constant"),
        "under a domain trend": (["elev"], "domain"),  # fitted on what elev leaves
        "without": ([], "constant"),
    }
    for name, (covariates, mean) in runs.items():
        job = spec(tmp_path, covariates, f"{name.replace(' ', '_')}.zarr", mean)
        paths[name] = run_job(job, progress=False).output_path
        stores[name] = xr.open_zarr(paths[name])
        scores[name] = score_gap_cells(stores[name], source, "tas")
    print({name: {k: round(v, 3) for k, v in s.items()} for name, s in scores.items()})
    for name in ("with", "under a domain trend"):
        assert scores[name]["rmse"] < 0.6 * scores["without"]["rmse"]
        assert 0.92 <= scores[name]["coverage95"] <= 0.99
    for record in read_tile_records(paths["with"]):
        regression = record["variables"]["tas"]["regression"]
        assert regression["names"] == ["intercept", "elev"]
        # in units of elevation's std over the observed cells the tile took (halo too)
        lat, lon = (slice(max(s.start - 4, 0), s.stop + 4) for s in _core(record, source))
        window = source.isel(lat=lat, lon=lon)
        elev = np.broadcast_to(window["elev"].values, window["tas"].shape)
        true = EFFECT * float(elev[np.isfinite(window["tas"].values)].std())
        coefficient, std = regression["coefficients"][1], regression["std"][1]
        assert 0 < std < 0.1 * true and abs(coefficient - true) < 4 * std + 0.02 * true


def _core(record: dict, source: xr.Dataset) -> tuple[slice, slice]:
    """The tile's lat and lon core (24 x 24 tiles, numbered in C order over lat and lon)."""
    per_row = source.sizes["lon"] // 24
    row, column = divmod(record["tile"], per_row)
    return slice(24 * row, 24 * row + 24), slice(24 * column, 24 * column + 24)
