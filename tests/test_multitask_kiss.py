"""MultitaskKissGP (ICM through a KISS grid) against dense float64 oracles.

The SKI oracle forms K = W_f (B kron K_UU) W_f^T + N densely; the kernel oracle is
MultitaskExactGP with the same hyperparameters (equal up to interpolation error).
"""

from __future__ import annotations

import math

import pytest
import torch

from gpkernels import ExactGP, MultitaskExactGP, MultitaskKissGP, separable
from gpkernels.initial import subsample_for_init
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import Matern
from gpkernels.structured import toeplitz
from tests.conftest import DEVICES


def two_tasks(n: int = 300, seed: int = 0, device: str = "cpu"):
    """Correlated tasks on [0, 1]; task 1 misses x < 1/3, task 0 misses x > 5/6."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    f1 = torch.sin(6 * x[:, 0])
    f2 = 0.9 * f1 + 0.3 * torch.cos(9 * x[:, 0])
    f = torch.stack([f1, f2], 1)
    y = f + 0.1 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y[x[:, 0] < 1 / 3, 1] = float("nan")
    y[x[:, 0] > 5 / 6, 0] = float("nan")
    return x.to(device), y.to(device), f.to(device)


def with_hyperparameters(model):  # noqa: ANN001, ANN201
    model.kernel.lengthscale = 0.2
    with torch.no_grad():
        model.tasks.mixing.copy_(torch.tensor([[0.9], [0.7]]))
    model.tasks.diagonal.set(torch.tensor([0.1, 0.2]))
    model.noise.set(torch.tensor([0.01, 0.02]))
    return model


def dense_ski_lml(model: MultitaskKissGP, x: torch.Tensor, y: torch.Tensor) -> float:
    """log N(y | 0, W_f (B kron K_UU) W_f^T + N) formed densely, in y's units."""
    z = (y - model.y_mean) / model.y_scale
    lattice = model._cache["lattice"]
    interp = Interpolation.build(x, lattice.starts, lattice.spacings, lattice.shape)
    w = torch.zeros(x.shape[0], lattice.size, dtype=torch.float64)
    w.scatter_add_(1, interp.index, interp.weight)
    column = model.kernel(lattice.lags(0, torch.float64, "cpu")[:, None], torch.zeros(1, 1))[:, 0]
    k_uu = toeplitz(column.detach())
    b = model.tasks.matrix.detach()
    rows, tasks = torch.nonzero(torch.isfinite(z), as_tuple=True)
    cov = b[tasks][:, tasks] * (w[rows] @ k_uu @ w[rows].T)
    cov = cov + torch.diag(model.noise.value.detach()[tasks])
    values = z[rows, tasks]
    log_density = torch.distributions.MultivariateNormal(torch.zeros_like(values), cov)
    return float(log_density.log_prob(values)) - float(model.y_scale.log()[tasks].sum())


def test_likelihood_equals_the_dense_ski_model() -> None:
    x, y, _ = two_tasks(200)
    model = with_hyperparameters(MultitaskKissGP(Matern(1.5, 0.2), 2, grid_shape=(60,)))
    model.condition(x, y)
    assert math.isclose(model._cache["lml"], dense_ski_lml(model, x, y), rel_tol=1e-9)


def test_matches_exact_icm_on_a_fine_grid() -> None:
    x, y, _ = two_tasks()
    kiss = with_hyperparameters(MultitaskKissGP(Matern(1.5, 0.2), 2, grid_shape=(400,)))
    exact = with_hyperparameters(MultitaskExactGP(Matern(1.5, 0.2), 2))
    lml_k, lml_e = kiss.log_marginal_likelihood(x, y), exact.log_marginal_likelihood(x, y)
    assert abs(float((lml_k - lml_e).detach())) < 1e-3 * abs(float(lml_e.detach()))
    grad_k = torch.autograd.grad(lml_k, [kiss.tasks.mixing, kiss.noise.raw])
    grad_e = torch.autograd.grad(lml_e, [exact.tasks.mixing, exact.noise.raw])
    for a, b in zip(grad_k, grad_e, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-2
    targets = 0.05 + 0.9 * torch.rand(200, 1, generator=torch.Generator().manual_seed(3))
    mean_k, var_k = kiss.condition(x, y).predict(targets.double())
    mean_e, var_e = exact.condition(x, y).predict(targets.double())
    assert float((mean_k - mean_e).abs().max()) < 1e-3
    assert float(((var_k - var_e) / var_e).abs().max()) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_fit_fills_a_block_from_the_other_task(device: str) -> None:
    """An ICM draw (correlation 0.9) with task 0 missing on 8 < x < 12: the joint fit
    recovers it there from task 1, better than task 0 alone, as exact ICM does."""
    gen = torch.Generator().manual_seed(3)
    x = torch.linspace(0, 20, 400, dtype=torch.float64)[:, None]
    k = Matern(2.5, 1.5)(x, x).detach()
    b = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    cov = torch.kron(b, k) + 1e-8 * torch.eye(800, dtype=torch.float64)
    f = torch.linalg.cholesky(cov) @ torch.randn(800, generator=gen, dtype=torch.float64)
    f = f.reshape(2, 400).T
    y = f + 0.1 * torch.randn(400, 2, generator=gen, dtype=torch.float64)
    block = (x[:, 0] > 8) & (x[:, 0] < 12)
    y[block, 0] = float("nan")
    x, y, f, block = x.to(device), y.to(device), f.to(device), block.to(device)
    joint = MultitaskKissGP(Matern(2.5, 1.0), num_tasks=2, rank=1)
    report = joint.fit(x, y, max_iter=30).fit_report
    mean, var = joint.predict(x[block])
    alone = ExactGP(separable(["matern52"]))
    alone.fit(x[~block], y[~block, 0])
    rmse_joint = float((mean[:, 0] - f[block, 0]).pow(2).mean().sqrt())
    rmse_alone = float((alone.predict(x[block])[0] - f[block, 0]).pow(2).mean().sqrt())
    assert report.iterations >= 1 and torch.isfinite(mean).all() and (var > 0).all()
    assert rmse_joint < 0.7 * rmse_alone  # 0.30 vs 0.51 measured; exact ICM: 0.31
    z = (mean[:, 0] - f[block, 0]) / var[:, 0].sqrt()
    assert float((z.abs() < 1.96).double().mean()) > 0.7  # 0.79 (exact ICM: 0.76)
    assert joint.hyperparameters()["task_correlation"][0][1] > 0.6


def test_wrong_shapes_are_refused_with_the_fix() -> None:
    x, y, _ = two_tasks(50)
    with pytest.raises(ValueError, match=r"y \(n, 3\) with NaN where a task is missing"):
        MultitaskKissGP(Matern(1.5, 0.2), 3).fit(x, y)


@pytest.mark.parametrize("init_iter", [1, 3])
def test_init_iter_bounds_the_subsample_fit(init_iter: int) -> None:
    """With no Adam steps (max_iter=0) the fit keeps what the subsample's exact ICM fit
    found: the oracle is that MultitaskExactGP fitted with max_iter=init_iter on the same
    rows (it was 50 L-BFGS steps whatever the caller asked)."""
    x, y, _ = two_tasks(200)
    model = MultitaskKissGP(Matern(1.5, 0.5), 2, grid_shape=(60,))
    report = model.fit(x, y, max_iter=0, init_points=80, init_iter=init_iter).fit_report
    idx = subsample_for_init(x, 80, model.seed)
    oracle = MultitaskExactGP(Matern(1.5, 0.5), 2).fit(x[idx], y[idx], max_iter=init_iter)
    assert oracle.fit_report.iterations == init_iter  # not converged that early
    assert report.iterations == 0
    assert float(model.kernel.lengthscale) == pytest.approx(float(oracle.kernel.lengthscale))
    b, b_oracle = model.tasks.matrix.detach(), oracle.tasks.matrix.detach()
    assert torch.allclose(b, b_oracle, rtol=1e-12, atol=0)
    assert torch.allclose(model.noise.value, oracle.noise.value, rtol=1e-12, atol=0)
