"""The pipeline end to end through a real local Ray into real zarr stores."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import xarray as xr

from gpkernels import ExactGP, KissGP, Matern, Product, Scale, separable
from gpkernels.trend import DomainTrend
from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.coordinates import coordinate_values
from pipeline.errors import InputError, PlanMismatchError
from pipeline.models import KISS_CG_TOL
from pipeline.runner import run_pipeline
from pipeline.scores import score_gap_cells
from pipeline.synthetic import DIMS, SyntheticGrid, write_synthetic
from pipeline.tasks import predict_tile
from pipeline.tile_records import read_tile_records
from pipeline.tiling import plan_tiles
from tests.helpers import tile_work

MATERN32 = (AxisKernel("matern32"),)

pytestmark = pytest.mark.usefixtures("ray_cluster")

RECIPE = SyntheticGrid(shape=(6, 30, 30), seed=11)
MODEL = ModelConfig(kernels=MATERN32 * 3, fit_points=300, max_points=800)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "syn.zarr"
    ds = write_synthetic(str(path), RECIPE, chunks=(3, 15, 15))
    return str(path), ds


def config_for(input_path: str, output_path: str, **changes) -> PipelineConfig:
    base = dict(
        input_path=input_path,
        variables=("tas",),
        dims=DIMS,
        output_path=output_path,
        tile=(3, 15, 15),
        halo=(1, 4, 4),
        model=MODEL,
        max_in_flight=2,
        spec_text="# test spec",
    )
    base.update(changes)
    return PipelineConfig(**base)


def test_end_to_end_writes_cf_mean_and_std_for_every_cell(source, tmp_path) -> None:
    input_path, ds = source
    out = str(tmp_path / "out.zarr")
    summary = run_pipeline(config_for(input_path, out), progress=False)
    assert summary.tiles == 8 and summary.cells == 6 * 30 * 30

    result = xr.open_zarr(out)
    assert result["tas"].shape == RECIPE.shape
    assert np.isfinite(result["tas"].values).all()
    assert (np.isfinite(result["tas_std"].values) & (result["tas_std"].values > 0)).all()
    assert result["tas"].attrs["units"] == "K"
    assert result["tas"].attrs["standard_name"] == "air_temperature"
    assert result["tas"].attrs["ancillary_variables"] == "tas_std"
    assert result["tas_std"].attrs["standard_name"] == "air_temperature standard_error"
    assert result["tas_std"].attrs["units"] == "K"
    assert result["lat"].attrs["units"] == "degrees_north"
    np.testing.assert_array_equal(result["time"].values, ds["time"].values)
    assert result.attrs["gpgrid_spec"] == "# test spec"
    assert "gpgrid_tiles" not in result.attrs  # records are an array: see test_tile_records
    tiles = read_tile_records(str(out))
    assert [t["tile"] for t in tiles] == list(range(8))
    fit = tiles[0]["variables"]["tas"]
    assert fit["status"] == "ok" and fit["solver"]["cg_converged"] is True
    assert fit["solver"]["path"].startswith("on-grid")
    assert fit["hyperparameters"]["noise"] > 0

    scores = score_gap_cells(result, ds, "tas")
    assert scores["rmse"] < scores["truth_std"] / 3
    assert 0.85 <= scores["coverage95"] <= 1.0


@pytest.mark.parametrize("model_type", ["exact", "kiss"])
def test_single_tile_equals_the_model_run_directly(source, tmp_path, model_type) -> None:
    input_path, ds = source
    small = ds.isel(time=slice(0, 2), lat=slice(0, 12), lon=slice(0, 12))
    small_path = str(tmp_path / "small.zarr")
    small.to_zarr(small_path, zarr_format=3, consolidated=False)
    out = str(tmp_path / "out.zarr")
    model_config = replace(MODEL, type=model_type)
    config = config_for(small_path, out, tile=(2, 12, 12), halo=(0, 0, 0), model=model_config)
    run_pipeline(config, progress=False)

    axes = [coordinate_values(small[d]) for d in DIMS]
    x = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)
    y = small["tas"].values.ravel()
    observed = np.isfinite(y)
    assert observed.sum() < MODEL.fit_points  # all observations used for fit and predict
    tx, ty = torch.as_tensor(x[observed]), torch.as_tensor(y[observed], dtype=torch.float64)
    if model_type == "exact":
        model = ExactGP(separable([k.base for k in MODEL.kernels]))
        model.fit(tx, ty, max_iter=MODEL.max_iter, seed=0)
    else:
        model = KissGP(
            separable([k.base for k in MODEL.kernels]),
            neighbours=MODEL.neighbours,
            cg_tol=KISS_CG_TOL,
        )
        model.fit(tx, ty, max_iter=0, init_points=MODEL.fit_points)
    mean, var = model.predict(torch.as_tensor(x))
    result = xr.open_zarr(out)
    np.testing.assert_allclose(result["tas"].values.ravel(), mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result["tas_std"].values.ravel(), var.sqrt().numpy(), rtol=1e-6)


def test_isotropic_linear_trend_tile_equals_the_model_run_directly(source, tmp_path) -> None:
    """model.isotropic [lat, lon] and model.mean linear reach the tile's model: one tile
    gives what a KissGP with Matérn 3/2 of (lat, lon) distance times a time factor does."""
    input_path, ds = source
    small = ds.isel(time=slice(0, 2), lat=slice(0, 14), lon=slice(0, 12))
    small_path = str(tmp_path / "small.zarr")
    small.to_zarr(small_path, zarr_format=3, consolidated=False)
    out = str(tmp_path / "out.zarr")
    model_config = replace(MODEL, isotropic=("lat", "lon"), mean="linear")
    config = config_for(small_path, out, tile=(2, 14, 12), halo=(0, 0, 0), model=model_config)
    run_pipeline(config, progress=False)

    axes = [coordinate_values(small[d]) for d in DIMS]
    x = torch.as_tensor(np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1))
    y = torch.as_tensor(small["tas"].values.ravel(), dtype=torch.float64)
    observed = torch.isfinite(y)
    kernel = Scale(Product([Matern(1.5, dims=[0]), Matern(1.5, dims=[1, 2], isotropic=True)]))
    model = KissGP(kernel, neighbours=MODEL.neighbours, cg_tol=KISS_CG_TOL, mean="linear")
    model.fit(x[observed], y[observed], max_iter=0, init_points=MODEL.fit_points)
    mean, var = model.predict(x)
    result = xr.open_zarr(out)
    # CG stops at a relative residual of 1e-4: means agree to well under a thousandth of a K
    np.testing.assert_allclose(result["tas"].values.ravel(), mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(result["tas_std"].values.ravel(), var.sqrt().numpy(), rtol=1e-5)
    fitted = read_tile_records(str(out))[0]["variables"]["tas"]
    assert fitted["hyperparameters"]["trend"]["slopes"] == pytest.approx(
        model.hyperparameters()["trend"]["slopes"]
    )
    assert "stationary kernel" in fitted["solver"]["path"]


def test_domain_trend_is_each_tiles_prior_mean_and_its_variance_adds_to_the_std(
    source, tmp_path
) -> None:
    """model.mean domain: one tile gives the domain trend (fitted on every observed cell of
    this small grid, evaluated at every cell) plus a constant-mean KissGP on what it leaves,
    whose std is the tile's; the trend's fit is recorded in the store."""
    input_path, ds = source
    small = ds.isel(time=slice(0, 2), lat=slice(0, 12), lon=slice(0, 12))
    small_path = str(tmp_path / "small.zarr")
    small.to_zarr(small_path, zarr_format=3, consolidated=False)
    out = str(tmp_path / "out.zarr")
    model_config = replace(MODEL, mean="domain")
    config = config_for(small_path, out, tile=(2, 12, 12), halo=(0, 0, 0), model=model_config)
    run_pipeline(config, progress=False)

    axes = [coordinate_values(small[d]) for d in DIMS]
    x = torch.as_tensor(np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1))
    y = torch.as_tensor(small["tas"].values.ravel(), dtype=torch.float64)
    observed = torch.isfinite(y)
    assert observed.sum() < model_config.trend_points  # the trend sees every observation
    trend = DomainTrend(
        Scale(Product([Matern(1.5, dims=[c]) for c in range(3)])), separable(["matern32"] * 3)
    )
    trend.fit(x[observed], y[observed], max_iter=MODEL.max_iter)
    level, _ = trend.predict(x)
    tile = KissGP(separable(["matern32"] * 3), neighbours=MODEL.neighbours, cg_tol=KISS_CG_TOL)
    tile.fit(x[observed], (y - level)[observed], max_iter=0, init_points=MODEL.fit_points)
    mean, var = tile.predict(x)
    result = xr.open_zarr(out)
    np.testing.assert_allclose(result["tas"].values.ravel(), (mean + level).numpy(), rtol=1e-5)
    np.testing.assert_allclose(result["tas_std"].values.ravel(), var.sqrt().numpy(), rtol=1e-5)
    recorded = json.loads(result.attrs["gpgrid_trend"])["tas"]
    ours = trend.hyperparameters()["trend"]
    assert recorded["trend"]["outputscale"] == pytest.approx(ours["outputscale"], rel=1e-5)
    pairs = zip(recorded["trend"]["base"]["factors"], ours["base"]["factors"], strict=True)
    for found, expected in pairs:
        assert found["lengthscale"] == pytest.approx(expected["lengthscale"], rel=1e-5)
    assert recorded["points"] == int(observed.sum())


@pytest.mark.parametrize("truth", ["matern12", "matern52"])
def test_a_spec_without_kernels_gets_the_family_its_data_were_drawn_from(truth, tmp_path) -> None:
    """model.kernel omitted: the family with the best likelihood on the sampled tiles is
    the draw's own, and the run then equals one that names that family (with two scales,
    what an omitted kernel gets from the spec)."""
    recipe = SyntheticGrid(shape=(4, 24, 24), kernels=(truth,) * 3, seed=5)
    path = str(tmp_path / "in.zarr")
    write_synthetic(path, recipe, chunks=(4, 12, 12))
    common = dict(tile=(4, 12, 12), halo=(0, 3, 3))
    chosen = config_for(
        path, str(tmp_path / "auto.zarr"), model=replace(MODEL, kernels=None, scales=2), **common
    )
    named = config_for(
        path,
        str(tmp_path / "named.zarr"),
        model=replace(MODEL, kernels=(AxisKernel(truth),) * 3, scales=2),
        **common,
    )
    run_pipeline(chosen, progress=False)
    run_pipeline(named, progress=False)
    auto, given = xr.open_zarr(chosen.output_path), xr.open_zarr(named.output_path)
    choice = json.loads(auto.attrs["gpgrid_kernel_choice"])
    likelihoods = choice["log_likelihood_per_observation"]
    assert choice["chosen"] == truth and max(likelihoods, key=likelihoods.get) == truth
    for name in ("tas", "tas_std"):
        np.testing.assert_array_equal(auto[name].values, given[name].values)


def test_tiles_are_deterministic(source, tmp_path) -> None:
    input_path, _ = source
    config = config_for(input_path, str(tmp_path / "unused.zarr"))
    tile = plan_tiles(RECIPE.shape, config.tile, config.halo)[3]
    work = tile_work(config)
    first, second = predict_tile(work, tile), predict_tile(work, tile)
    for name in first.predictions:
        np.testing.assert_array_equal(first.predictions[name], second.predictions[name])


def test_existing_output_not_made_by_gpgrid_is_refused_and_left_intact(source, tmp_path) -> None:
    input_path, _ = source
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(PlanMismatchError, match="was not made by a gpgrid run"):
        run_pipeline(config_for(input_path, str(out)), progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


def test_missing_variable_is_named(source, tmp_path) -> None:
    input_path, _ = source
    config = config_for(input_path, str(tmp_path / "o.zarr"), variables=("sst",))
    with pytest.raises(InputError, match="'sst' is not in the input; it has"):
        run_pipeline(config, progress=False)
    assert not (tmp_path / "o.zarr").exists()


def test_multitask_tiles_fill_a_block_from_a_correlated_variable(tmp_path) -> None:
    """tas is missing in a block where a correlated variable is observed: the joint (ICM)
    model predicts the block better than tas alone, and writes mean and std for both."""
    from pipeline.synthetic import make_synthetic_dataset

    ds = make_synthetic_dataset(SyntheticGrid(shape=(4, 16, 16), seed=5, gap_fraction=0.1))
    truth = ds["tas_true"].values
    rng = np.random.default_rng(0)
    dew = 0.9 * (truth - truth.mean()) + 270 + 0.2 * rng.standard_normal(truth.shape)
    tas = ds["tas"].values.copy()
    tas[:, 5:11, 5:11] = np.nan
    ds = ds.assign(tas=(DIMS, tas, ds["tas"].attrs), dew=(DIMS, dew.astype(np.float32), {}))
    path = str(tmp_path / "two.zarr")
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    model = replace(MODEL, type="exact", fit_points=200, max_points=1200, max_iter=60)
    common = dict(tile=(4, 16, 16), halo=(0, 0, 0), variables=("tas", "dew"))
    multitask = replace(model, multitask=True)
    joint = config_for(path, str(tmp_path / "j.zarr"), model=multitask, **common)
    alone = config_for(path, str(tmp_path / "a.zarr"), model=model, **common)
    errors = {}
    for name, config in (("joint", joint), ("alone", alone)):
        run_pipeline(config, progress=False)
        out = xr.open_zarr(config.output_path)
        block = out["tas"].values[:, 5:11, 5:11] - truth[:, 5:11, 5:11]
        errors[name] = float(np.sqrt(np.mean(block**2)))
        assert np.isfinite(out["dew_std"].values).all() and (out["tas_std"].values > 0).all()
    assert errors["joint"] < 0.8 * errors["alone"], errors


def test_shared_hyperparameters_are_calibrated_in_phase_one_when_asked(source, tmp_path) -> None:
    """calibrate_variance with shared hyperparameters: each sampled tile widens its fitted
    outputscale and noise by its own moved-gap factor (at least 1) before they are
    pooled; the lengthscales are the uncalibrated fit's."""
    from pipeline.phase_one import fit_tile_hyperparameters

    input_path, _ = source
    # fitted on a 60-cell cluster, this draw's intervals are too narrow for its moved gaps
    model = replace(MODEL, type="kiss", hyperparameters="shared", fit_points=60)
    tile = plan_tiles(RECIPE.shape, (6, 15, 15), (0, 4, 4))[0]
    found = {}
    for calibrate in (False, True):
        config = config_for(
            input_path,
            str(tmp_path / "unused.zarr"),
            model=replace(model, calibrate_variance=calibrate),
            tile=(6, 15, 15),
            halo=(0, 4, 4),
        )
        found[calibrate] = fit_tile_hyperparameters(tile_work(config), tile)["tas"]
    plain, widened = found[False], found[True]
    factor = widened["variance_factor"]
    assert 1.0 < factor <= 4.0  # this draw asks for some widening (1.11)
    assert widened["lengthscales"] == pytest.approx(plain["lengthscales"], rel=1e-6)
    for key in ("outputscale", "noise"):
        assert widened[key] == pytest.approx(plain[key] * factor, rel=1e-6)


def test_phase_one_fits_a_compact_cluster_at_the_core_centre(source, tmp_path) -> None:
    """Phase 1 fits the cells nearest the core's centre, for one range and for two (see
    `_phase_one_points` for why not a spread subsample)."""
    from pipeline.phase_one import _phase_one_points

    input_path, _ = source
    tile = plan_tiles(RECIPE.shape, (6, 15, 15), (0, 4, 4))[0]
    observed = np.arange(int(np.prod(tile.window_shape)))
    cells = np.stack(np.unravel_index(observed, tile.window_shape), axis=1)
    for scales in (1, 2):
        model = replace(MODEL, type="kiss", hyperparameters="shared", fit_points=100)
        config = config_for(
            input_path,
            str(tmp_path / "unused.zarr"),
            model=replace(model, scales=scales),
            tile=(6, 15, 15),
            halo=(0, 4, 4),
        )
        x = torch.as_tensor(cells, dtype=torch.float64)
        rows = _phase_one_points(tile_work(config).plan, tile, observed, x).numpy()
        assert rows.size == 100 and np.unique(rows).size == 100
        spans = cells[rows].max(axis=0) - cells[rows].min(axis=0)
        assert (spans[1:] <= 6).all(), spans  # about a 5-cell cube around the centre
        core_centre = [(c.start + c.stop - 1) / 2 for c in tile.core_in_window[1:]]
        assert np.allclose(cells[rows].mean(axis=0)[1:], core_centre, atol=1.0)
