"""ExactGP against scikit-learn's GaussianProcessRegressor and dense float64 algebra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process import kernels as sk

from gpkernels import (
    RBF,
    ExactGP,
    GaussianLikelihood,
    Matern,
    NumericalWarning,
    Scale,
    robust_cholesky,
    separable,
)
from tests.conftest import DEVICES

LENGTHSCALES = [1.3, 2.1]
OUTPUTSCALE = 1.7
NOISE = 0.05


def make_data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 10
    y = torch.sin(x[:, 0]) + torch.cos(0.7 * x[:, 1])
    y = y + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    x_test = torch.rand(80, 2, generator=gen, dtype=torch.float64) * 10
    return x, y, x_test


CASES = {
    "rbf": (lambda: RBF(LENGTHSCALES), sk.RBF(LENGTHSCALES, "fixed")),
    "matern12": (lambda: Matern(0.5, LENGTHSCALES), sk.Matern(LENGTHSCALES, "fixed", nu=0.5)),
    "matern32": (lambda: Matern(1.5, LENGTHSCALES), sk.Matern(LENGTHSCALES, "fixed", nu=1.5)),
    "matern52": (lambda: Matern(2.5, LENGTHSCALES), sk.Matern(LENGTHSCALES, "fixed", nu=2.5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_matches_sklearn_at_fixed_hyperparameters(name: str, device: str) -> None:
    make_ours, theirs = CASES[name]
    x, y, x_test = make_data()
    model = ExactGP(Scale(make_ours(), OUTPUTSCALE), GaussianLikelihood(NOISE), normalize_y=False)
    reference = GaussianProcessRegressor(
        sk.ConstantKernel(OUTPUTSCALE, "fixed") * theirs, alpha=NOISE, optimizer=None
    ).fit(x.numpy(), y.numpy())
    x, y, x_test = x.to(device), y.to(device), x_test.to(device)

    lml = model.log_marginal_likelihood(x, y).item()
    assert lml == pytest.approx(reference.log_marginal_likelihood_value_, rel=1e-6)

    mean, var = model.condition(x, y).predict(x_test, block_size=32)
    ref_mean, ref_std = reference.predict(x_test.cpu().numpy(), return_std=True)
    np.testing.assert_allclose(mean.cpu().numpy(), ref_mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(var.cpu().numpy(), ref_std**2, rtol=1e-6, atol=1e-9)

    _, noisy_var = model.predict(x_test, include_noise=True)
    np.testing.assert_allclose(noisy_var.cpu().numpy(), ref_std**2 + NOISE, rtol=1e-6)


def dense_lml(model: ExactGP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log N(y | 0, K + noise I) by plain autograd through a dense Cholesky."""
    cov = model.kernel(x, x) + model.likelihood.noise * torch.eye(len(x), dtype=x.dtype)
    factor = torch.linalg.cholesky(cov)
    alpha = torch.cholesky_solve(y[:, None], factor)[:, 0]
    return -0.5 * y @ alpha - factor.diagonal().log().sum() - 0.5 * len(x) * math.log(2 * math.pi)


def test_gradient_matches_autograd_through_cholesky() -> None:
    x, y, _ = make_data(n=150)
    model = ExactGP(
        Scale(Matern(1.5, LENGTHSCALES), OUTPUTSCALE), GaussianLikelihood(NOISE), normalize_y=False
    )
    params = [p for p in model.parameters()]
    ours = torch.autograd.grad(model.log_marginal_likelihood(x, y), params)
    theirs = torch.autograd.grad(dense_lml(model, x, y), params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_fit_reaches_sklearn_optimum() -> None:
    """L-BFGS from data-driven starting values finds a marginal likelihood at least as high."""
    x, y, _ = make_data(n=200)
    model = ExactGP(Scale(Matern(2.5, [1.0, 1.0])))
    report = model.fit(x, y).fit_report
    assert report.converged, report
    reference = GaussianProcessRegressor(
        sk.ConstantKernel(1.0) * sk.Matern([1.0, 1.0], nu=2.5) + sk.WhiteKernel(0.1),
        normalize_y=True,
        n_restarts_optimizer=3,
        random_state=0,
    ).fit(x.numpy(), y.numpy())
    # sklearn's normalize_y scores the standardised targets; convert ours to that scale.
    ours_standardised = report.log_marginal_likelihood + len(y) * math.log(float(y.std()))
    assert ours_standardised >= reference.log_marginal_likelihood_value_ - 1e-3
    assert model.hyperparameters()["noise"] == pytest.approx(0.01, rel=0.5)


def test_fit_recovers_known_hyperparameters() -> None:
    """On a draw from a known GP the learned lengthscale and noise land near the truth."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(600, 1, generator=gen, dtype=torch.float64) * 20
    true_kernel = Scale(Matern(1.5, 1.5), 2.0)
    with torch.no_grad():
        cov = true_kernel(x, x) + 0.04 * torch.eye(600, dtype=torch.float64)
    y = torch.linalg.cholesky(cov) @ torch.randn(600, generator=gen, dtype=torch.float64)
    model = ExactGP(Scale(Matern(1.5)))
    model.fit(x, y)
    learned = model.hyperparameters()
    assert learned["kernel"]["base"]["lengthscale"][0] == pytest.approx(1.5, rel=0.3)
    assert learned["noise"] == pytest.approx(0.04, rel=0.3)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_agrees_with_float64(device: str) -> None:
    """At the same, well-conditioned hyperparameters float32 tracks float64."""
    x, y, x_test = make_data()
    predictions = {}
    for dtype in (torch.float32, torch.float64):
        model = ExactGP(Scale(Matern(1.5, LENGTHSCALES), OUTPUTSCALE), GaussianLikelihood(NOISE))
        model.condition(x.to(device, dtype), y.to(device, dtype))
        predictions[dtype] = model.predict(x_test.to(device, dtype))
        assert predictions[dtype][0].dtype == dtype
        assert predictions[dtype][0].device.type == device
    (mean32, var32), (mean64, var64) = predictions[torch.float32], predictions[torch.float64]
    torch.testing.assert_close(mean32.double(), mean64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(var32.double(), var64, rtol=1e-2, atol=1e-4)


def test_predict_blocks_do_not_change_results() -> None:
    x, y, x_test = make_data()
    model = ExactGP(separable(["rbf", "rbf"])).condition(x, y)
    a = model.predict(x_test, block_size=7)
    b = model.predict(x_test, block_size=10_000)
    torch.testing.assert_close(a, b)


def test_bad_training_data_is_refused_with_a_fix() -> None:
    x, y, _ = make_data(n=20)
    model = ExactGP(separable(["rbf", "rbf"]))
    y_gap = y.clone()
    y_gap[3] = float("nan")
    with pytest.raises(ValueError, match="must be finite: drop NaN"):
        model.fit(x, y_gap)
    with pytest.raises(ValueError, match=r"y must have shape \(20,\)"):
        model.fit(x, y[:10])
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        model.fit(x[:, 0], y)
    with pytest.raises(RuntimeError, match="before predict"):
        model.predict(x)


def test_jitter_is_reported_with_numbers() -> None:
    singular = torch.ones(5, 5, dtype=torch.float64)
    with pytest.warns(NumericalWarning, match=r"needed jitter [0-9.e-]+ \("):
        factor, jitter = robust_cholesky(singular)
    assert jitter > 0
    reconstructed = factor @ factor.T
    torch.testing.assert_close(reconstructed, singular + jitter * torch.eye(5, dtype=torch.float64))


def test_condition_records_jitter_on_duplicate_inputs() -> None:
    x = torch.zeros(6, 1, dtype=torch.float32)
    y = torch.arange(6.0, dtype=torch.float32)
    model = ExactGP(Scale(RBF(1.0), 1e3), GaussianLikelihood(noise=2e-6), normalize_y=False)
    with pytest.warns(NumericalWarning):
        model.condition(x, y)
    assert model.jitter > 0
