"""KissGP's iterative interpolated path (large grids, scattered inputs) against dense oracles.

Oracles: the dense n x n matrix W K_UU W^T + noise I in float64 for the building blocks,
and KissGP's dense m x m path (exact SKI likelihood and posterior) on the same grid.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpkernels import KissGP, NumericalWarning, separable
from gpkernels.kernels import Matern
from gpkernels.kiss_paths import axis_columns
from gpkernels.preconditioners import PivotedCholeskyPreconditioner, pivoted_cholesky
from tests.conftest import DEVICES

GRID = (30, 30)  # 900 cells: the dense path can still serve as the oracle


def scattered_data(n: int = 600, seed: int = 0, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    f = torch.sin(6 * x[:, 0]) * torch.cos(5 * x[:, 1])
    y = f + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    return x.to(device), y.to(device)


def model(iterative: bool, **options) -> KissGP:
    """KissGP on GRID at fixed hyperparameters; `iterative` forces the CG/Lanczos path."""
    kiss = KissGP(
        separable(["matern32", "matern32"]),
        grid_shape=GRID,
        dense_grid_limit=10 if iterative else 1000,
        **options,
    )
    for factor in kiss.kernel.base.factors:
        factor.lengthscale = 0.3
    kiss.kernel.outputscale = 1.0
    kiss.likelihood.noise = 0.01
    return kiss


def dense_operator(x: torch.Tensor, y: torch.Tensor):
    """The iterative path's operator and its dense n x n matrix."""
    kiss = model(iterative=True)
    solver = kiss._solver(x, y)
    columns = axis_columns(kiss.kernel, solver.lattice, x.dtype, x.device)
    with torch.no_grad():
        op = solver.operator(columns, kiss.kernel.outputscale, kiss.likelihood.noise)
        eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
        return op, op.matmul(eye)


def test_diagonal_and_columns_match_the_dense_matrix() -> None:
    x, y = scattered_data(300)
    op, dense = dense_operator(x, y)
    noise = float(op.noise)
    assert torch.allclose(op.kernel_diagonal() + noise, dense.diagonal(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(op.diagonal(), dense.diagonal(), rtol=1e-10, atol=1e-12)
    for j in (0, 17, 299):
        expected = dense[:, j].clone()
        expected[j] -= noise
        assert torch.allclose(op.column(j), expected, rtol=1e-8, atol=1e-9)


def test_pivoted_cholesky_converges_to_the_matrix() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        k = Matern(2.5, 0.2)(x, x)
    errors = []
    for rank in (5, 20, 80, 200):
        factor = pivoted_cholesky(k.diagonal(), lambda j: k[:, j], rank)
        errors.append(float((k - factor @ factor.T).abs().max()))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6  # it stops once the remaining trace is 1e-8 of the total


def test_preconditioner_solve_logdet_and_powers_are_exact() -> None:
    gen = torch.Generator().manual_seed(2)
    factor = torch.randn(60, 7, generator=gen, dtype=torch.float64)
    pre = PivotedCholeskyPreconditioner(factor, 0.3)
    p = factor @ factor.T + 0.3 * torch.eye(60, dtype=torch.float64)
    eye = torch.eye(60, dtype=torch.float64)
    assert torch.allclose(pre.solve(eye), torch.linalg.inv(p), atol=1e-10)
    assert math.isclose(pre.logdet(), float(torch.logdet(p)), rel_tol=1e-12)
    half = pre.power(eye, 0.5)
    assert torch.allclose(half @ half, p, atol=1e-10)
    probes = pre.sample(20000, torch.Generator().manual_seed(3))
    assert float((probes @ probes.T / 20000 - p).abs().max()) < 0.1 * float(p.abs().max())


def test_likelihood_matches_dense_and_its_error_shrinks_with_probes() -> None:
    x, y = scattered_data()
    exact = float(model(iterative=False).log_marginal_likelihood(x, y).detach())
    errors = {}
    for probes in (4, 128):
        per_seed = [
            model(True, num_probes=probes, preconditioner_rank=64, cg_tol=1e-8, seed=seed)
            .log_marginal_likelihood(x, y)
            .detach()
            for seed in range(4)
        ]
        errors[probes] = math.sqrt(sum((float(v) - exact) ** 2 for v in per_seed) / 4)
    assert errors[128] < errors[4]
    assert errors[128] < 1e-2 * abs(exact)


def test_gradient_matches_dense() -> None:
    x, y = scattered_data()
    dense = model(iterative=False)
    grad_d = torch.autograd.grad(dense.log_marginal_likelihood(x, y), list(dense.parameters()))
    iterative = model(True, num_probes=128, preconditioner_rank=64, cg_tol=1e-8)
    lml = iterative.log_marginal_likelihood(x, y)
    grad_i = torch.autograd.grad(lml, list(iterative.parameters()))
    flat_d = torch.cat([g.reshape(-1) for g in grad_d])
    flat_i = torch.cat([g.reshape(-1) for g in grad_i])
    assert float((flat_i - flat_d).norm() / flat_d.norm()) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_predictions_match_dense_and_lanczos_rank_n_is_exact(device: str) -> None:
    x, y = scattered_data(2000, device=device)
    targets = 0.1 + 0.8 * torch.rand(500, 2, generator=torch.Generator().manual_seed(4))
    targets = targets.to(x)
    mean_d, var_d = model(iterative=False).condition(x, y).predict(targets)
    default = model(iterative=True, cg_tol=1e-10).condition(x, y)
    mean_i, var_i = default.predict(targets)
    assert float((mean_i - mean_d).norm() / mean_d.norm()) < 1e-6
    assert float(((var_i - var_d) / var_d).abs().max()) < 1e-3
    assert default.diagnostics.variance_last_quarter_change < 1e-2
    full = model(iterative=True, cg_tol=1e-10, love_rank=2001).condition(x, y)
    _, var_f = full.predict(targets)
    assert float(((var_f - var_d) / var_d).abs().max()) < 1e-6


def test_too_small_lanczos_rank_is_reported_with_numbers() -> None:
    x, y = scattered_data(2000)
    with pytest.warns(NumericalWarning, match=r"Lanczos steps still lowered variances by up to"):
        kiss = model(iterative=True, love_rank=64).condition(x, y)
    assert kiss.diagnostics.variance_last_quarter_change > 1e-2


def test_fit_on_a_large_grid_recovers_the_field() -> None:
    """A 60 x 60 grid (3,600 cells, past the dense limit): fit, then predict held-out points."""
    x, y = scattered_data(3000, seed=5)
    kiss = KissGP(separable(["matern32", "matern32"]), grid_shape=(60, 60), seed=1)
    report = kiss.fit(x[:2500], y[:2500], max_iter=15).fit_report
    assert kiss.diagnostics.path.startswith("interpolated (W K_UU W^T, iterative)")
    mean, var = kiss.predict(x[2500:], include_noise=True)
    truth = torch.sin(6 * x[2500:, 0]) * torch.cos(5 * x[2500:, 1])
    rmse = float((mean - truth).pow(2).mean().sqrt())
    assert report.iterations >= 1 and torch.isfinite(mean).all() and (var > 0).all()
    assert rmse < 0.05
    z = (y[2500:] - mean) / var.sqrt()
    assert 0.9 < float((z.abs() < 1.96).double().mean()) <= 1.0
