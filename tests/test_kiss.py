"""KissGP against dense float64 ExactGP (the oracle) on the same data and hyperparameters."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gpkernels import (
    RBF,
    ExactGP,
    GaussianLikelihood,
    KissGP,
    Lattice,
    Matern,
    NumericalWarning,
    Product,
    Scale,
    separable,
)
from gpkernels.interpolation import Interpolation
from gpkernels.kernels import Periodic, Sum, Wrapped
from gpkernels.kiss import interpolation_lattice
from gpkernels.local import LocalKriging
from gpkernels.structured import toeplitz
from tests.conftest import DEVICES

SHAPE = (30, 40)
SPACING = (0.5, 0.5)


def grid_data(seed: int = 0, keep: float = 0.7):
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float64) * h for n, h in zip(SHAPE, SPACING, strict=True)]
    cells = torch.cartesian_prod(*axes)
    field = torch.sin(cells[:, 0] / 2) + torch.cos(cells[:, 1] / 3)
    y = field + 0.1 * torch.randn(len(field), generator=gen, dtype=torch.float64)
    kept = torch.rand(len(field), generator=gen) < keep
    return cells, cells[kept], y[kept]


def kernel() -> Scale:
    return Scale(Product([Matern(1.5, 2.0, dims=[0]), Matern(1.5, 3.0, dims=[1])]), 1.3)


def pair(**kiss_options):
    exact = ExactGP(kernel(), GaussianLikelihood(0.05))
    kiss = KissGP(kernel(), GaussianLikelihood(0.05), **kiss_options)
    return exact, kiss


def lml_and_grad(model, x, y):
    lml = model.log_marginal_likelihood(x, y)
    return lml.detach(), torch.autograd.grad(lml, list(model.parameters()))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_on_grid_likelihood_and_gradient_match_dense() -> None:
    _, x, y = grid_data()
    exact, kiss = pair()
    lml_e, grad_e = lml_and_grad(exact, x, y)
    lml_k, grad_k = lml_and_grad(kiss, x, y)
    assert float(lml_k) == pytest.approx(float(lml_e), rel=1e-3)
    for a, b in zip(grad_k, grad_e, strict=True):
        assert relative(a, b) < 1e-2
    assert kiss.diagnostics.path.startswith("on-grid")
    assert kiss.diagnostics.solve.converged is True
    assert kiss.diagnostics.solve.relative_residual < 1e-5


def test_stochastic_gap_logdet_error_shrinks_with_probes() -> None:
    _, x, y = grid_data()
    exact, _ = pair()
    lml_e, grad_e = lml_and_grad(exact, x, y)
    errors = {}
    for probes in (4, 256):
        errs = []
        for seed in range(3):
            kiss = KissGP(
                kernel(), GaussianLikelihood(0.05), num_probes=probes, exact_gap_limit=0, seed=seed
            )
            lml_k, grad_k = lml_and_grad(kiss, x, y)
            errs.append(abs(float(lml_k - lml_e)))
            if probes == 256:
                for a, b in zip(grad_k, grad_e, strict=True):
                    assert relative(a, b) < 1e-2
        errors[probes] = sum(errs) / len(errs)
        assert "Lanczos quadrature" in kiss.diagnostics.log_det_gaps
    assert errors[256] < errors[4] / 2
    assert errors[256] / abs(float(lml_e)) < 2e-2


def test_on_grid_predictions_match_dense() -> None:
    cells, x, y = grid_data()
    exact, kiss = pair()
    mean_e, var_e = exact.condition(x, y).predict(cells)
    mean_k, var_k = kiss.condition(x, y).predict(cells)
    assert relative(mean_k, mean_e) < 1e-5
    assert float(((var_k - var_e).abs() / var_e).max()) < 1e-3
    assert bool((var_k >= var_e * (1 - 1e-6)).all())  # local kriging never understates
    full = KissGP(kernel(), GaussianLikelihood(0.05), neighbours=len(y)).condition(x, y)
    _, var_full = full.predict(cells)
    assert float(((var_full - var_e).abs() / var_e).max()) < 1e-6


def test_complete_grid_variances_are_exact() -> None:
    cells, _, _ = grid_data()
    y = torch.sin(cells[:, 0]) * torch.cos(cells[:, 1] / 2)
    exact, kiss = pair()
    mean_e, var_e = exact.condition(cells, y).predict(cells)
    mean_k, var_k = kiss.condition(cells, y).predict(cells)
    assert relative(mean_k, mean_e) < 1e-5
    assert relative(var_k, var_e) < 1e-8
    assert "exact" in kiss.diagnostics.variance


def test_local_variances_in_3d_are_conservative_and_converge() -> None:
    """Dense noisy 3-D data is the hard case for local kriging: errors shrink as the
    neighbourhood grows, variances are never understated, and all observations give exact."""
    gen = torch.Generator().manual_seed(0)
    cells = torch.cartesian_prod(*[torch.arange(n, dtype=torch.float64) for n in (8, 12, 12)])
    y = torch.sin(cells[:, 0] / 3) + torch.cos(cells[:, 1] / 5) + torch.sin(cells[:, 2] / 4)
    y = y + 0.1 * torch.randn(len(y), generator=gen, dtype=torch.float64)
    kept = torch.rand(len(y), generator=gen) < 0.7
    x, y = cells[kept], y[kept]

    def make() -> Scale:
        return Scale(Product([Matern(1.5, ell, dims=[i]) for i, ell in enumerate((3, 6, 5))]))

    _, var_e = ExactGP(make(), GaussianLikelihood(0.01)).condition(x, y).predict(cells)
    errors = []
    for neighbours in (64, 256, len(y)):
        kiss = KissGP(make(), GaussianLikelihood(0.01), neighbours=neighbours).condition(x, y)
        _, var_k = kiss.predict(cells)
        assert bool((var_k >= var_e * (1 - 1e-9)).all())
        errors.append(float(((var_k - var_e) / var_e).mean()))
    assert errors[0] > 4 * errors[1]
    assert errors[1] < 0.05
    assert errors[2] < 1e-9


def test_forecast_variances_see_earlier_cycles_of_a_periodic_kernel() -> None:
    """A seasonal series observed for three cycles, predicted one cycle ahead: with the
    period known, local kriging conditions on the same season of earlier cycles and lands
    near the exact variance; neighbours picked by distance alone overstate it far more."""
    steps, period = 48, 12
    cells = torch.cartesian_prod(*[torch.arange(n, dtype=torch.float64) for n in (steps, 5, 5)])
    gen = torch.Generator().manual_seed(1)
    y = torch.sin(2 * torch.pi * cells[:, 0] / period) + 0.2 * torch.randn(
        len(cells), generator=gen, dtype=torch.float64
    )
    past = cells[:, 0] < 36
    future = cells[~past]

    def make() -> Scale:
        time = Sum([Matern(0.5, 2.0, dims=[0]), Scale(Periodic(float(period), 1.0, dim=0), 1.0)])
        return Scale(Product([time, Matern(1.5, 3.0, dims=[1]), Matern(1.5, 3.0, dims=[2])]))

    lattice = Lattice((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (steps, 5, 5))
    _, var_e = (
        ExactGP(make(), GaussianLikelihood(0.05)).condition(cells[past], y[past]).predict(future)
    )
    kiss = KissGP(make(), GaussianLikelihood(0.05), lattice=lattice, neighbours=64)
    kiss.condition(cells[past], y[past])
    _, var_k = kiss.predict(future)
    assert bool((var_k >= var_e * (1 - 1e-9)).all())
    seasonal = float(((var_k - var_e) / var_e).mean())
    nearest = LocalKriging(replace(kiss.posterior.kriging.inputs, period_cells=None))
    index = lattice.cell_index(future)
    by_distance = float(((nearest.variances(index)[index] - var_e) / var_e).mean())
    assert seasonal < 0.1 and by_distance > 3 * seasonal


def test_interpolated_means_within_one_percent_of_exact() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1500, 2, generator=gen, dtype=torch.float64) * 10
    y = torch.sin(x[:, 0]) * torch.cos(x[:, 1] / 2) + 0.1 * torch.randn(
        1500, generator=gen, dtype=torch.float64
    )
    lengthscale = 2.0
    cells = round(11 / (lengthscale / 4)) + 5  # spacing a quarter of the lengthscale
    make = lambda: Scale(Product([RBF(lengthscale, dims=[0]), RBF(lengthscale, dims=[1])]))  # noqa: E731
    exact = ExactGP(make(), GaussianLikelihood(0.01)).condition(x, y)
    kiss = KissGP(make(), GaussianLikelihood(0.01), grid_shape=(cells, cells)).condition(x, y)
    x_test = torch.rand(400, 2, generator=gen, dtype=torch.float64) * 10
    mean_e, var_e = exact.predict(x_test)
    mean_k, var_k = kiss.predict(x_test)
    rms = torch.sqrt(torch.mean((mean_k - mean_e) ** 2)) / torch.sqrt(torch.mean(mean_e**2))
    assert float(rms) < 0.01
    assert kiss.diagnostics.path.startswith("interpolated")
    # The dense path is the SKI model solved exactly: against the n x n float64 oracle.
    mean_o, var_o = dense_ski_posterior(kiss, x, y, x_test, interpolation_lattice(x, (cells,) * 2))
    torch.testing.assert_close(mean_k, mean_o, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(var_k, var_o, rtol=1e-7, atol=1e-10)


def dense_ski_posterior(
    model: KissGP, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, lattice: Lattice
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior of the SKI model y = W u + noise, u ~ N(0, K_UU), by dense n x n algebra in
    y's units (y standardised to zero mean, unit variance as the model does)."""

    def dense_weights(points: torch.Tensor) -> torch.Tensor:
        interp = Interpolation.build(points, lattice.starts, lattice.spacings, lattice.shape)
        w = torch.zeros(points.shape[0], lattice.size, dtype=torch.float64)
        return w.scatter_add_(1, interp.index, interp.weight)

    with torch.no_grad():
        axes = [
            s + h * torch.arange(n, dtype=torch.float64)
            for s, h, n in zip(lattice.starts, lattice.spacings, lattice.shape, strict=True)
        ]
        nodes = torch.cartesian_prod(*axes).reshape(lattice.size, len(axes))
        k_uu = model.kernel(nodes, nodes)
        noise = float(model.likelihood.noise)
    w, w_test = dense_weights(x), dense_weights(x_test)
    centre, scale = float(y.mean()), float(y.std())
    k_hat = w @ k_uu @ w.T + noise * torch.eye(x.shape[0], dtype=torch.float64)
    cross = w_test @ k_uu @ w.T
    factor = torch.linalg.cholesky(k_hat)
    alpha = torch.cholesky_solve(((y - centre) / scale)[:, None], factor)[:, 0]
    v = torch.linalg.solve_triangular(factor, cross.T, upper=False)
    prior = ((w_test @ k_uu) * w_test).sum(1)
    return centre + scale * (cross @ alpha), scale**2 * (prior - (v * v).sum(0))


@pytest.mark.parametrize("device", DEVICES)
def test_fit_on_grid_reaches_the_exact_optimum(device: str) -> None:
    _, x, y = grid_data(seed=2)
    exact = ExactGP(separable(["matern32", "matern32"]))
    exact.fit(x, y)
    kiss = KissGP(separable(["matern32", "matern32"]))
    report = kiss.fit(x.to(device), y.to(device), max_iter=50).fit_report
    assert report.iterations > 0
    reference = ExactGP(separable(["matern32", "matern32"]), normalize_y=True)
    reference.load_state_dict({k: v.cpu() for k, v in kiss.state_dict().items()})
    at_kiss = float(reference.log_marginal_likelihood(x, y))
    at_exact = float(exact.log_marginal_likelihood(x, y))
    # The on-grid default (L-BFGS on the whole-grid likelihood) ends within a few
    # thousandths of the dense L-BFGS optimum.
    assert at_kiss >= at_exact - 3e-3 * abs(at_exact)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_tracks_float64(device: str) -> None:
    cells, x, y = grid_data()
    results = {}
    for dtype in (torch.float32, torch.float64):
        kiss = KissGP(kernel(), GaussianLikelihood(0.05))
        kiss.condition(x.to(device, dtype), y.to(device, dtype))
        mean, var = kiss.predict(cells.to(device, dtype))
        assert mean.dtype == dtype and mean.device.type == device
        results[dtype] = (mean.double().cpu(), var.double().cpu())
    assert relative(results[torch.float32][0], results[torch.float64][0]) < 2e-3
    assert relative(results[torch.float32][1], results[torch.float64][1]) < 2e-2


def test_unconverged_cg_is_reported_with_numbers() -> None:
    _, x, y = grid_data()
    kiss = KissGP(kernel(), GaussianLikelihood(0.05), max_cg_iter=2)
    with pytest.warns(NumericalWarning, match=r"did not converge: 2 iterations, worst relative"):
        kiss.condition(x, y)
    solve = kiss.diagnostics.solve
    assert solve.converged is False
    assert solve.iterations == 2 * solve.refinements  # every refinement round hit the cap


def test_non_separable_kernel_is_refused_off_the_grid() -> None:
    """Isotropic kernels need gridded inputs (no Kronecker structure to interpolate with)."""
    x = torch.rand(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="gridded inputs"):
        KissGP(Scale(Matern(1.5, 1.0, isotropic=True))).condition(x, x.sum(1))


def test_time_kernel_sum_with_periodic_matches_dense() -> None:
    """Matérn 3/2 + periodic along time, on a gappy daily series (1-D grid)."""
    gen = torch.Generator().manual_seed(5)
    t = torch.arange(400, dtype=torch.float64)[:, None]
    y = torch.sin(2 * torch.pi * t[:, 0] / 50) + 0.2 * torch.randn(
        400, generator=gen, dtype=torch.float64
    )
    kept = torch.rand(400, generator=gen) < 0.7
    make = lambda: Scale(Product([Matern(1.5, 20.0, dims=[0]) + Periodic(50.0, 1.0, dim=0)]))  # noqa: E731
    exact = ExactGP(make(), GaussianLikelihood(0.05))
    kiss = KissGP(make(), GaussianLikelihood(0.05))
    assert float(kiss.log_marginal_likelihood(t[kept], y[kept])) == pytest.approx(
        float(exact.log_marginal_likelihood(t[kept], y[kept])), rel=1e-6
    )
    mean_e, _ = exact.condition(t[kept], y[kept]).predict(t)
    mean_k, _ = kiss.condition(t[kept], y[kept]).predict(t)
    assert relative(mean_k, mean_e) < 1e-5


def test_wrapped_longitude_is_circulant_and_positive_definite() -> None:
    lon = torch.arange(0, 360, 10.0, dtype=torch.float64)[:, None]
    kernel = Wrapped(Matern(1.5, 60.0, dims=[0]), period=360.0)
    with torch.no_grad():
        k = kernel(lon, lon)
        column = kernel(lon, lon[:1])[:, 0]
    rolled = torch.stack([torch.roll(column, i) for i in range(len(column))], dim=1)
    torch.testing.assert_close(k, rolled)
    assert float(torch.linalg.eigvalsh(k).min()) > 0
    torch.testing.assert_close(toeplitz(column), k)  # Toeplitz with a periodic column: circulant


def test_calibrate_variance_takes_the_prior_mean_from_the_kept_cells_only() -> None:
    """The variance factor of calibrate_variance with a linear-trend prior mean, against a
    hand-computed oracle: the cells under the moved gaps (the missing-cell mask rolled by
    half the grid) are hidden, the trend is the least-squares plane of the kept cells only
    (no hidden cell informs its own prediction), the scale that of all the data, and the
    hidden cells are scored by a dense float64 ExactGP conditioned on the kept ones."""
    shape = (24, 30)
    gen = torch.Generator().manual_seed(11)
    cells = torch.cartesian_prod(*[torch.arange(n, dtype=torch.float64) for n in shape])
    make = lambda: Scale(Product([Matern(1.5, 4.0, dims=[0]), Matern(1.5, 4.0, dims=[1])]), 1.0)  # noqa: E731
    with torch.no_grad():
        cov = make()(cells, cells) + 0.05 * torch.eye(len(cells), dtype=torch.float64)
    draw = torch.linalg.cholesky(cov) @ torch.randn(len(cells), generator=gen, dtype=torch.float64)
    y_all = draw + 0.5 * cells[:, 0] - 0.3 * cells[:, 1]
    cloud = (cells[:, 0] >= 3) & (cells[:, 0] < 11) & (cells[:, 1] >= 4) & (cells[:, 1] < 16)
    observed = ~cloud & (torch.rand(len(cells), generator=gen) > 0.15)
    x, y = cells[observed], y_all[observed]
    moved = torch.roll(~observed.reshape(shape), [n // 2 for n in shape], [0, 1]).reshape(-1)
    hidden = moved[observed]
    assert 100 <= int(hidden.sum()) <= 2000 and int((~hidden).sum()) >= 100

    def plane(rows: torch.Tensor) -> torch.Tensor:
        """The least-squares plane through (x, y)[rows], evaluated at every x."""
        design = torch.cat([torch.ones_like(x[:, :1]), x], 1)
        coef = torch.linalg.lstsq(design[rows], y[rows, None]).solution[:, 0]
        return design @ coef

    scale = float((y - plane(torch.ones_like(hidden))).std())
    z = (y - plane(~hidden)) / scale
    oracle = ExactGP(make(), GaussianLikelihood(0.05), normalize_y=False)
    mean, var = oracle.condition(x[~hidden], z[~hidden]).predict(x[hidden])
    score = (z[hidden] - mean).abs() / (var + 0.05).sqrt()
    expected = (float(torch.quantile(score, 0.95)) / 1.959964) ** 2
    assert 1.0 < expected < 4.0  # not at a cap, where a wrong mean could hide

    model = KissGP(make(), GaussianLikelihood(0.05), mean="linear", neighbours=1024, cg_tol=1e-12)
    factor = model.calibrate_variance(x, y)
    assert factor == pytest.approx(expected, rel=1e-6)
