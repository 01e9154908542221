"""A grid axis stored in descending order (latitude from 90 to -90, as ERA5 has it) is the
same grid: every path must give the answer it gives for the ascending axis.

gpkernels level: KissGP on a gappy grid whose lattice is given with a negative spacing
(as the pipeline builds it from descending coordinates) against the same data ascending,
for the separable (Kronecker) and the isotropic (FFT) on-grid paths, with local kriging
variances, and against a dense float64 ExactGP. Pipeline level: `predict_tile` on a zarr
store with lat descending against the same data ascending, for kiss and exact models.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import xarray as xr

from gpkernels import ExactGP, KissGP, Lattice, Scale, make_kernel, separable
from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.models import KISS_CG_TOL
from pipeline.store import consolidated_v3_allowed
from pipeline.synthetic import DIMS, SyntheticGrid, make_synthetic_dataset
from pipeline.tasks import predict_tile
from pipeline.tiling import plan_tiles
from tests.helpers import tile_work

MATERN32 = (AxisKernel("matern32"),)

NY, NX, H = 18, 15, 0.5  # cells per axis and spacing (degrees)
NEIGHBOURS = 40  # far fewer than the observations: local kriging really is local


def test_a_descending_lattice_is_the_same_nodes_ascending() -> None:
    descending = Lattice((90.0, 0.0), (-0.5, 1.0), (361, 4))
    assert descending == Lattice((-90.0, 0.0), (0.5, 1.0), (361, 4))
    x = torch.tensor([[90.0, 3.0], [-90.0, 0.0], [89.5, 1.0]], dtype=torch.float64)
    assert descending.cell_index(x).tolist() == [360 * 4 + 3, 0, 359 * 4 + 1]
    with pytest.raises(ValueError, match="non-zero spacing"):
        Lattice((0.0,), (0.0,), (3,))


def _field() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending lat and lon coordinates and a smooth field on them with 30% gaps (NaN)."""
    rng = np.random.default_rng(3)
    lat = -4.0 + H * np.arange(NY)
    lon = 20.0 + H * np.arange(NX)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    values = (
        np.sin(0.7 * la) * np.cos(0.5 * lo) + 0.3 * la / 4 + 0.05 * rng.standard_normal(la.shape)
    )
    values[rng.random(la.shape) < 0.3] = np.nan
    return lat, lon, values


def _kiss_at(kernel_name: str, lat: np.ndarray, lon: np.ndarray, values: np.ndarray):  # noqa: ANN202
    """KissGP conditioned at fixed hyperparameters on the observed cells, in C order of
    (lat as given, lon), with the lattice built from the coordinates as the pipeline does
    (first coordinate and signed step); returns the model, all cells' inputs and the
    observed rows."""
    x = torch.tensor(np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2))
    y = torch.tensor(values.reshape(-1))
    seen = torch.isfinite(y)
    if kernel_name == "isotropic":
        kernel = Scale(make_kernel("matern32", dims=[0, 1], isotropic=True))
        kernel.base.lengthscale = 2.0
    else:
        kernel = separable(["matern32", "matern52"])
        kernel.base.factors[0].lengthscale = 2.0
        kernel.base.factors[1].lengthscale = 1.5
    kernel.outputscale = 0.9
    lattice = Lattice(
        (float(lat[0]), float(lon[0])), (float(lat[1] - lat[0]), H), (len(lat), len(lon))
    )
    model = KissGP(kernel, lattice=lattice, neighbours=NEIGHBOURS, cg_tol=1e-11)
    model.likelihood.noise = 0.02
    model.condition(x[seen], y[seen])
    return model, x, seen


@pytest.mark.parametrize("kernel_name", ["separable", "isotropic"])
def test_kiss_descending_axis_equals_ascending_and_the_exact_gp(kernel_name: str) -> None:
    lat, lon, values = _field()
    model, x, seen = _kiss_at(kernel_name, lat, lon, values)
    model_d, x_d, _ = _kiss_at(kernel_name, lat[::-1].copy(), lon, values[::-1].copy())
    assert model_d.diagnostics.path == model.diagnostics.path
    assert model.diagnostics.path.startswith("on-grid")
    mean, var = model.predict(x)
    mean_d, var_d = model_d.predict(x_d)
    flip = lambda t: t.reshape(NY, NX).flip(0).reshape(-1)  # noqa: E731
    torch.testing.assert_close(flip(mean_d), mean, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(flip(var_d).sqrt(), var.sqrt(), rtol=1e-8, atol=1e-10)

    exact = ExactGP(model.kernel, model.likelihood).condition(
        x[seen], torch.tensor(values).reshape(-1)[seen]
    )
    mean_e, var_e = exact.predict(x_d)
    torch.testing.assert_close(mean_d, mean_e, rtol=1e-7, atol=1e-8)
    ratio = var_d.sqrt() / var_e.sqrt()
    # Local kriging conditions on fewer observations: never below the exact std, and close.
    assert float(ratio.min()) >= 1 - 1e-9
    assert float(ratio.median()) < 1.01 and float(ratio.max()) < 1.1


def _store(path: str, ds) -> None:  # noqa: ANN001
    encoding = {name: {"chunks": (2, 8, 8)} for name in ds.data_vars}
    with consolidated_v3_allowed():
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True, encoding=encoding)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    """The same synthetic (time, lat, lon) data with lat ascending and with lat descending."""
    recipe = SyntheticGrid(
        shape=(3, 16, 12), spacing=(1.0, 0.25, 0.25), lengthscales=(3.0, 1.0, 1.0), seed=5
    )
    ds = make_synthetic_dataset(recipe)
    folder = tmp_path_factory.mktemp("descending")
    _store(str(folder / "ascending.zarr"), ds)
    _store(str(folder / "descending.zarr"), ds.isel(lat=slice(None, None, -1)))
    return str(folder / "ascending.zarr"), str(folder / "descending.zarr")


MODELS = {
    "kiss separable": ModelConfig(kernels=MATERN32 * 3, fit_points=1000, neighbours=48),
    "kiss isotropic": ModelConfig(
        kernels=MATERN32 * 3, fit_points=1000, neighbours=48, isotropic=("lat", "lon")
    ),
    "exact": ModelConfig(kernels=MATERN32 * 3, type="exact", fit_points=1000),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_tile_descending_lat_equals_ascending(stores: tuple[str, str], name: str) -> None:
    ascending, descending = stores
    config = PipelineConfig(
        input_path=ascending,
        variables=("tas",),
        dims=DIMS,
        output_path="unused.zarr",
        tile=(3, 8, 12),
        halo=(0, 3, 0),
        model=MODELS[name],
    )
    tiles = plan_tiles((3, 16, 12), config.tile, config.halo)
    assert len(tiles) == 2
    # The ascending store's southern tile is the descending store's second tile, flipped.
    result = predict_tile(tile_work(config), tiles[0])
    result_d = predict_tile(tile_work(replace(config, input_path=descending)), tiles[1])
    # The isotropic path's mean is an iterative (CG) solve stopped at relative residual
    # KISS_CG_TOL, whose rounding differs with the cell order; every other output is direct.
    data_std = float(np.nanstd(xr.open_zarr(ascending)["tas"].values))
    mean_atol = 20 * KISS_CG_TOL * data_std if MODELS[name].isotropic else 0.0
    np.testing.assert_allclose(
        result_d.predictions["tas"][:, ::-1], result.predictions["tas"], rtol=1e-9, atol=mean_atol
    )
    np.testing.assert_allclose(
        result_d.predictions["tas_std"][:, ::-1], result.predictions["tas_std"], rtol=1e-8
    )
    fit, fit_d = result.diagnostics["variables"]["tas"], result_d.diagnostics["variables"]["tas"]
    assert fit["n_observed"] == fit_d["n_observed"]
    assert fit["hyperparameters"]["noise"] == pytest.approx(
        fit_d["hyperparameters"]["noise"], rel=1e-6
    )
