"""Phase 1's pooling of the sampled tiles' fits: medians for one range; for two ranges the
one fit the sampled tiles support best, scored by a likelihood checked against dense
float64, then calibrated on every sampled tile."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.errors import InputError
from pipeline.hyperparameters import best_supported, candidates, pool, widened
from pipeline.phase_one import (
    _variables,
    fit_tile_hyperparameters,
    tile_likelihoods,
    tile_variance_factors,
)
from pipeline.runner import run_pipeline
from pipeline.synthetic import DIMS, SyntheticGrid, write_synthetic
from tests.helpers import tile_work

pytestmark = pytest.mark.usefixtures("ray_cluster")

RECIPE = SyntheticGrid(shape=(4, 24, 24), seed=3)
TWO_RANGES = ModelConfig(
    kernels=(AxisKernel("matern32"),) * 3,
    type="kiss",
    hyperparameters="shared",
    scales=2,
    fit_points=150,
    calibrate_variance=True,
)


def fit(short: float, long: float, lengthscale: float) -> dict:
    """A two-part fit in the form phase 1 reports it."""
    return {
        "lengthscales": [lengthscale, lengthscale * 10],
        "columns": [[0], [0]],
        "shares": [short, long],
        "outputscale": 1.0,
        "noise": 0.01,
    }


def test_the_best_supported_fit_is_one_a_tile_fitted_and_medians_are_not() -> None:
    """Parts that trade off: each tile puts the variance in a different part. Medians part
    by part describe no tile's fit; the best-supported one is the fit with the largest
    likelihood summed over the tiles that scored (a tile without data is left out)."""
    samples = [{"v": fit(2.0, 0.001, 1.0)}, {"v": fit(0.001, 2.0, 2.0)}, {"v": None}]
    samples.append({"v": fit(1.0, 0.5, 3.0)})
    fits = candidates(samples, [0, 4, 7, 9])
    assert [f["fitted_on_tile"] for f in fits["v"]] == [0, 4, 9]
    medians = pool(samples)["v"]
    as_set = (medians["shares"], medians["lengthscales"])  # [1, 0.5] with [2, 20]
    assert all(as_set != (f["shares"], f["lengthscales"]) for f in fits["v"])
    likelihoods = [
        {"v": [0.5, 0.9, 0.1]},
        {"v": [0.4, 0.2, 0.3]},
        {"v": None},
        {"v": [0.0, 0.2, 0.6]},
    ]
    chosen = best_supported(fits, likelihoods)["v"]  # sums 0.9, 1.3, 1.0
    assert chosen["fitted_on_tile"] == 4 and chosen["shares"] == [0.001, 2.0]
    assert chosen["log_likelihood_per_observation"] == pytest.approx([0.9, 1.3, 1.0])
    widen = widened({"v": chosen}, [{"v": 1.0}, {"v": None}, {"v": 4.0}, {"v": 2.0}])["v"]
    assert widen["variance_factor"] == pytest.approx(2.0)  # log-median of 1, 2 and 4
    assert widen["outputscale"] == pytest.approx(2.0) and widen["noise"] == pytest.approx(0.02)
    assert widen["lengthscales"] == chosen["lengthscales"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("input") / "syn.zarr"
    write_synthetic(str(path), RECIPE, chunks=(4, 12, 12))
    return str(path)


def config_for(input_path: str, output_path: str) -> PipelineConfig:
    return PipelineConfig(
        input_path=input_path,
        variables=("tas",),
        dims=DIMS,
        output_path=output_path,
        tile=(4, 12, 12),
        halo=(0, 3, 3),
        model=TWO_RANGES,
        max_in_flight=2,
        spec_text="# test spec",
    )


def dense_log_likelihood(values: dict, x: torch.Tensor, y: torch.Tensor, config) -> float:  # noqa: ANN001
    """log N(y | mean(y), K + noise I) per observation in float64, K summed by hand from the
    set's two parts: Matérn 3/2 per column, each part's share times the outputscale."""
    x, y = x.double(), y.double()
    n = y.numel()
    covariance = torch.zeros(n, n, dtype=torch.float64)
    for part, share in enumerate(values["shares"]):
        product = torch.ones(n, n, dtype=torch.float64)
        for column in range(3):
            ell = values["lengthscales"][3 * part + column]
            r = (x[:, None, column] - x[None, :, column]).abs() * math.sqrt(3) / ell
            product = product * (1 + r) * torch.exp(-r)
        covariance += values["outputscale"] * share * product
    covariance += values["noise"] * torch.eye(n, dtype=torch.float64)
    residual = y - y.mean()
    factor = torch.linalg.cholesky(covariance)
    alpha = torch.cholesky_solve(residual[:, None], factor)[:, 0]
    logdet = 2 * torch.log(torch.diagonal(factor)).sum()
    return float(-0.5 * (residual @ alpha + logdet + n * math.log(2 * math.pi))) / n


def test_a_tile_scores_a_fit_by_its_dense_likelihood(source, tmp_path) -> None:
    """tile_likelihoods: the log likelihood per observation of each candidate on the tile's
    phase-1 points, as dense float64 Cholesky gives it for the same set."""
    config = config_for(source, str(tmp_path / "unused.zarr"))
    work = tile_work(config)
    tiles = _plan(config)
    fits = candidates([fit_tile_hyperparameters(work, t, False) for t in tiles[:2]], [0, 1])
    scores = tile_likelihoods(work, tiles[2], fits)["tas"]
    data = _variables(work, tiles[2])["tas"]
    x, y = data.x[data.used], data.y[data.used]
    expected = [dense_log_likelihood(f, x, y, config) for f in fits["tas"]]
    assert scores == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_a_two_range_shared_run_uses_the_best_supported_fit_calibrated(source, tmp_path) -> None:
    """The run's shared set is the sampled fit with the largest summed likelihood, widened
    by the log-median of the factors each sampled tile's moved gaps ask of that set."""
    config = config_for(source, str(tmp_path / "out.zarr"))
    run_pipeline(config, progress=False)
    recorded = json.loads(xr.open_zarr(config.output_path).attrs["gpgrid_hyperparameters"])["tas"]
    work = tile_work(config)
    tiles = _plan(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a one-CPU Ray worker runs: the same floating-point sums
    try:
        fits = candidates([fit_tile_hyperparameters(work, t, False) for t in tiles], [0, 1, 2, 3])
    finally:
        torch.set_num_threads(threads)
    sums = np.sum([tile_likelihoods(work, t, fits)["tas"] for t in tiles], axis=0)
    best = fits["tas"][int(np.argmax(sums))]
    assert recorded["fitted_on_tile"] == best["fitted_on_tile"]
    assert recorded["lengthscales"] == pytest.approx(best["lengthscales"], rel=1e-6)
    assert recorded["shares"] == pytest.approx(best["shares"], rel=1e-6)
    factors = [tile_variance_factors(work, t, {"tas": best})["tas"] for t in tiles]
    factor = math.exp(float(np.median(np.log(factors))))
    assert recorded["variance_factor"] == pytest.approx(factor, rel=1e-6)
    assert recorded["outputscale"] == pytest.approx(best["outputscale"] * factor, rel=1e-6)
    assert recorded["noise"] == pytest.approx(best["noise"] * factor, rel=1e-6)


def _plan(config: PipelineConfig) -> list:
    from pipeline.tiling import plan_tiles

    return plan_tiles(RECIPE.shape, config.tile, config.halo)


def test_a_variable_no_sampled_tile_could_fit_is_refused_with_the_fix() -> None:
    with pytest.raises(InputError, match="no sampled tile .* 'v'.*hyperparameters: per_tile"):
        pool([{"v": None}, {"v": None}])
    with pytest.raises(InputError, match="no sampled tile .* 'v'.*hyperparameters: per_tile"):
        best_supported(candidates([{"v": None}], [0]), [{"v": None}])
