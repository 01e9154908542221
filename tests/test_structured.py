"""Structured operators and Krylov solvers against dense float64 algebra."""

from __future__ import annotations

import torch

from gpkernels import Matern
from gpkernels.interpolation import Interpolation
from gpkernels.solvers import lanczos, pcg, rademacher, slq_trace_log
from gpkernels.structured import KroneckerEig, ToeplitzFFT, kron_matmul, toeplitz

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
    eig = KroneckerEig.of(factors)
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
