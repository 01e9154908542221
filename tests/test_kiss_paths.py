"""KissGP's solver paths and the fit around them: fit reports, long axes, calibration, typed
diagnostics; against dense float64 oracles (ExactGP, or the SKI model solved densely)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import gpkernels
from gpkernels import ExactGP, GaussianLikelihood, KissGP, Matern, Scale, separable
from gpkernels.initial import subsample_for_init
from gpkernels.kiss import NOISE_FLOOR, interpolation_lattice
from gpkernels.optim import AdamSteps
from tests.test_kiss import dense_ski_posterior, grid_data

SEED = 0


def test_default_kiss_tile_reports_the_subsample_fit_that_ran() -> None:
    """fit(max_iter=0), as the pipeline calls it: the report is the subsample ExactGP fit's
    (oracle: that fit run alone on the same rows), with the final model's log marginal
    likelihood on all the data (oracle: dense ExactGP at the same hyperparameters)."""
    _, x, y = grid_data(seed=2)
    model = KissGP(separable(["matern32", "matern32"]), seed=SEED)
    report = model.fit(x, y, max_iter=0, init_points=200).fit_report
    idx = subsample_for_init(x, 200, SEED)
    oracle = ExactGP(separable(["matern32", "matern32"]), GaussianLikelihood(floor=NOISE_FLOOR))
    oracle.fit(x[idx], y[idx], max_iter=50)
    assert report.iterations == oracle.fit_report.iterations > 0
    assert report.converged == oracle.fit_report.converged
    assert report.stop_reason == f"exact fit on 200 points: {oracle.fit_report.stop_reason}"
    dense = ExactGP(model.kernel, model.likelihood).log_marginal_likelihood(x, y)
    assert report.log_marginal_likelihood == pytest.approx(float(dense), rel=1e-8)


@pytest.mark.parametrize("init_iter", [1, 3])
def test_init_iter_bounds_the_subsample_fit(init_iter: int) -> None:
    """The subsample fit takes up to `init_iter` L-BFGS steps (it was 50 whatever was asked):
    oracle, the ExactGP fitted with max_iter=init_iter on the same rows."""
    _, x, y = grid_data(seed=2)
    model = KissGP(separable(["matern32", "matern32"]), seed=SEED)
    report = model.fit(x, y, max_iter=0, init_points=200, init_iter=init_iter).fit_report
    idx = subsample_for_init(x, 200, SEED)
    oracle = ExactGP(separable(["matern32", "matern32"]), GaussianLikelihood(floor=NOISE_FLOOR))
    oracle.fit(x[idx], y[idx], max_iter=init_iter)
    assert report.iterations == oracle.fit_report.iterations == init_iter
    for mine, theirs in zip(model.kernel.base.factors, oracle.kernel.base.factors, strict=True):
        assert float(mine.lengthscale) == pytest.approx(float(theirs.lengthscale), rel=1e-12)


def test_adam_steps_report_adam_and_name_both_fits() -> None:
    _, x, y = grid_data(seed=2)
    model = KissGP(separable(["matern32", "matern32"]), seed=SEED)
    steps = AdamSteps(max_iter=3)
    report = model.fit(x, y, optimizer=steps, init_points=200, init_iter=5).fit_report
    assert report.iterations == 3 and not report.converged
    assert report.stop_reason == "exact fit on 200 points: max_iter=5 reached; then Adam: " + (
        "max_iter=3 reached"
    )
    assert math.isfinite(report.log_marginal_likelihood)
    assert "exact" in model.diagnostics.log_det_gaps


def test_non_separable_fit_reports_the_subsample_fit_and_no_likelihood() -> None:
    cells = torch.cartesian_prod(*[torch.arange(20, dtype=torch.float64)] * 2)
    y = torch.sin(cells[:, 0] / 3) * torch.cos(cells[:, 1] / 4)
    kept = torch.rand(len(cells), generator=torch.Generator().manual_seed(1)) < 0.7
    model = KissGP(Scale(Matern(1.5, dims=[0, 1], isotropic=True)), seed=SEED)
    report = model.fit(cells[kept], y[kept], max_iter=0, init_points=150, init_iter=4).fit_report
    assert report.iterations == 4 and not report.converged
    assert report.stop_reason.startswith("exact fit on 150 points: max_iter=4 reached")
    assert "non-separable" in report.stop_reason
    assert math.isnan(report.log_marginal_likelihood)


def test_an_axis_of_2100_cells_runs_the_iterative_interpolated_path() -> None:
    """Past DENSE_AXIS_LIMIT the axis factor multiplies by FFT; likelihood, conditioning
    (with its Lanczos root) and prediction must all run, and match the dense SKI oracle."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(300, 1, generator=gen, dtype=torch.float64) * 100
    y = torch.sin(x[:, 0] / 4) + 0.1 * torch.randn(300, generator=gen, dtype=torch.float64)
    x_test = 5 + 90 * torch.rand(100, 1, generator=gen, dtype=torch.float64)

    def make(**options) -> KissGP:
        kiss = KissGP(Scale(Matern(1.5, 3.0, dims=[0])), GaussianLikelihood(0.01), **options)
        return kiss

    kiss = make(grid_shape=(2100,), cg_tol=1e-10, love_rank=301)
    assert kiss.diagnostics is None
    mean, var = kiss.condition(x, y).predict(x_test)
    assert kiss.diagnostics.path.startswith("interpolated (W K_UU W^T, iterative)")
    mean_o, var_o = dense_ski_posterior(kiss, x, y, x_test, interpolation_lattice(x, (2100,)))
    torch.testing.assert_close(mean, mean_o, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(var, var_o, rtol=1e-4, atol=1e-8)
    dense = make(grid_shape=(2100,), dense_grid_limit=3000).log_marginal_likelihood(x, y)
    iterative = make(grid_shape=(2100,), num_probes=64, cg_tol=1e-8)
    lml = iterative.log_marginal_likelihood(x, y)
    assert float(lml) == pytest.approx(float(dense), rel=1e-2)
    grads = torch.autograd.grad(lml, list(iterative.parameters()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_an_axis_of_2100_cells_runs_the_on_grid_path() -> None:
    """A daily series of 2,100 cells with gaps: the on-grid likelihood and posterior against
    the dense float64 ExactGP."""
    gen = torch.Generator().manual_seed(4)
    t = torch.arange(2100, dtype=torch.float64)[:, None]
    y = torch.sin(t[:, 0] / 30) + 0.2 * torch.randn(2100, generator=gen, dtype=torch.float64)
    kept = torch.rand(2100, generator=gen) < 0.8
    make = lambda: Scale(Matern(1.5, 20.0, dims=[0]))  # noqa: E731
    kiss = KissGP(
        make(), GaussianLikelihood(0.05), exact_gap_limit=2100, neighbours=128, cg_tol=1e-11
    )
    exact = ExactGP(make(), GaussianLikelihood(0.05))
    lml_k = kiss.log_marginal_likelihood(t[kept], y[kept])
    lml_e = exact.log_marginal_likelihood(t[kept], y[kept])
    assert float(lml_k) == pytest.approx(float(lml_e), rel=1e-8)
    probe = t[::7]
    mean_k, var_k = kiss.condition(t[kept], y[kept]).predict(probe)
    mean_e, var_e = exact.condition(t[kept], y[kept]).predict(probe)
    torch.testing.assert_close(mean_k, mean_e, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(var_k, var_e, rtol=1e-6, atol=0)  # 128 neighbours: screened


def test_calibrate_variance_leaves_the_model_conditioned_on_all_the_data() -> None:
    """After calibrate_variance the model predicts as one with the calibrated hyperparameters
    conditioned on all of (x, y), standardised by all of y."""
    cells, x, y = grid_data(seed=5, keep=0.6)
    y = 10.0 + 3.0 * y
    model = KissGP(separable(["matern32", "matern32"], outputscale=0.05), neighbours=64)
    model.likelihood.noise = 0.005  # intervals far too narrow: the factor widens them
    factor = model.calibrate_variance(x, y)
    assert factor > 1.0 and model.diagnostics.variance_calibration.startswith(f"x{factor:.3f}")
    assert model.y_mean == pytest.approx(float(y.mean()), rel=1e-12)
    assert model.y_scale == pytest.approx(float(y.std()), rel=1e-12)
    fresh = KissGP(separable(["matern32", "matern32"]), neighbours=64)
    fresh.load_state_dict(model.state_dict())
    mean_f, var_f = fresh.condition(x, y).predict(cells)
    mean, var = model.predict(cells)
    torch.testing.assert_close(mean, mean_f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, var_f, rtol=1e-12, atol=1e-12)


def test_diagnostics_are_a_typed_value_with_todays_keys() -> None:
    cells, x, y = grid_data()
    model = KissGP(separable(["matern32", "matern32"]))
    model.condition(x, y)
    found = model.diagnostics.as_dict()
    assert found == {
        "path": "on-grid (exact kernel, S K S^T)",
        "grid_shape": [30, 40],
        # Conditioning alone (one mean solve) runs plain CG on the gap block: the gap
        # preconditioner is built only by a fit's stochastic gap term (test_gap_blocks).
        "preconditioner": "gap complement of the full-grid Kronecker inverse",
        "jitter": 0.0,
        "cg_iterations": model.diagnostics.solve.iterations,
        "cg_converged": True,
        "cg_relative_residual": model.diagnostics.solve.relative_residual,
        "cg_refinements": model.diagnostics.solve.refinements,
        "variance": "local kriging, 256 nearest observations",
    }
    assert found["cg_relative_residual"] < 1e-6 and found["cg_iterations"] > 0
    json.dumps(found)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.diagnostics.path = "changed"  # type: ignore[misc]
    model.condition(cells, torch.sin(cells[:, 0]))
    assert model.diagnostics.variance.startswith("exact")


def test_prediction_blocks_share_one_local_kriging() -> None:
    """Predicting in many small blocks gives what one block gives (the kriging tables are
    built once, at conditioning)."""
    cells, x, y = grid_data()
    model = KissGP(separable(["matern32", "matern32"]), neighbours=64).condition(x, y)
    kriging = model.posterior.kriging
    mean, var = model.predict(cells)
    mean_b, var_b = model.predict(cells, block_size=97)
    assert model.posterior.kriging is kriging
    torch.testing.assert_close(mean_b, mean, rtol=0, atol=0)
    torch.testing.assert_close(var_b, var, rtol=0, atol=0)


def test_public_names_are_listed_once() -> None:
    assert len(gpkernels.__all__) == len(set(gpkernels.__all__))
