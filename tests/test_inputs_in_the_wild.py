"""Inputs as archives ship them: a (time, level, lat, lon) variable cut by `input.sel`
(a level, a bounding box on a descending latitude, a time range) and a day's files
as a pattern of netCDF files; each run must write exactly what a run over a pre-cut
single zarr copy writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from jobs.spec import SpecError, parse_spec
from pipeline.errors import InputError, PlanMismatchError
from pipeline.inputs import open_input
from pipeline.runner import run_pipeline
from pipeline.selection import Selection
from pipeline.synthetic import SyntheticGrid, make_synthetic_dataset

pytestmark = pytest.mark.usefixtures("ray_cluster")

LEVELS = [1000, 850, 500]
SPEC = {
    "input": {"path": "in.zarr", "variables": ["tas"], "dims": ["time", "lat", "lon"]},
    "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern52"}},
    "tiling": {"tile": {"time": 4, "lat": 10, "lon": 10}, "halo": {"time": 1, "lat": 2, "lon": 2}},
    "output": {"path": "out.zarr"},
}


def archive() -> xr.Dataset:
    """Three levels of a 8 x 30 x 30 draw (with gaps), latitude running north to south."""
    levels = [
        make_synthetic_dataset(SyntheticGrid(shape=(8, 30, 30), seed=seed)) for seed in (3, 4, 5)
    ]
    ds = xr.concat(levels, pd.Index(LEVELS, name="level")).transpose("time", "level", ...)
    ds = ds.assign_coords(
        time=pd.date_range("2021-03-01", periods=8, freq="D"),
        lat=np.linspace(60.0, 31.0, 30),  # descending
        lon=np.linspace(-10.0, 19.0, 30),
    )
    return ds.drop_vars([v for v in ds.data_vars if v != "tas"])


def run_spec(folder, **input_changes) -> xr.Dataset:  # noqa: ANN001
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    spec["input"].update(input_changes)
    text = yaml.safe_dump(spec)
    config = parse_spec(spec, base_dir=folder).to_pipeline_config(text)
    run_pipeline(config, progress=False)
    return xr.open_zarr(config.output_path).load()


def test_sel_cuts_level_box_and_time_as_a_precut_copy_would(tmp_path) -> None:
    ds = archive()
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    ds.to_zarr(full / "in.zarr", zarr_format=3, consolidated=True)
    window = dict(time=slice("2021-03-02", "2021-03-07"), lat=slice(55.0, 36.0), lon=slice(-5, 14))
    precut = ds.sel(level=850, **window).drop_vars("level")
    assert precut.sizes == {"time": 6, "lat": 20, "lon": 20}
    precut.to_zarr(cut / "in.zarr", zarr_format=3, consolidated=True)
    sel = {"level": 850, "lat": [36.0, 55.0], "lon": [-5, 14], "time": ["2021-03-02", "2021-03-07"]}
    selected = run_spec(full, sel=sel)
    reference = run_spec(cut)
    assert selected.sizes == reference.sizes == precut.sizes
    np.testing.assert_array_equal(selected["lat"].values, precut["lat"].values)
    for name in ("tas", "tas_std"):
        assert np.isfinite(reference[name].values).all()
        np.testing.assert_array_equal(selected[name].values, reference[name].values)
    assert "gpgrid_input_sel" in selected.attrs


def test_another_selection_is_another_run(tmp_path) -> None:
    archive().to_zarr(tmp_path / "in.zarr", zarr_format=3, consolidated=True)
    run_spec(tmp_path, sel={"level": 1000})
    with pytest.raises(PlanMismatchError, match="input_sel"):
        run_spec(tmp_path, sel={"level": 500})


def test_a_pattern_of_netcdf_files_runs_as_their_single_zarr(tmp_path) -> None:
    ds = archive().sel(level=500).drop_vars("level")
    single, files = tmp_path / "single", tmp_path / "files"
    single.mkdir()
    files.mkdir()
    ds.to_zarr(single / "in.zarr", zarr_format=3, consolidated=True)
    for start in range(0, 8, 2):  # a file every two days, as archives split them
        ds.isel(time=slice(start, start + 2)).to_netcdf(files / f"tas_{start:02d}.nc")
    opened = open_input(str(files / "tas_*.nc"))
    assert opened["tas"].chunks is not None, "a pattern's files are read lazily (dask)"
    from_files = run_spec(files, path="tas_*.nc")
    reference = run_spec(single)
    for name in ("tas", "tas_std"):
        np.testing.assert_array_equal(from_files[name].values, reference[name].values)


def test_selection_errors_name_the_dim_and_its_values() -> None:
    ds = archive()
    with pytest.raises(InputError, match=r"input.sel.level: 700 is not a value.*1000, 850, 500"):
        Selection.from_mapping({"level": 700}).apply(ds)
    with pytest.raises(InputError, match=r"input.sel.lat: \[70.0, 80.0\] selects no cells"):
        Selection.from_mapping({"lat": [70.0, 80.0]}).apply(ds)
    with pytest.raises(InputError, match="'height', which is not a dim"):
        Selection.from_mapping({"height": 2}).apply(ds)
    base = {"variables": ["tas"], "path": "in.zarr"}
    with pytest.raises(SpecError, match="picks one value, which drops 'level'"):
        parse_spec({**SPEC, "input": {**base, "dims": ["time", "level"], "sel": {"level": 850}}})
    with pytest.raises(SpecError, match="is a range, so 'level' stays a dim"):
        parse_spec({**SPEC, "input": {**base, "dims": ["time"], "sel": {"level": [500, 850]}}})
