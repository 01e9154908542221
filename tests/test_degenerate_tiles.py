"""Tiles a GP cannot learn from: constant windows (a region of zero precipitation) are
predicted as their constant, flagged and warned about; windows with too few observations
give NaN and a `skipped` reason, alone or in a multitask tile, whose other variables are
still fitted; white noise, whose fitted lengthscale collapses, is warned about and noted
in the fit report. Underneath, a zero right-hand side solves to zero."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import xarray as xr

from gpkernels import (
    ExactGP,
    KissGP,
    LengthscaleWarning,
    NumericalWarning,
    Scale,
    make_kernel,
    separable,
)
from gpkernels.base import collapsed_lengthscales
from gpkernels.solvers import pcg
from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.phase_one import fit_tile_hyperparameters
from pipeline.store import consolidated_v3_allowed
from pipeline.tasks import (
    MIN_OBSERVATIONS,
    DegenerateTileWarning,
    predict_tile,
)
from pipeline.tiling import TileResult, plan_tiles
from tests.helpers import tile_work

MATERN32 = (AxisKernel("matern32"),)

SHAPE = (2, 10, 8)
DIMS = ("time", "lat", "lon")


def _write(path: str, values: np.ndarray, **others: np.ndarray) -> str:
    """A store of `values` as `pr`, and of `others` under their names."""
    fields = {"pr": values, **others}
    ds = xr.Dataset(
        {name: (DIMS, v.astype(np.float32), {"units": "mm"}) for name, v in fields.items()},
        coords={
            "time": ("time", np.arange(SHAPE[0], dtype=float)),
            "lat": ("lat", 40.0 + 0.25 * np.arange(SHAPE[1])),
            "lon": ("lon", 5.0 + 0.25 * np.arange(SHAPE[2])),
        },
    )
    with consolidated_v3_allowed():
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    return path


def _gappy(value: float, keep: int | None = None) -> np.ndarray:
    """`value` on the grid with 30% of the cells missing (or only `keep` cells observed)."""
    rng = np.random.default_rng(0)
    values = np.full(SHAPE, value)
    if keep is None:
        values[rng.random(SHAPE) < 0.3] = np.nan
    else:
        values.flat[rng.permutation(values.size)[keep:]] = np.nan
    return values


def _config(path: str, model_type: str, **changes) -> PipelineConfig:  # noqa: ANN003
    return PipelineConfig(
        input_path=path,
        variables=("pr",),
        dims=DIMS,
        output_path="unused.zarr",
        tile=SHAPE,
        halo=(0, 0, 0),
        model=ModelConfig(kernels=MATERN32 * 3, type=model_type),
        **changes,
    )


@pytest.mark.parametrize("value", [0.0, 5.0])
@pytest.mark.parametrize("model_type", ["kiss", "exact"])
def test_constant_window_is_predicted_flagged_and_warned(
    tmp_path, value: float, model_type: str
) -> None:
    path = _write(str(tmp_path / "constant.zarr"), _gappy(value))
    config = _config(path, model_type)
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    with pytest.warns(DegenerateTileWarning, match=rf"observations equal {value!r}") as caught:
        result = predict_tile(tile_work(config), tile)
    info = result.diagnostics["variables"]["pr"]
    n = info["n_observed"]
    assert info["degenerate"] == f"constant: all {n} observations equal {value!r}"
    assert f"tile 0, variable 'pr': constant: all {n} observations" in str(caught[0].message)
    np.testing.assert_array_equal(result.predictions["pr"], value)
    # No spread in the data: the std is the documented floor, their float32 resolution.
    floor = float(np.spacing(np.float32(value)))
    np.testing.assert_array_equal(result.predictions["pr_std"], floor)


def test_constant_window_with_shared_hyperparameters_takes_their_noise_std(tmp_path) -> None:
    path = _write(str(tmp_path / "constant.zarr"), _gappy(0.0))
    shared = {"pr": {"lengthscales": [1.0, 1.0, 1.0], "outputscale": 2.0, "noise": 0.09}}
    config = _config(path, "kiss")
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    with pytest.warns(DegenerateTileWarning, match="shared noise std"):
        result = predict_tile(tile_work(config, shared), tile)
    np.testing.assert_array_equal(result.predictions["pr"], 0.0)
    np.testing.assert_allclose(result.predictions["pr_std"], 0.3)


def test_a_constant_tile_gives_no_hyperparameters_to_pool(tmp_path) -> None:
    path = _write(str(tmp_path / "constant.zarr"), _gappy(5.0))
    config = _config(path, "kiss")
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    assert fit_tile_hyperparameters(tile_work(config), tile) == {"pr": None}


@pytest.mark.parametrize("keep", [0, 1, MIN_OBSERVATIONS - 1])
def test_too_few_observations_give_nan_and_a_skipped_reason(tmp_path, keep: int) -> None:
    values = _gappy(0.0, keep=keep)
    values[np.isfinite(values)] = np.arange(keep)  # not constant: the count alone decides
    path = _write(str(tmp_path / "few.zarr"), values)
    config = _config(path, "kiss")
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateTileWarning)
        result = predict_tile(tile_work(config), tile)
    info = result.diagnostics["variables"]["pr"]
    noun = "observation" if keep == 1 else "observations"
    assert info["skipped"] == f"{keep} {noun}, fewer than {MIN_OBSERVATIONS}"
    assert "degenerate" not in info
    assert np.isnan(result.predictions["pr"]).all() and np.isnan(result.predictions["pr_std"]).all()


def test_cg_solves_a_zero_right_hand_side_to_zero() -> None:
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    rhs = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=torch.float64)  # one zero column
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        solved = pcg(lambda v: a @ v, rhs, tol=1e-12)
    assert solved.converged
    torch.testing.assert_close(solved.solution[:, 0], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(solved.solution[:, 1], torch.linalg.solve(a, rhs[:, 1]))
    assert float(solved.relative_residual[0]) == 0.0


def test_kiss_on_grid_conditions_on_constant_data_like_the_exact_gp() -> None:
    """The on-grid solve of a constant (standardised: zero) target is zero, not a division
    by its zero norm; mean and variance then match the dense float64 ExactGP."""
    grid = np.stack(np.meshgrid(0.5 * np.arange(9), 0.5 * np.arange(7), indexing="ij"), -1)
    x = torch.tensor(grid.reshape(-1, 2))
    seen = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1)) < 0.7
    y = torch.full((int(seen.sum()),), 3.5, dtype=torch.float64)
    kernel = separable(["matern32", "matern32"])
    model = KissGP(kernel, neighbours=1000)
    model.likelihood.noise = 0.1
    model.condition(x[seen], y)
    assert model.diagnostics.solve.iterations == 0 and model.diagnostics.solve.converged
    mean, var = model.predict(x)
    exact_mean, exact_var = ExactGP(kernel, model.likelihood).condition(x[seen], y).predict(x)
    torch.testing.assert_close(mean, torch.full_like(mean, 3.5), rtol=0, atol=1e-12)
    torch.testing.assert_close(mean, exact_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(var, exact_var, rtol=1e-9, atol=1e-12)


def _white_noise(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded standard normal values on a 12 x 10 grid of step 0.5."""
    grid = np.stack(np.meshgrid(0.5 * np.arange(12), 0.5 * np.arange(10), indexing="ij"), -1)
    y = np.random.default_rng(seed).standard_normal(grid.shape[:2])
    return torch.tensor(grid.reshape(-1, 2)), torch.tensor(y.reshape(-1))


@pytest.mark.parametrize("model_class", [ExactGP, KissGP])
def test_white_noise_lengthscale_collapse_is_warned_and_noted(model_class: type) -> None:
    x, y = _white_noise(1)  # its lengthscales fall to ~0.03-0.04 on both columns
    model = model_class(separable(["matern32", "matern32"]))
    model.column_names = ("lat", "lon")
    with pytest.warns(LengthscaleWarning, match="below a tenth of the data spacing 0.5") as caught:
        report = model.fit(x, y).fit_report
    assert [n.split(" learned")[0] for n in report.notes] == [
        "lengthscale of column lat",
        "lengthscale of column lon",
    ]
    assert all("white noise at this resolution" in n for n in report.notes)
    assert len([w for w in caught if w.category is LengthscaleWarning]) == len(report.notes)
    assert report.as_dict()["notes"] == report.notes


def test_a_lengthscale_at_its_floor_is_a_collapse_whatever_the_spacing() -> None:
    x = torch.tensor([[0.0, 0.0], [1e-6, 1.0], [2e-6, 2.0]], dtype=torch.float64)
    kernel = Scale(make_kernel("matern32", dims=[0, 1], isotropic=True))
    kernel.base.lengthscale = 1.5e-6
    (note,) = collapsed_lengthscales(kernel, x, ("x", "y"))
    assert note.startswith("lengthscale of columns x, y learned 1.5e-06, at its lower bound 1e-06")
    kernel.base.lengthscale = 0.5
    assert collapsed_lengthscales(kernel, x) == []


def test_smooth_data_fit_without_a_collapse_note() -> None:
    x, _ = _white_noise(0)
    y = torch.sin(x[:, 0] / 1.5) * torch.cos(x[:, 1] / 2.0)
    y = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    model = KissGP(separable(["matern32", "matern32"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LengthscaleWarning)
        report = model.fit(x, y).fit_report
    assert report.notes == []


def test_white_noise_tile_notes_the_collapse_by_column_name(tmp_path) -> None:
    values = np.random.default_rng(1).standard_normal(SHAPE)
    path = _write(str(tmp_path / "noise.zarr"), values)
    config = _config(path, "kiss")
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    with pytest.warns(LengthscaleWarning, match="lengthscale of column"):
        result = predict_tile(tile_work(config), tile)
    notes = result.diagnostics["variables"]["pr"]["fit"]["notes"]
    assert notes and any(
        n.startswith(("lengthscale of column lat", "lengthscale of column lon")) for n in notes
    )


def _field(seed: int) -> np.ndarray:
    """A smooth field with noise on the grid, 30% of the cells missing (seeded)."""
    rng = np.random.default_rng(seed)
    t, lat, lon = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    values = np.sin(lat / 3 + seed) + np.cos(lon / 4) + 0.3 * t
    values = values + 0.05 * rng.standard_normal(SHAPE)
    values[rng.random(SHAPE) < 0.3] = np.nan
    return values


def _multitask(path: str, model_type: str, variables: tuple[str, ...], **model) -> PipelineConfig:  # noqa: ANN003
    """A multitask run (ICM for exact, LMC for svgp) over `variables`, on small budgets:
    the tests compare fits, which need not be good."""
    config = replace(_config(path, model_type), variables=variables)
    budgets = {"max_iter": 10, "epochs": 1, "inducing": 32}
    changes = {"multitask": True, **budgets, **model}
    return replace(config, model=replace(config.model, **changes))


def _alone(config: PipelineConfig, variable: str) -> PipelineConfig:
    """The same run on `variable` only, one model per variable."""
    return replace(config, variables=(variable,), model=replace(config.model, multitask=False))


def _predict(config: PipelineConfig) -> TileResult:
    (tile,) = plan_tiles(SHAPE, config.tile, config.halo)
    return predict_tile(tile_work(config), tile)


def _assert_same(result: TileResult, reference: TileResult, variable: str) -> None:
    for name in (variable, f"{variable}_std"):
        assert np.isfinite(result.predictions[name]).all()
        np.testing.assert_allclose(
            result.predictions[name], reference.predictions[name], rtol=0, atol=1e-8
        )


@pytest.mark.parametrize(("model_type", "keep"), [("exact", 0), ("exact", 1), ("svgp", 1)])
def test_multitask_tile_skips_a_variable_with_too_few_and_fits_the_other_alone(
    tmp_path, model_type: str, keep: int
) -> None:
    few = _gappy(7.0, keep=keep)
    path = _write(str(tmp_path / "few.zarr"), few, tas=_field(0))
    config = _multitask(path, model_type, ("pr", "tas"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateTileWarning)
        result = _predict(config)
    info = result.diagnostics["variables"]["pr"]
    noun = "observation" if keep == 1 else "observations"
    assert info["skipped"] == f"{keep} {noun}, fewer than {MIN_OBSERVATIONS}"
    assert info["n_observed"] == keep and "degenerate" not in info
    assert np.isnan(result.predictions["pr"]).all() and np.isnan(result.predictions["pr_std"]).all()
    assert result.diagnostics["variables"]["tas"]["status"] == "ok"
    _assert_same(result, _predict(_alone(config, "tas")), "tas")


@pytest.mark.parametrize("model_type", ["exact", "svgp"])
def test_multitask_tile_predicts_a_constant_variable_as_its_constant(
    tmp_path, model_type: str
) -> None:
    path = _write(str(tmp_path / "constant.zarr"), _gappy(5.0), tas=_field(0))
    config = _multitask(path, model_type, ("pr", "tas"))
    with pytest.warns(DegenerateTileWarning, match="tile 0, variable 'pr': constant"):
        result = _predict(config)
    info = result.diagnostics["variables"]["pr"]
    assert info["degenerate"] == f"constant: all {info['n_observed']} observations equal 5.0"
    assert info["model"] == "constant" and "skipped" not in info
    np.testing.assert_array_equal(result.predictions["pr"], 5.0)
    np.testing.assert_array_equal(result.predictions["pr_std"], float(np.spacing(np.float32(5))))
    _assert_same(result, _predict(_alone(config, "tas")), "tas")


@pytest.mark.parametrize("model_type", ["exact", "svgp"])
def test_multitask_tile_fits_the_variables_left_jointly(tmp_path, model_type: str) -> None:
    """One of three variables skipped: the other two are the two-variable multitask run."""
    path = _write(str(tmp_path / "three.zarr"), _gappy(0.0, keep=1), tas=_field(0), tdps=_field(1))
    config = _multitask(path, model_type, ("pr", "tas", "tdps"), rank=2)
    result = _predict(config)
    assert "skipped" in result.diagnostics["variables"]["pr"]
    two = _predict(replace(config, variables=("tas", "tdps")))
    for variable in ("tas", "tdps"):
        assert result.diagnostics["variables"][variable]["joint_variables"] == ["tas", "tdps"]
        _assert_same(result, two, variable)


def test_multitask_tile_with_no_variable_to_fit_fits_nothing(tmp_path) -> None:
    path = _write(str(tmp_path / "none.zarr"), _gappy(0.0, keep=2), tas=_gappy(3.0))
    with pytest.warns(DegenerateTileWarning, match="variable 'tas': constant"):
        result = _predict(_multitask(path, "exact", ("pr", "tas")))
    assert np.isnan(result.predictions["pr"]).all()
    np.testing.assert_array_equal(result.predictions["tas"], 3.0)
    assert set(result.diagnostics["variables"]["tas"]) == {
        "n_observed",
        "read_seconds",
        "degenerate",
        "status",
        "model",
    }


def test_multitask_subsets_keep_a_sparse_variable_observed(tmp_path) -> None:
    """A variable observed in 4 cells: the nearest rows and the fit subsample, drawn over
    all rows, would likely miss it; each keeps MIN_OBSERVATIONS of its observations."""
    sparse = _gappy(0.0, keep=4)
    sparse[np.isfinite(sparse)] = [1.0, 2.0, 0.5, 1.5]
    path = _write(str(tmp_path / "sparse.zarr"), sparse, tas=_field(0))
    result = _predict(_multitask(path, "exact", ("tas", "pr"), max_points=40, fit_points=10))
    assert result.diagnostics["variables"]["pr"]["status"] == "ok"
    for name in ("pr", "pr_std", "tas", "tas_std"):
        assert np.isfinite(result.predictions[name]).all()
