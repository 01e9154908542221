"""KissGP's default fit on a gappy grid (issue 15): warm-started CG against dense float64
algebra, and L-BFGS reaching the dense ExactGP optimum for a third of Adam's CG work."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gpkernels import (
    GaussianLikelihood,
    KissGP,
    make_kernel,
    sample_separable_grid,
    separable,
)
from gpkernels.kiss_paths import axis_columns
from gpkernels.linalg import LOG_2PI
from tests.test_kiss import grid_data, kernel, relative

# The dense float64 optimum on `gappy_grid()`: ExactGP(separable matern32 x 2).fit(x, y)
# (L-BFGS on dense Cholesky, 14 steps), computed once: refitting it here takes minutes.
DENSE_LENGTHSCALES = (0.10567840, 0.09570023)
DENSE_OUTPUTSCALE = 1.02276872
DENSE_NOISE = 0.00271272
# Gap-block column-matmuls of the previous default fit (26 Adam steps at lr 0.1 and tol 1e-4,
# cold-started CG) on the same data, measured on that code (issue 15).
ADAM_CG_WORK = 88_820


def gappy_grid(n1: int = 60, n2: int = 66, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """An exact draw of a Matern-3/2 field (lengthscale 0.1, noise sd 0.05) on an n1 x n2
    grid with a third of its cells missing in cloud-shaped gaps (bench's gappy2d recipe)."""
    gen = torch.Generator().manual_seed(seed)
    h = 1.0 / (n1 - 1)
    field_kernels, cloud_kernels = [], []
    for kernels, name, scale in ((field_kernels, "matern32", 0.1), (cloud_kernels, "rbf", 0.04)):
        for _ in range(2):
            k = make_kernel(name)
            k.lengthscale = scale
            kernels.append(k)
    field = sample_separable_grid(field_kernels, (n1, n2), (h, h), 1.0, gen)
    clouds = sample_separable_grid(cloud_kernels, (n1, n2), (h, h), 1.0, gen)
    gaps = (clouds > torch.quantile(clouds.reshape(-1), 1 - 1 / 3)).reshape(-1)
    axes = [torch.arange(n, dtype=torch.float64) * h for n in (n1, n2)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    x = torch.stack([m.reshape(-1) for m in mesh], 1)
    noise = 0.05 * torch.randn(n1 * n2, generator=gen, dtype=torch.float64)
    y = field.reshape(-1) + noise
    return x[~gaps], y[~gaps]


def dense_lml(model: KissGP, x: torch.Tensor, y: torch.Tensor) -> float:
    """log p(y | x) by dense float64 Cholesky at the model's hyperparameters and its
    standardisation of y."""
    z = (y - model._prior_mean(x)) / model.y_scale
    with torch.no_grad():
        cov = model.kernel(x, x) + model.likelihood.noise * torch.eye(len(z), dtype=z.dtype)
        factor = torch.linalg.cholesky(cov)
        alpha = torch.cholesky_solve(z[:, None], factor)[:, 0]
        value = -0.5 * z @ alpha - factor.diagonal().log().sum() - 0.5 * len(z) * LOG_2PI
    return float(value) - len(z) * math.log(model.y_scale)


def test_warm_started_solves_match_dense_and_take_fewer_iterations() -> None:
    """K^-1 z and the gap block's A^-1 probes from a nearby start: the dense answers to the
    tolerance (relative to the right-hand side), in fewer CG iterations than from zero."""
    cells, x, y = grid_data()
    model = KissGP(kernel(), GaussianLikelihood(0.05))
    problem = model._solver(x, y).problem
    assert torch.equal(cells[problem.observed], x)
    scale, noise = model.kernel.outputscale.detach(), model.likelihood.noise.detach()
    op = problem.operator(
        axis_columns(model.kernel, problem.lattice, x.dtype, x.device), scale, noise
    )
    with torch.no_grad():
        full = model.kernel(cells, cells) + noise * torch.eye(len(cells), dtype=torch.float64)
    z = problem.z[:, None]
    exact = torch.linalg.solve(full[problem.observed][:, problem.observed], z)
    gen = torch.Generator().manual_seed(3)

    def near(v: torch.Tensor) -> torch.Tensor:  # v perturbed by about 1e-3 (relative)
        return v * (1 + 1e-3 * torch.randn(v.shape, generator=gen, dtype=v.dtype))

    _, cold = op.solve(z, tol=1e-8)
    warm, report = op.solve(z, tol=1e-8, start=near(exact))
    assert report.converged and report.relative_residual <= 1e-8
    assert relative(warm, exact) < 1e-5
    assert 0 < report.iterations < cold.iterations
    _, none_needed = op.solve(z, tol=1e-8, start=warm)
    _, far = op.solve(z, tol=1e-8, start=-10 * exact)  # worse than zero: started from zero
    assert none_needed.iterations == 0 and none_needed.refinements == 0
    assert far == cold

    missing = op.missing
    gap_block = torch.linalg.inv(full)[missing][:, missing]
    probes = problem.gap_probes
    exact_probes = torch.linalg.solve(gap_block, probes)
    _, cold = op.gaps.solve(probes, tol=1e-8)
    start = exact_probes * (
        1 + 1e-3 * torch.randn(probes.shape, generator=gen, dtype=torch.float64)
    )
    solved, report = op.gaps.solve(probes, tol=1e-8, start=start)
    assert report.converged and relative(solved, exact_probes) < 1e-6
    assert 0 < report.iterations < cold.iterations


def test_default_fit_reaches_the_dense_optimum_with_a_third_of_adams_cg_work() -> None:
    """60 x 66 cells, 1,320 of them missing (beyond exact_gap_limit: stochastic gap
    log-determinant). Oracle: the dense float64 ExactGP optimum on the same data."""
    x, y = gappy_grid()
    model = KissGP(separable(["matern32", "matern32"]), exact_gap_limit=1024).fit(x, y)
    assert model.diagnostics.log_det_gaps.startswith("stochastic Lanczos")
    assert model.fit_report.stop_reason.endswith("then L-BFGS: loss change below tolerance")
    factors = model.kernel.base.factors
    fitted = [float(f.lengthscale) for f in factors]
    fitted += [float(model.kernel.outputscale), float(model.likelihood.noise)]
    dense = [*DENSE_LENGTHSCALES, DENSE_OUTPUTSCALE, DENSE_NOISE]
    for mine, theirs in zip(fitted, dense, strict=True):
        assert mine == pytest.approx(theirs, rel=0.05)
    optimum = copy.deepcopy(model)
    for f, lengthscale in zip(optimum.kernel.base.factors, DENSE_LENGTHSCALES, strict=True):
        f.lengthscale = lengthscale
    optimum.kernel.outputscale, optimum.likelihood.noise = DENSE_OUTPUTSCALE, DENSE_NOISE
    assert dense_lml(model, x, y) >= dense_lml(optimum, x, y) - 0.2
    assert model.diagnostics.cg_work <= ADAM_CG_WORK / 3
