"""The domain trend: one additive part's posterior against dense float64 algebra, and a
two-scale draw whose long part the fit finds and whose variance grows inside a gap."""

from __future__ import annotations

import numpy as np
import torch

from gpkernels import ExactGP, Matern, Scale
from gpkernels.kernels import Sum
from gpkernels.trend import DomainTrend


def _matern(nu: float, ell: float, variance: float) -> Scale:
    return Scale(Matern(nu, ell, dims=[0, 1], isotropic=True), variance)


def _two_scale_draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points in the unit square; y = long (M3/2, range 0.6, var 4) + short (M1/2, range
    0.03, var 1) + noise 0.01, drawn jointly."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        cov = _matern(1.5, 0.6, 4.0)(x, x) + _matern(0.5, 0.03, 1.0)(x, x)
    cov = cov + 0.01 * torch.eye(n, dtype=torch.float64)
    y = torch.linalg.cholesky(cov) @ torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


def test_part_posterior_matches_dense_algebra() -> None:
    x, y = _two_scale_draw(200, 0)
    long, short = _matern(1.5, 0.6, 4.0), _matern(0.5, 0.03, 1.0)
    model = ExactGP(Sum([long, short]), normalize_y=False)
    model.likelihood.noise = 0.01
    model.condition(x, y)
    x_new = torch.rand(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mean, var = model.predict_part(x_new, long)

    k = (long(x, x) + short(x, x)).detach().numpy() + 0.01 * np.eye(200)
    cross = long(x_new, x).detach().numpy()
    expected_mean = cross @ np.linalg.solve(k, y.numpy())  # zero prior mean without normalize_y
    expected_var = 4.0 - np.einsum("ij,ji->i", cross, np.linalg.solve(k, cross.T))
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-8, atol=1e-10)

    whole_mean, whole_var = model.predict(x_new)
    part_mean, part_var = model.predict_part(x_new, model.kernel)
    torch.testing.assert_close(part_mean, whole_mean)
    torch.testing.assert_close(part_var, whole_var)


def test_fit_finds_the_long_part_and_its_variance_grows_in_a_gap() -> None:
    x, y = _two_scale_draw(900, 2)
    gap = ((x - 0.5) ** 2).sum(1) < 0.2**2  # a hole of radius 0.2 in the middle
    # given the parts the wrong way round, the fit still reports the long one as the trend
    trend = DomainTrend(_matern(1.5, 1.0, 1.0), _matern(1.5, 1.0, 1.0))
    trend.fit(x[~gap], y[~gap])
    found = trend.hyperparameters()
    trend_range = found["trend"]["base"]["lengthscale"][0]
    local_range = found["local"]["base"]["lengthscale"][0]
    assert 0.2 < trend_range < 2.0, found
    assert local_range < 0.2, found

    points = torch.tensor([[0.5, 0.5], [0.5, 0.62], [0.1, 0.1], [0.9, 0.2]], dtype=torch.float64)
    _, var = trend.predict(points)
    assert var[0] > var[1] > max(var[2], var[3]), var  # deepest in the hole, then its edge
    assert var[0] < found["trend"]["outputscale"]
