"""SVGP against dense float64 ExactGP (the oracle) on the same data and hyperparameters."""

from __future__ import annotations

import pytest
import torch

from gpkernels import SVGP, ExactGP, GaussianLikelihood, Matern, Scale
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
    assert report.stop_reason == "3 epochs done"
    assert svgp.hyperparameters()["noise"] == pytest.approx(
        exact.hyperparameters()["noise"], rel=0.25
    )
    x_test, _ = data(500, seed=2)
    mean_e, _ = exact.predict(x_test.to(device))
    mean_s, var_s = svgp.predict(x_test.to(device))
    assert float(torch.sqrt(torch.mean((mean_s - mean_e) ** 2))) < 0.02
    assert bool((var_s >= 0).all())


def test_bad_inducing_choice_and_predict_before_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="inducing must be"):
        SVGP(kernel(), inducing="random")
    x, _ = data(10)
    with pytest.raises(RuntimeError, match="before predict"):
        SVGP(kernel()).predict(x)
