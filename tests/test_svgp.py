"""SVGP against dense float64 ExactGP (the oracle) on the same data and hyperparameters."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from gpkernels import SVGP, ExactGP, GaussianLikelihood, Matern, Scale
from gpkernels.initial import subsample_for_init
from tests.conftest import DEVICES


def data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4
    f = torch.sin(2 * x[:, 0]) + 0.5 * torch.cos(3 * x[:, 1])
    return x, f + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)


def kernel() -> Scale:
    return Scale(Matern(2.5, [0.8, 0.6]), 1.2)


def test_inducing_at_the_inputs_reproduces_the_exact_posterior() -> None:
    x, y = data()
    x_test = torch.rand(200, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = ExactGP(kernel(), GaussianLikelihood(0.02)).condition(x, y)
    svgp = SVGP(kernel(), GaussianLikelihood(0.02), inducing=x, batch_size=64).condition(x, y)
    mean_e, var_e = exact.predict(x_test * 4)
    mean_s, var_s = svgp.predict(x_test * 4)
    assert float((mean_s - mean_e).abs().max() / mean_e.abs().max()) < 1e-3
    assert float(((var_s - var_e).abs() / var_e).max()) < 1e-3
    lml = float(exact.log_marginal_likelihood(x, y).detach())
    assert svgp.elbo() <= lml + 1e-6 * abs(lml)
    assert abs(svgp.elbo() - lml) < 1e-2 * abs(lml)


def test_fewer_inducing_points_lower_the_bound() -> None:
    x, y = data()
    lml = float(ExactGP(kernel(), GaussianLikelihood(0.02)).log_marginal_likelihood(x, y))
    bounds = [
        SVGP(kernel(), GaussianLikelihood(0.02), num_inducing=m).condition(x, y).elbo()
        for m in (10, 40, 300)
    ]
    assert bounds[0] < bounds[1] < bounds[2] <= lml + 1e-6 * abs(lml)


@pytest.mark.parametrize("device", DEVICES)
def test_minibatch_fit_learns_what_the_exact_gp_learns(device: str) -> None:
    x, y = data(1000, seed=1)
    x, y = x.to(device), y.to(device)
    exact = ExactGP(Scale(Matern(2.5, [1.0, 1.0])))
    exact.fit(x, y)
    svgp = SVGP(Scale(Matern(2.5, [1.0, 1.0])), num_inducing=200, batch_size=256)
    report = svgp.fit(x, y, epochs=3).fit_report
    batches = 3 * math.ceil(1000 / 256)  # 4 batches an epoch, the last of 232 rows
    assert report.iterations == batches
    assert svgp.diagnostics.hyper_steps == math.ceil(batches / 4)  # every 4th batch
    assert svgp.hyperparameters()["noise"] == pytest.approx(
        exact.hyperparameters()["noise"], rel=0.25
    )
    x_test = data(500, seed=2)[0].to(device)
    mean_e, _ = exact.predict(x_test)
    mean_s, var_s = svgp.predict(x_test)
    assert float(torch.sqrt(torch.mean((mean_s - mean_e) ** 2))) < 0.02
    # The predictions are the optimal q's for the model's own Z and hyperparameters, to
    # the rounding that K_ZZ's conditioning (4e7 here) allows: 1.6e-6 (means) and 9e-7
    # (variances) seen in float64 ...
    mean_o, var_o = dense_optimal_q(svgp, x, y, x_test)
    assert float((mean_s - mean_o).abs().max() / mean_o.abs().max()) < 1e-5
    assert float(((var_s - var_o).abs() / var_o).max()) < 1e-5
    # ... and 200 inducing points approximate the exact GP with those hyperparameters: the
    # variances differ by 1.6% (median; up to 3x where the exact one is tiny) on CPU.
    _, var_e = ExactGP(svgp.kernel, svgp.likelihood).condition(x, y).predict(x_test)
    assert float(((var_s - var_e).abs() / var_e).median()) < 0.05


def dense_optimal_q(
    svgp: SVGP, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Titsias' optimal q, unwhitened and dense in float64: Sigma = (K_zz + K_zx K_xz /
    noise)^-1, mean K_*z Sigma K_zx z / noise, variance k_** - K_*z K_zz^-1 K_z* +
    K_*z Sigma K_z*, in y's units (z: y standardised as the model did)."""
    with torch.no_grad():
        z = (y - svgp.y_mean) / svgp.y_scale
        noise = svgp.likelihood.noise
        k_zz, k_xz = svgp.kernel(svgp.z, svgp.z), svgp.kernel(x, svgp.z)
        k_sz = svgp.kernel(x_test, svgp.z)
        sigma = torch.linalg.inv(k_zz + svgp.jitter * torch.eye(len(k_zz)) + k_xz.T @ k_xz / noise)
        mean = k_sz @ (sigma @ (k_xz.T @ z)) / noise
        explained = (k_sz * torch.linalg.solve(k_zz, k_sz.T).T).sum(1)
        var = svgp.kernel.diag(x_test) - explained + (k_sz * (k_sz @ sigma)).sum(1)
    return mean * svgp.y_scale + svgp.y_mean, var * svgp.y_scale**2


@pytest.mark.parametrize("init_iter", [1, 4])
def test_init_iter_bounds_the_subsample_fit(init_iter: int) -> None:
    """With no epochs the fit keeps the starting lengthscales: those of an ExactGP fitted
    with max_iter=init_iter on the subsample (it was 50 L-BFGS steps whatever was asked)."""
    x, y = data(300)
    svgp = SVGP(Scale(Matern(2.5, [1.0, 1.0])), num_inducing=50)
    svgp.fit(x, y, epochs=0, init_points=100, init_iter=init_iter)
    idx = subsample_for_init(x, 100, svgp.seed)
    oracle = ExactGP(Scale(Matern(2.5, [1.0, 1.0]))).fit(x[idx], y[idx], max_iter=init_iter)
    assert oracle.fit_report.iterations == init_iter  # not converged that early
    learned = svgp.kernel.base.lengthscale.detach()
    assert torch.allclose(learned, oracle.kernel.base.lengthscale.detach(), rtol=1e-12, atol=0)


def test_diagnostics_are_a_value_with_a_plain_dict() -> None:
    x, y = data(200)
    svgp = SVGP(kernel(), GaussianLikelihood(0.02), num_inducing=30, batch_size=64)
    assert svgp.condition(x, y).diagnostics.as_dict() == {
        "inducing": 30,
        "jitter": 0.0,
        "variance": "exact under q (no sampling)",
    }
    svgp.fit(x, y, epochs=2, init_from_data=False)  # 4 batches an epoch, Adam on 1 and 5
    found = svgp.diagnostics.as_dict()
    assert json.loads(json.dumps(found)) == found
    assert found == {
        "inducing": 30,
        "jitter": 0.0,
        "variance": "exact under q (no sampling)",
        "batches": 8,
        "hyper_steps": 2,
        "epochs": 2,
        "batch_size": 64,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        svgp.diagnostics.batches = 0


def test_bad_inducing_choice_and_predict_before_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="inducing must be"):
        SVGP(kernel(), inducing="random")
    x, _ = data(10)
    with pytest.raises(RuntimeError, match="before predict"):
        SVGP(kernel()).predict(x)
