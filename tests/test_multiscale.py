"""Multi-scale kernels (copies of one kernel at different ranges, summed): the on-grid solve
against dense float64 ExactGP, fits that start the copies apart and keep them apart, and
shared hyperparameters that round-trip."""

from __future__ import annotations

import torch

from gpkernels import ExactGP, GaussianLikelihood, KissGP, Matern, MultiScale, Product, Scale
from gpkernels.kernels import stationary_factors
from gpkernels.sampling import sample_separable_grid
from tests.test_stationary_grid import gappy_grid


def two_ranges(short: float = 0.8, long: float = 6.0) -> Scale:
    parts = [
        Scale(Product([Matern(1.5, ell, dims=[0]), Matern(1.5, ell, dims=[1])]), share)
        for ell, share in ((short, 0.3), (long, 0.7))
    ]
    return Scale(MultiScale(parts), 1.5)


def test_two_ranges_on_a_gappy_grid_match_dense_means_and_variances() -> None:
    cells, x, y = gappy_grid(seed=3)
    exact = ExactGP(two_ranges(), GaussianLikelihood(0.05)).condition(x, y)
    kiss = KissGP(two_ranges(), GaussianLikelihood(0.05), cg_tol=1e-10, neighbours=len(y))
    kiss.condition(x, y)
    (mean_e, var_e), (mean_k, var_k) = exact.predict(cells), kiss.predict(cells)
    assert "stationary" in kiss.diagnostics.path  # a sum of products has no Kronecker form
    assert kiss.diagnostics.solve.converged
    assert float((mean_k - mean_e).abs().max()) < 1e-7 * float(mean_e.abs().max())
    assert float(((var_k - var_e) / var_e).abs().max()) < 1e-8


def test_a_fit_starts_the_copies_apart_and_recovers_both_ranges() -> None:
    """A draw of short (0.8) plus long (6.0) Matérn 3/2: maximum likelihood from the data's
    start finds one copy near each range, though both copies begin as the same kernel."""
    shape, spacing = (40, 40), (0.5, 0.5)
    short, long = (
        sample_separable_grid(
            [Matern(1.5, ell), Matern(1.5, ell)],
            shape,
            spacing,
            generator=torch.Generator().manual_seed(seed),
        )
        for ell, seed in ((0.8, 0), (6.0, 1))
    )
    axes = [torch.arange(n, dtype=torch.float64) * h for n, h in zip(shape, spacing, strict=True)]
    cells = torch.cartesian_prod(*axes)
    y = (0.5 * short + 2.0 * long).reshape(-1)
    y = y + 0.05 * torch.randn(len(y), generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))[:900]
    model = ExactGP(two_ranges(1.0, 1.0)).fit(cells[keep], y[keep], max_iter=200)
    found = sorted(float(f.lengthscale.detach()) for f in stationary_factors(model.kernel))
    assert found[0] < 1.6 and found[-1] > 3.0, found  # one short pair, one long pair


def test_shared_hyperparameters_round_trip_through_a_second_model() -> None:
    cells, x, y = gappy_grid(seed=4)
    fitted = ExactGP(two_ranges()).fit(x[:300], y[:300], max_iter=30)
    values = fitted.shared_hyperparameters()
    assert len(values["lengthscales"]) == 4 and len(values["shares"]) == 2
    assert values["columns"] == [[0], [1], [0], [1]]
    other = ExactGP(two_ranges(2.0, 2.0))
    other.set_shared_hyperparameters(values, x, y)
    other.condition(x, y)
    again = other.shared_hyperparameters()
    for key in ("lengthscales", "shares"):
        torch.testing.assert_close(torch.tensor(again[key]), torch.tensor(values[key]))
    for key in ("outputscale", "noise"):
        assert abs(again[key] - values[key]) < 1e-9 * values[key]


def test_shared_values_at_their_floors_are_set_just_above_them() -> None:
    """A fit can leave a lengthscale or an unused part's share at its floor; read back
    with rounding it is a hair below, and setting it must not fail."""
    cells, x, y = gappy_grid(seed=5)
    model = ExactGP(two_ranges())
    values = {
        "lengthscales": [0.9999999974e-6, 1.0, 2.0, 3.0],
        "columns": [[0], [1], [0], [1]],
        "shares": [1.0, 0.99999999e-8],
        "outputscale": 1.0,
        "noise": 1e-12,
    }
    model.set_shared_hyperparameters(values, x, y)
    first = stationary_factors(model.kernel)[0]
    assert float(first.lengthscale) > first.lengthscale_param.floor
