"""Non-separable (isotropic) kernels on grids with gaps, against dense float64 ExactGP."""

from __future__ import annotations

import math

import pytest
import torch

from gpkernels import ExactGP, GaussianLikelihood, KissGP, Matern, NumericalWarning, Product, Scale
from gpkernels.kernels import lag_table
from gpkernels.preconditioners import CirculantPreconditioner
from gpkernels.structured import ToeplitzGrid, toeplitz

SHAPE = (24, 36)
SPACING = (0.5, 0.5)


def gappy_grid(seed: int = 0, keep: float = 0.7):
    """A rough field on a 24 x 36 grid with a rectangular cloud and random gaps."""
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float64) * h for n, h in zip(SHAPE, SPACING, strict=True)]
    cells = torch.cartesian_prod(*axes)
    y = torch.sin(cells[:, 0] / 2) * torch.cos(cells[:, 1] / 3) + 0.2 * torch.randn(
        len(cells), generator=gen, dtype=torch.float64
    )
    kept = torch.rand(len(cells), generator=gen) < keep
    cloud = (cells[:, 0] > 4) & (cells[:, 0] < 8) & (cells[:, 1] > 6) & (cells[:, 1] < 12)
    kept &= ~cloud
    return cells, cells[kept], y[kept]


def isotropic(nu: float = 0.5, ell: float = 2.5) -> Scale:
    return Scale(Matern(nu, ell, dims=[0, 1], isotropic=True), 1.7)


@pytest.mark.parametrize("nu", [0.5, 1.5])
def test_isotropic_means_and_variances_match_dense(nu: float) -> None:
    cells, x, y = gappy_grid()
    exact = ExactGP(isotropic(nu), GaussianLikelihood(0.05)).condition(x, y)
    kiss = KissGP(isotropic(nu), GaussianLikelihood(0.05), cg_tol=1e-10, neighbours=len(y))
    kiss.condition(x, y)
    mean_e, var_e = exact.predict(cells)
    mean_k, var_k = kiss.predict(cells)
    assert "stationary" in kiss.diagnostics.path
    assert kiss.diagnostics.solve.converged
    assert float((mean_k - mean_e).abs().max()) < 1e-7 * float(mean_e.abs().max())
    assert float(((var_k - var_e) / var_e).abs().max()) < 1e-8


def test_local_variances_of_an_isotropic_kernel_are_conservative_and_close() -> None:
    cells, x, y = gappy_grid(seed=1)
    _, var_e = ExactGP(isotropic(), GaussianLikelihood(0.05)).condition(x, y).predict(cells)
    kiss = KissGP(isotropic(), GaussianLikelihood(0.05), neighbours=128).condition(x, y)
    _, var_k = kiss.predict(cells)
    ratio = var_k / var_e
    assert float(ratio.min()) >= 1 - 1e-9
    assert float(ratio.median()) < 1.02


def test_isotropic_space_times_time_factor_matches_dense() -> None:
    """Isotropic in (lat, lon), separable from time: a 3-D grid of a mixed kernel."""
    gen = torch.Generator().manual_seed(2)
    cells = torch.cartesian_prod(*[torch.arange(n, dtype=torch.float64) for n in (6, 10, 12)])
    y = torch.randn(len(cells), generator=gen, dtype=torch.float64)
    kept = torch.rand(len(cells), generator=gen) < 0.6
    kernel = lambda: Scale(  # noqa: E731
        Product([Matern(1.5, 2.0, dims=[0]), Matern(0.5, 3.0, dims=[1, 2], isotropic=True)])
    )
    exact = ExactGP(kernel(), GaussianLikelihood(0.1)).condition(cells[kept], y[kept])
    kiss = KissGP(kernel(), GaussianLikelihood(0.1), cg_tol=1e-10, neighbours=int(kept.sum()))
    kiss.condition(cells[kept], y[kept])
    (mean_e, var_e), (mean_k, var_k) = exact.predict(cells), kiss.predict(cells)
    assert float((mean_k - mean_e).abs().max()) < 1e-7
    assert float(((var_k - var_e) / var_e).abs().max()) < 1e-8


def test_lag_table_is_the_kernel_first_column() -> None:
    kernel = isotropic()
    table = lag_table(kernel, SPACING, SHAPE)
    cells = torch.cartesian_prod(
        *[torch.arange(n) * h for n, h in zip(SHAPE, SPACING, strict=True)]
    )
    dense = kernel.base(cells.double(), cells[:1].double())[:, 0]
    assert torch.allclose(table.reshape(-1), dense, rtol=1e-14)


def test_toeplitz_grid_matmul_matches_dense() -> None:
    kernel = isotropic(1.5)
    table = lag_table(kernel, SPACING, SHAPE)
    cells = torch.cartesian_prod(
        *[torch.arange(n) * h for n, h in zip(SHAPE, SPACING, strict=True)]
    ).double()
    dense = 1.7 * kernel.base(cells, cells)
    v = torch.randn(len(cells), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = ToeplitzGrid(table, torch.tensor(1.7, dtype=torch.float64))
    assert torch.allclose(grid.matmul(v), dense @ v, atol=1e-10)


def test_circulant_preconditioner_cuts_iterations() -> None:
    """On a complete 1-D grid with a short lengthscale the doubled-grid circulant is nearly
    the exact inverse: CG converges in a handful of steps instead of many."""
    from gpkernels.solvers import pcg

    n, ell, noise = 400, 8.0, 1e-3
    column = torch.exp(-torch.arange(n, dtype=torch.float64) / ell)
    grid = ToeplitzGrid(column, torch.tensor(1.0, dtype=torch.float64))
    observed = torch.arange(n)
    matrix = toeplitz(column) + noise * torch.eye(n, dtype=torch.float64)
    rhs = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pre = CirculantPreconditioner(grid, observed, noise)
    plain = pcg(lambda v: matrix @ v, rhs, None, 1e-8, 2000)
    conditioned = pcg(lambda v: matrix @ v, rhs, pre.solve, 1e-8, 2000)
    assert conditioned.converged and conditioned.iterations < plain.iterations / 4
    assert math.isclose(
        float(torch.linalg.solve(matrix, rhs).norm()),
        float(conditioned.solution.norm()),
        rel_tol=1e-6,
    )


def test_linear_trend_mean_matches_a_hand_built_oracle() -> None:
    """mean="linear": least-squares plane, then the GP on what it leaves; checked against
    the same steps done by hand with a dense Cholesky, and the trend extrapolates."""
    cells, x, y = gappy_grid(seed=3)
    y = y + 0.8 * x[:, 0] - 0.3 * x[:, 1]
    kiss = KissGP(
        isotropic(), GaussianLikelihood(0.05), cg_tol=1e-10, neighbours=len(y), mean="linear"
    )
    mean_k, var_k = kiss.condition(x, y).predict(cells)

    design = torch.cat([torch.ones(len(y), 1, dtype=torch.float64), x - x.mean(0)], 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    residual = y - design @ coef
    scale = float(residual.std())
    kernel = isotropic()
    k_xx = kernel(x, x) + 0.05 * torch.eye(len(y), dtype=torch.float64)
    k_cx = kernel(cells, x)
    factor = torch.linalg.cholesky(k_xx)
    alpha = torch.cholesky_solve(residual[:, None] / scale, factor)[:, 0]
    trend = coef[0] + (cells - x.mean(0)) @ coef[1:]
    mean_o = trend + scale * (k_cx @ alpha)
    v = torch.linalg.solve_triangular(factor, k_cx.T, upper=False)
    var_o = scale**2 * (1.7 - (v * v).sum(0))
    assert torch.allclose(mean_k, mean_o, atol=1e-7)
    assert torch.allclose(var_k, var_o, rtol=1e-8)
    assert kiss.hyperparameters()["trend"]["slopes"] == pytest.approx(coef[1:].tolist())


def test_isotropic_fit_recovers_the_microergodic_parameter_and_nugget() -> None:
    """A draw of 6 exp(-h / 50) + nugget 0.05 on a 64 x 64 grid of unit cells with 30% gaps
    (the Heaton twin's variance per cell of lag and nugget, on a smaller grid): the exact
    subsample fit that KissGP keeps recovers variance / lengthscale (what one realisation
    identifies) and the nugget."""
    n, variance, ell, nugget = 64, 6.0, 50.0, 0.05
    gen = torch.Generator().manual_seed(7)
    cells = torch.cartesian_prod(*[torch.arange(n, dtype=torch.float64)] * 2)
    cov = variance * torch.exp(-torch.cdist(cells, cells) / ell)
    field = torch.linalg.cholesky(cov) @ torch.randn(len(cells), generator=gen, dtype=torch.float64)
    y = 20.0 + field + nugget**0.5 * torch.randn(len(cells), generator=gen, dtype=torch.float64)
    kept = torch.rand(len(cells), generator=gen) < 0.7
    model = KissGP(Scale(Matern(0.5, dims=[0, 1], isotropic=True)), mean="linear", seed=1)
    model.fit(cells[kept], y[kept], max_iter=0, init_points=2000)
    learned = model.hyperparameters()
    microergodic = learned["kernel"]["outputscale"] / learned["kernel"]["base"]["lengthscale"][0]
    assert microergodic == pytest.approx(variance / ell, rel=0.15)
    assert learned["noise"] == pytest.approx(nugget, rel=0.3)


def _draw_with_cloud(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A draw of 2 exp(-h / 8) + noise 0.01 on 48 x 48 unit cells, a 12 x 16 cloud and 10%
    random gaps removed."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.cartesian_prod(*[torch.arange(48, dtype=torch.float64)] * 2)
    cov = 2.0 * torch.exp(-torch.cdist(cells, cells) / 8.0) + 0.01 * torch.eye(len(cells))
    y = torch.linalg.cholesky(cov) @ torch.randn(len(cells), generator=gen, dtype=torch.float64)
    cloud = (cells[:, 0] >= 5) & (cells[:, 0] < 17) & (cells[:, 1] >= 8) & (cells[:, 1] < 24)
    kept = ~cloud & (torch.rand(len(cells), generator=gen) > 0.1)
    return cells, kept, y


@pytest.mark.parametrize(("shrink", "low", "high"), [(1.0, 0.6, 1.6), (4.0, 2.4, 4.0)])
def test_calibrated_variance_scale_undoes_a_wrong_one(shrink: float, low: float, high: float):
    """With the true hyperparameters the conformal factor stays near 1; with the variances
    made 4x too small it restores most of them (the factor is capped at 4)."""
    cells, kept, y = _draw_with_cloud(seed=3)
    kernel = Scale(Matern(0.5, 8.0, dims=[0, 1], isotropic=True), 2.0 / shrink)
    model = KissGP(kernel, GaussianLikelihood(0.01 / shrink), normalize_y=False, neighbours=64)
    factor = model.calibrate_variance(cells[kept], y[kept])
    assert low < factor <= high
    assert float(model.kernel.outputscale) == pytest.approx(2.0 / shrink * factor)
    assert model.diagnostics.variance_calibration.startswith(f"x{factor:.3f}")


def test_calibration_is_skipped_when_the_hold_out_solve_fails() -> None:
    """Three CG iterations leave the hold-out means far from converged: no factor is taken
    from them (it would measure the solver), and the note says so with the residual."""
    cells, kept, y = _draw_with_cloud(seed=3)
    kernel = Scale(Matern(0.5, 8.0, dims=[0, 1], isotropic=True), 2.0 / 4.0)
    model = KissGP(kernel, GaussianLikelihood(0.01 / 4.0), normalize_y=False, max_cg_iter=3)
    with pytest.warns(NumericalWarning, match="did not converge"):
        factor = model.calibrate_variance(cells[kept], y[kept])
    assert factor == 1.0 and float(model.kernel.outputscale) == pytest.approx(0.5)
    assert model.diagnostics.variance_calibration.startswith("skipped: the hold-out solve")


def test_fit_with_calibration_on_a_separable_grid_reports_the_factor() -> None:
    cells, kept, y = _draw_with_cloud(seed=4)
    model = KissGP(Scale(Product([Matern(0.5, dims=[0]), Matern(0.5, dims=[1])])), calibrate=True)
    model.fit(cells[kept], y[kept], max_iter=0, init_points=500)
    assert "moved gaps" in model.diagnostics.variance_calibration
    mean, var = model.predict(cells[kept][:5])
    assert bool(torch.isfinite(mean).all() and (var > 0).all())
