"""Structured operators and Krylov solvers against dense float64 algebra."""

from __future__ import annotations

import pytest
import torch

from gpkernels import Matern
from gpkernels.interpolation import Interpolation
from gpkernels.ongrid import ObservedKronecker
from gpkernels.preconditioners import CirculantPreconditioner
from gpkernels.solvers import lanczos, pcg, rademacher, slq_trace_log
from gpkernels.structured import (
    DENSE_AXIS_LIMIT,
    Kronecker,
    ObservedGrid,
    StructuredOperator,
    ToeplitzFactor,
    ToeplitzFFT,
    ToeplitzGrid,
    kron_matmul,
    toeplitz,
)

GEN = torch.Generator().manual_seed(0)


def column(n: int, lengthscale: float) -> torch.Tensor:
    lags = torch.arange(n, dtype=torch.float64)[:, None]
    with torch.no_grad():
        return Matern(1.5, lengthscale)(lags, lags[:1])[:, 0]


def test_toeplitz_fft_matmul_equals_dense() -> None:
    col = column(300, 7.0)
    v = torch.randn(300, 3, generator=GEN, dtype=torch.float64)
    torch.testing.assert_close(ToeplitzFFT(col).matmul(v), toeplitz(col) @ v)


def test_kronecker_matmul_and_eigendecomposition_equal_dense() -> None:
    cols = [column(5, 2.0), column(7, 3.0), column(4, 1.0)]
    dense = torch.kron(torch.kron(toeplitz(cols[0]), toeplitz(cols[1])), toeplitz(cols[2]))
    factors = [toeplitz(c) for c in cols]
    v = torch.randn(140, 2, generator=GEN, dtype=torch.float64)
    torch.testing.assert_close(kron_matmul(factors, v, (5, 7, 4)), dense @ v)
    eig = Kronecker(cols, torch.tensor(1.0, dtype=torch.float64)).eig()
    spectrum = 1.0 / (eig.eigenvalues() + 0.1)
    inverse = torch.linalg.inv(dense + 0.1 * torch.eye(140, dtype=torch.float64))
    torch.testing.assert_close(eig.apply(v, spectrum), inverse @ v)
    torch.testing.assert_close(eig.diagonal(spectrum), inverse.diagonal())


def test_cubic_interpolation_reproduces_quadratics() -> None:
    """Keys' cubic convolution is exact for polynomials up to degree 2."""
    x = torch.rand(50, 2, generator=GEN, dtype=torch.float64) * 8 + 1
    interp = Interpolation.build(x, (0.0, 0.0), (0.5, 0.5), (22, 22))
    grid = torch.cartesian_prod(torch.arange(22) * 0.5, torch.arange(22) * 0.5).double()

    def quadratic(p: torch.Tensor) -> torch.Tensor:
        return (1 + 2 * p[:, 0] - p[:, 1] + 0.3 * p[:, 0] ** 2 - 0.2 * p[:, 0] * p[:, 1])[:, None]

    torch.testing.assert_close(interp.matmul(quadratic(grid)), quadratic(x))
    dense = torch.zeros(50, 22 * 22, dtype=torch.float64)
    dense.scatter_add_(1, interp.index, interp.weight)
    u = torch.randn(50, 1, generator=GEN, dtype=torch.float64)
    torch.testing.assert_close(interp.transpose_matmul(u), dense.T @ u)
    torch.testing.assert_close(interp.gram(torch.float64), dense.T @ dense)


def spd(n: int) -> torch.Tensor:
    a = torch.randn(n, n, generator=GEN, dtype=torch.float64)
    return a @ a.T / n + 0.5 * torch.eye(n, dtype=torch.float64)


def test_batched_pcg_solves_and_gives_the_lanczos_tridiagonal() -> None:
    a = spd(60)
    b = torch.randn(60, 4, generator=GEN, dtype=torch.float64)
    jacobi = a.diagonal()[:, None]
    result = pcg(lambda v: a @ v, b, lambda v: v / jacobi, tol=1e-10, max_iter=200)
    assert result.converged and result.iterations <= 60
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b))
    # Unpreconditioned CG builds the same tridiagonal as Lanczos from the same start vector.
    plain = pcg(lambda v: a @ v, b[:, :1], tol=1e-12, max_iter=200)
    from_cg = plain.lanczos_tridiagonal(0)[:10, :10]
    diag, off = lanczos(lambda v: a @ v, b[:, :1], steps=10)
    direct = torch.diag(diag[0]) + torch.diag(off[0], 1) + torch.diag(off[0], -1)
    torch.testing.assert_close(from_cg, direct, rtol=1e-8, atol=1e-10)


def test_lanczos_quadrature_estimates_log_determinant() -> None:
    a = spd(200)
    exact = torch.linalg.slogdet(a)[1]
    probes = rademacher(200, 400, torch.Generator().manual_seed(1), a)
    estimate = slq_trace_log(lambda v: a @ v, probes, steps=25)
    assert abs(float(estimate - exact)) < 0.02 * abs(float(exact))
    diag, off = lanczos(lambda v: a @ v, probes[:, :2], steps=10)
    assert diag.shape == (2, 10) and off.shape == (2, 9)


def dense_of(op) -> torch.Tensor:  # noqa: ANN001
    """An operator's dense matrix, column by column through its matmul."""
    return op.matmul(torch.eye(op.size, dtype=torch.float64))


@pytest.mark.parametrize("n", [300, 2100])
def test_toeplitz_factor_is_dense_or_fft_inside_and_exact_either_way(n: int) -> None:
    col = column(n, 40.0)
    factor = ToeplitzFactor(col)
    assert (factor._fft is None) == (n <= DENSE_AXIS_LIMIT)
    v = torch.randn(n, 2, generator=GEN, dtype=torch.float64)
    dense = toeplitz(col)
    torch.testing.assert_close(factor.matmul(v), dense @ v)
    torch.testing.assert_close(factor.diagonal(), dense.diagonal())
    values, vectors = factor.eigh()  # what the Lanczos root and the gap solve need
    top = values.argsort(descending=True)[:5]
    torch.testing.assert_close(dense @ vectors[:, top], vectors[:, top] * values[top])


def test_kronecker_solve_and_logdet_are_exact_and_the_defaults_agree() -> None:
    """The Kronecker overrides (eigendecomposition) against dense algebra, and the protocol's
    defaults (CG, stochastic Lanczos quadrature) reaching the same values."""
    cols = [column(6, 2.0), column(9, 3.0)]
    grid = Kronecker(cols, torch.tensor(1.5, dtype=torch.float64)).shifted(
        torch.tensor(0.2, dtype=torch.float64)
    )
    dense = 1.5 * torch.kron(toeplitz(cols[0]), toeplitz(cols[1])) + 0.2 * torch.eye(54)
    torch.testing.assert_close(dense_of(grid), dense.double())
    torch.testing.assert_close(grid.diagonal(), dense.diagonal().double())
    rhs = torch.randn(54, 3, generator=GEN, dtype=torch.float64)
    solved, report = grid.solve(rhs)
    torch.testing.assert_close(solved, torch.linalg.solve(dense.double(), rhs))
    assert report.iterations == 0 and report.converged
    exact = float(torch.linalg.slogdet(dense.double())[1])
    assert float(grid.logdet()) == pytest.approx(exact, rel=1e-7)
    by_cg, cg_report = StructuredOperator.solve(grid, rhs, tol=1e-12, max_iter=200)
    torch.testing.assert_close(by_cg, solved, rtol=1e-9, atol=1e-10)
    assert cg_report.iterations > 0 and cg_report.relative_residual < 1e-12
    probes = rademacher(54, 500, torch.Generator().manual_seed(2), rhs)
    estimate = float(StructuredOperator.logdet(grid, probes, steps=30))
    assert estimate == pytest.approx(exact, rel=3e-2)


def test_observed_grid_solves_by_the_gap_complement_and_by_circulant_cg() -> None:
    """S K S^T + noise I on a 12 x 15 grid with gaps: the Kronecker one's gap-complement
    solve and the Toeplitz one's default (circulant-preconditioned CG) against dense."""
    shape = (12, 15)
    cols = [column(12, 2.0), column(15, 3.0)]
    observed = torch.nonzero(torch.rand(180, generator=GEN) < 0.7)[:, 0]
    scale, noise = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    full = 1.3 * torch.kron(toeplitz(cols[0]), toeplitz(cols[1]))
    dense = full[observed][:, observed] + 0.05 * torch.eye(len(observed), dtype=torch.float64)
    rhs = torch.randn(len(observed), 1, generator=GEN, dtype=torch.float64)
    expected = torch.linalg.solve(dense, rhs)
    kron = ObservedKronecker(Kronecker(cols, scale), observed, noise)
    torch.testing.assert_close(dense_of(kron), dense)
    torch.testing.assert_close(kron.diagonal(), dense.diagonal())
    solved, report = kron.solve(rhs, tol=1e-10)
    torch.testing.assert_close(solved, expected, rtol=1e-8, atol=1e-10)
    assert report.converged and report.refinements >= 1
    table = torch.outer(cols[0], cols[1])
    fft = ObservedGrid(ToeplitzGrid(table, scale), observed, noise)
    torch.testing.assert_close(dense_of(fft), dense)
    preconditioner = CirculantPreconditioner(fft.grid, observed, 0.05)
    solved, report = fft.solve(rhs, preconditioner, tol=1e-10)
    torch.testing.assert_close(solved, expected, rtol=1e-8, atol=1e-10)
    assert report.converged and report.iterations > 0
    assert fft.grid.grid_shape == shape


def test_observed_grid_moves_to_another_dtype_for_either_grid() -> None:
    """ObservedGrid.to works for a ToeplitzGrid as for a Kronecker grid (it failed for the
    Toeplitz one), and the float32 copy multiplies like the float64 original."""
    cols = [column(8, 2.0), column(10, 3.0)]
    observed = torch.nonzero(torch.rand(80, generator=GEN) < 0.6)[:, 0]
    scale, noise = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    v = torch.randn(len(observed), 2, generator=GEN, dtype=torch.float64)
    for grid in (ToeplitzGrid(torch.outer(cols[0], cols[1]), scale), Kronecker(cols, scale)):
        op = ObservedGrid(grid, observed, noise)
        single = op.to(torch.float32)
        assert single.dtype == torch.float32 and type(single.grid) is type(grid)
        out = single.matmul(v.float())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), op.matmul(v), rtol=1e-5, atol=1e-5)
