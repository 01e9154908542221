"""Universal kriging (gpkernels.regression) against the textbook dense float64 system.

The oracle solves the bordered system [[K, H], [H^T, 0]] [w; m] = [k; h] for each target,
so the predictor is w^T y and its variance k(x, x) - w^T k - m^T h: an independent route
to the same answer as the GLS correction of a simple-kriging model.
"""

from __future__ import annotations

import pytest
import torch

from gpkernels import ExactGP, GaussianLikelihood, KissGP, Matern, Product, Scale
from gpkernels.regression import gls_fit

SHAPE = (20, 28)


def covariate_grid(seed: int = 0):
    """Cells of a 20 x 28 grid, a smooth covariate and a field that follows it, with a
    cloud and random gaps; the regressors are an intercept and the covariate."""
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float64) * 0.5 for n in SHAPE]
    cells = torch.cartesian_prod(*axes)
    covariate = torch.sin(cells[:, 0] / 1.5) + 0.3 * cells[:, 1]
    y = (
        2.0 * covariate
        + torch.cos(cells[:, 1] / 2)
        + 0.2 * torch.randn(len(cells), generator=gen, dtype=torch.float64)
    )
    kept = torch.rand(len(cells), generator=gen) < 0.7
    kept &= ~((cells[:, 0] > 3) & (cells[:, 0] < 7) & (cells[:, 1] > 5) & (cells[:, 1] < 11))
    h = torch.stack([torch.ones(len(cells), dtype=torch.float64), covariate], 1)
    return cells, kept, h, y


def bordered_system(model, x, h, y, cells, h_cells):  # noqa: ANN001, ANN201
    """Universal kriging mean and latent variance at `cells` by the bordered system, with
    the model's covariance in the data's units."""
    s2 = model.y_scale**2
    with torch.no_grad():
        cov = s2 * (model.kernel(x, x) + model.likelihood.noise * torch.eye(len(x)))
        cross = s2 * model.kernel(x, cells)
        prior = s2 * model.kernel.diag(cells)
    p = h.shape[1]
    system = torch.zeros(len(x) + p, len(x) + p, dtype=torch.float64)
    system[: len(x), : len(x)], system[: len(x), len(x) :] = cov, h
    system[len(x) :, : len(x)] = h.T
    weights = torch.linalg.solve(system, torch.cat([cross, h_cells.T]))
    mean = weights[: len(x)].T @ y
    var = prior - (weights * torch.cat([cross, h_cells.T])).sum(0)
    return mean, var


def separable() -> Scale:
    return Scale(Product([Matern(1.5, 2.0, dims=[0]), Matern(1.5, 3.0, dims=[1])]), 1.3)


def isotropic() -> Scale:
    return Scale(Matern(0.5, 2.5, dims=[0, 1], isotropic=True), 1.3)


MODELS = {
    "exact": lambda: ExactGP(separable(), GaussianLikelihood(0.05)),
    "kiss on-grid": lambda: KissGP(
        separable(), GaussianLikelihood(0.05), cg_tol=1e-11, neighbours=1000
    ),
    "kiss stationary-grid": lambda: KissGP(
        isotropic(), GaussianLikelihood(0.05), cg_tol=1e-11, neighbours=1000
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_gls_correction_of_a_simple_kriging_model_is_universal_kriging(name: str) -> None:
    cells, kept, h_all, y_all = covariate_grid()
    x, h, y = cells[kept], h_all[kept], y_all[kept]
    start = torch.linalg.lstsq(h, y[:, None]).solution[:, 0]
    residual = y - h @ start
    model = MODELS[name]().condition(x, residual)
    fit = gls_fit(model, h, residual)
    mean_r, var_r = model.predict(cells)
    mean, var = fit.moments(mean_r, var_r, cells, h_all)
    mean = mean + h_all @ start
    want_mean, want_var = bordered_system(model, x, h, y, cells, h_all)
    assert float((mean - want_mean).abs().max()) < 1e-6 * float(want_mean.abs().max())
    assert float(((var - want_var) / want_var).abs().max()) < 1e-6
    # the coefficients' uncertainty is what separates the two: largest deep in the cloud
    extra = var - var_r
    cloud = ~kept & (cells[:, 0] > 4) & (cells[:, 0] < 6) & (cells[:, 1] > 6.5)
    cloud &= cells[:, 1] < 9.5
    assert float(extra.min()) >= 0 and float(extra[cloud].mean()) > 3 * float(extra[kept].mean())
