"""Krylov solvers: batched preconditioned CG with its Lanczos coefficients, and Lanczos quadrature.

Everything takes a `matmul(v)` callable on blocks of vectors (n, b), so the same
code runs over dense, Kronecker, selected-grid or interpolated operators.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpkernels.diagnostics import SolveReport
from gpkernels.linalg import NumericalWarning

MatMul = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CGResult:
    """Solutions of A X = B and how the solve went, column by column."""

    solution: torch.Tensor
    iterations: int
    relative_residual: torch.Tensor  # per right-hand side, at the end
    converged: bool
    alphas: torch.Tensor  # (iterations, b) CG step sizes
    betas: torch.Tensor  # (iterations, b) CG direction updates

    def lanczos_tridiagonal(self, column: int) -> torch.Tensor:
        """The Lanczos tridiagonal matrix CG built implicitly for one right-hand side."""
        a, b = self.alphas[:, column], self.betas[:, column]
        k = int((a != 0).sum())
        diag = 1.0 / a[:k]
        diag[1:] = diag[1:] + b[: k - 1] / a[: k - 1]
        off = torch.sqrt(b[: k - 1].clamp_min(0.0)) / a[: k - 1]
        return torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)

    def report(self) -> SolveReport:
        """The solve as a value: iterations, worst final relative residual, convergence."""
        return SolveReport(self.iterations, float(self.relative_residual.max()), self.converged)


def pcg(
    matmul: MatMul,
    rhs: torch.Tensor,
    precondition: MatMul | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    x0: torch.Tensor | None = None,
    label: str = "CG",
    done: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check_every: int = 10,
) -> CGResult:
    """Solve A X = B for all columns of B at once by preconditioned conjugate gradients.

    Stops when every column's residual norm is below `tol` times its right-hand side's
    norm, or, with `done` (residuals -> a bool per column, checked every `check_every`
    iterations), once `done` says a column has what its caller needs. A solve that stops
    at `max_iter` first raises a `NumericalWarning` that gives the iterations and the worst
    relative residual, and reports `converged=False`.
    """
    precondition = precondition or (lambda v: v)
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - matmul(x) if x0 is not None else rhs.clone()
    rhs_norm = rhs.norm(dim=0).clamp_min(torch.finfo(rhs.dtype).tiny)
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    alphas, betas = [], []
    iterations = 0
    active = (r.norm(dim=0) / rhs_norm) > tol
    while bool(active.any()) and iterations < max_iter:
        ap = matmul(p)
        p_ap = (p * ap).sum(0)
        alpha = torch.where(active, rz / p_ap, torch.zeros_like(rz))
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(active, rz_new / rz, torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        alphas.append(alpha)
        betas.append(beta)
        iterations += 1
        active = active & ((r.norm(dim=0) / rhs_norm) > tol)
        if done is not None and iterations % check_every == 0:
            active = active & ~done(r)
    relative = r.norm(dim=0) / rhs_norm
    converged = not bool(active.any())
    if done is not None and not converged:
        converged = bool(done(r).all())
    if not converged:
        target = "its caller's target" if done is not None else f"tolerance {tol:.0e}"
        warnings.warn(
            f"{label} did not converge: {iterations} iterations, worst relative residual "
            f"{float(relative.max()):.2e}, short of {target}",
            NumericalWarning,
            stacklevel=2,
        )
    empty = rhs.new_zeros(0, rhs.shape[1])
    return CGResult(
        x,
        iterations,
        relative,
        converged,
        torch.stack(alphas) if alphas else empty,
        torch.stack(betas) if betas else empty,
    )


def lanczos(matmul: MatMul, start: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lanczos from the columns of `start` (n, b): diagonals (b, k), off-diagonals (b, k-1).

    Plain three-term recurrence: for quadrature, lost orthogonality only duplicates
    converged Ritz values with small weights, and no basis has to be stored.
    """
    steps = min(steps, start.shape[0])
    q_prev = torch.zeros_like(start)
    q = start / start.norm(dim=0)
    beta = start.new_zeros(start.shape[1])
    diag, off = [], []
    for step in range(steps):
        w = matmul(q) - beta * q_prev
        a = (q * w).sum(0)
        diag.append(a)
        if step == steps - 1:
            break
        w = w - a * q
        beta = w.norm(dim=0)
        if bool((beta <= 1e-12 * a.abs()).any()):  # a Krylov space is exhausted: stop here
            break
        off.append(beta)
        q_prev, q = q, w / beta
    return torch.stack(diag, 1), (
        torch.stack(off, 1) if off else start.new_zeros(start.shape[1], 0)
    )


def lanczos_basis(
    matmul: MatMul, start: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fully reorthogonalised Lanczos from one vector (n,): basis Q (n, k), tridiagonal T (k, k).

    A ~ Q T Q^T on the Krylov space; with k = n (and exact arithmetic) it is A itself.
    Stops early when the Krylov space is exhausted.
    """
    steps = min(steps, start.shape[0])
    basis = start.new_zeros(start.shape[0], steps)
    basis[:, 0] = start / start.norm()
    diag, off = [], []
    for step in range(steps):
        q = basis[:, step]
        w = matmul(q[:, None])[:, 0]
        diag.append(w @ q)
        for _ in range(2):  # Gram-Schmidt twice keeps the basis orthogonal to working precision
            kept = basis[:, : step + 1]
            w = w - kept @ (kept.T @ w)
        beta = w.norm()
        if step == steps - 1 or float(beta) <= 1e-10 * float(diag[0].abs()):
            break
        off.append(beta)
        basis[:, step + 1] = w / beta
    k = len(diag)
    tridiagonal = torch.diag(torch.stack(diag))
    if k > 1:
        offs = torch.stack(off[: k - 1])
        tridiagonal = tridiagonal + torch.diag(offs, 1) + torch.diag(offs, -1)
    return basis[:, :k], tridiagonal


def gauss_quadrature_log(tridiagonal: torch.Tensor) -> torch.Tensor:
    """e_1^T log(T) e_1 of one Lanczos tridiagonal: the quadrature weight of a unit start vector."""
    theta, vectors = torch.linalg.eigh(tridiagonal)
    tiny = torch.finfo(theta.dtype).tiny
    return (vectors[0, :] ** 2 * theta.clamp_min(tiny).log()).sum()


def slq_trace_log(matmul: MatMul, probes: torch.Tensor, steps: int) -> torch.Tensor:
    """Stochastic Lanczos quadrature estimate of tr(log A) from Rademacher `probes` (n, t).

    For each probe, z^T log(A) z ~ ||z||^2 sum_j tau_j^2 log(theta_j) over the Ritz
    pairs (theta_j, tau_j) of its Lanczos tridiagonal; the estimate averages them.
    """
    diag, off = lanczos(matmul, probes, steps)
    tridiagonal = torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, vectors = torch.linalg.eigh(tridiagonal)
    weights = vectors[:, 0, :] ** 2
    tiny = torch.finfo(theta.dtype).tiny
    per_probe = (weights * theta.clamp_min(tiny).log()).sum(-1) * (probes * probes).sum(0)
    return per_probe.mean()


def rademacher(n: int, t: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """An (n, t) block of random +-1 probe vectors (drawn on the CPU, so seeds agree everywhere)."""
    signs = torch.randint(0, 2, (n, t), generator=generator).to(like.dtype) * 2 - 1
    return signs.to(like.device)
