"""Side by side with GPyTorch: gpkernels.KissGP against GridInterpolationKernel, SVGP against
GPyTorch's variational GP.

Both libraries get the same data, the same seed and the same optimiser (30 Adam
iterations at lr 0.1 on the exact marginal likelihood), then predict held-out points.
Three cases:

  1d  n=100,000 x ~ U(0,1), y = sin(12x) + 0.5 sin(30x) + N(0, 0.1^2); 10,000 noisy test
      points drawn the same way. Run in float32 and float64.
  2d  a 200 x 200 grid on [0,1]^2 of a smooth field + N(0, 0.05^2), 30% of the cells held
      out at random: train on the kept cells, test on the held-out (noisy) cells.
  3d  a 40 x 60 x 60 (time in days, lat and lon in degrees at 0.25 spacing) grid of a
      smooth field + N(0, 0.1^2), 30% held out the same way. GPyTorch is expected to
      run out of memory here; that is caught and reported as OOM.
  svgp1d  the 1d data with stochastic variational GPs: 500 inducing points, batches of
      1024, 3 epochs. GPyTorch: ApproximateGP with VariationalStrategy (inducing points
      learned, started at the first 500 inputs), CholeskyVariationalDistribution,
      VariationalELBO and Adam at lr 0.01 over all parameters (its tutorial's recipe).
      Ours: gpkernels.SVGP (k-means inducing points, natural-gradient q, Adam at lr 0.01
      on the kernel and noise, then one exact conditioning pass).
  mt2  two correlated tasks observed at the same n=5,000 random points of [0, 1]
      (f1 = sin(12x) + 0.5 sin(30x), f2 = 0.8 f1 + 0.6 cos(9x), noise sd 0.1 each), 1,000
      noisy test points of both. GPyTorch: exact multitask GP, MultitaskKernel(RBF,
      rank 1), MultitaskGaussianLikelihood, MultitaskMean, 10 Adam iterations at lr 0.1
      (it takes minutes per iteration). Ours: MultitaskKissGP(RBF, rank 1), 30 Adam
      iterations at lr 0.1 after its exact start on 300 points.
  gappy2d  a 150 x 166 grid (spacing 1/149) of an exact draw of a Matern-3/2 field
      (lengthscale 0.1 on both axes, outputscale 1) + N(0, 0.05^2), a third of the cells
      missing in cloud-shaped gaps (the top third of a smooth RBF field of lengthscale
      0.04: contiguous blobs, not random cells). Scored on the missing cells against the
      TRUE field (latent variances, 95% coverage). Ours: KissGP(separable(["matern32"] * 2))
      .fit(x, y) with its defaults (subsample init, then its own stopping rule). GPyTorch:
      KISS-GP with MaternKernel(nu=1.5) on a GridInterpolationKernel over the same
      150 x 166 grid, 30 Adam steps at lr 0.1. Reference (lib "exact", float64 only): the
      dense Cholesky GP with the TRUE kernel and noise, no fitting.

GPyTorch runs the standard KISS-GP recipe: ExactGP with a ConstantMean and
ScaleKernel(GridInterpolationKernel(RBFKernel(ard_num_dims=d), grid_size=choose_grid_size(x, 1.0),
num_dims=d)), a GaussianLikelihood, and prediction in eval mode under fast_pred_var().
Ours is KissGP(separable(["rbf"] * d)) with its default grid (the 2-D and 3-D data lie on
grid cells, so KissGP takes its on-grid path by itself).

Every (case, library, dtype) run happens in its own child process (this script, called
again with --child), so that its peak RSS can be measured on its own and so that its
address space can be capped (--mem-limit-gb, 16 by default): a huge allocation then fails
with a clean error in the child instead of exhausting the machine's memory.

Printed per run: training seconds (model construction + 30 iterations), prediction
seconds (mean and variance of the test points), peak RSS of the child (MB), RMSE against
the noisy test targets, NLPD (mean Gaussian negative log predictive density of the test
targets under N(mean, var + learned noise)), the learned noise variance, and whether any
NaN appeared in the loss history, the means or the variances. Then, per case, the ratios
ours / GPyTorch of train+predict wall time and of peak RSS, against GPyTorch's best run
of that case (lowest RMSE among its runs without NaN).

Run the full benchmark (slow: GPyTorch alone takes minutes per 1-D run on a few cores):

    .venv/bin/python bench/vs_gpytorch.py

A quick smoke run (--scale multiplies the number of points; grid sides shrink by
scale ** (1 / d)):

    .venv/bin/python bench/vs_gpytorch.py --scale 0.02

Choose what to run with --cases 1d,2d,3d --libs ours,gpytorch --dtypes float32,float64.
The gappy 2-D case alone, with its dense reference:

    .venv/bin/python bench/vs_gpytorch.py --cases gappy2d --dtypes float32,float64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.table import Column, Table  # noqa: E402

# Where the children run: set by --device and passed to them in the environment.
DEVICE = os.environ.get("GPGRID_BENCH_DEVICE", "cpu")


def synchronize() -> None:
    """Wait for queued GPU work, so that wall-clock timers measure it."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


ITERATIONS = 30
LEARNING_RATE = 0.1
SEED = 0
HOLDOUT = 0.3
RESULT_TAG = "RESULT "
CASES = ("1d", "2d", "3d", "svgp1d", "mt2", "gappy2d")
SVGP_INDUCING = 500
SVGP_BATCH = 1024
SVGP_EPOCHS = 3
SVGP_LEARNING_RATE = 0.01
MT_GPYTORCH_ITERATIONS = 10
LIBS = ("ours", "gpytorch", "exact")
# The gappy 2-D case: true field, noise and the cloud field that cuts its gaps.
GAPPY_SHAPE = (150, 166)
GAPPY_LENGTHSCALE = 0.1
GAPPY_NOISE_SD = 0.05
GAPPY_CLOUD_LENGTHSCALE = 0.04
GAPPY_MISSING = 1 / 3
DTYPES = ("float32", "float64")


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    """Training and test sets of one case, in float64 (cast per run)."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: str
    latent: bool = False  # y_test is the noise-free field: score with latent variances
    lattice: tuple[int, ...] | None = None  # grid sides, where the data lie on a grid


def make_1d(scale: float) -> Data:
    """Random 1-D inputs on [0, 1] with a two-frequency sine and noise sd 0.1."""
    gen = torch.Generator().manual_seed(SEED + 1)
    n = max(200, round(100_000 * scale))
    n_test = max(50, round(10_000 * scale))

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(m, 1, generator=gen, dtype=torch.float64)
        f = torch.sin(12 * x[:, 0]) + 0.5 * torch.sin(30 * x[:, 0])
        return x, f + 0.1 * torch.randn(m, generator=gen, dtype=torch.float64)

    x, y = draw(n)
    x_test, y_test = draw(n_test)
    return Data(x, y, x_test, y_test, f"n={n:,}, test={n_test:,}")


def grid_case(
    axes: list[torch.Tensor],
    field: Callable[[torch.Tensor], torch.Tensor],
    noise_sd: float,
    seed: int,
) -> Data:
    """A noisy field on the full grid of `axes`; HOLDOUT of the cells become the test set."""
    gen = torch.Generator().manual_seed(seed)
    mesh = torch.meshgrid(*axes, indexing="ij")
    x = torch.stack([m.reshape(-1) for m in mesh], dim=1)
    y = field(x) + noise_sd * torch.randn(x.shape[0], generator=gen, dtype=torch.float64)
    order = torch.randperm(x.shape[0], generator=gen)
    n_test = round(HOLDOUT * x.shape[0])
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    sides = " x ".join(str(len(a)) for a in axes)
    shape = f"grid {sides}, train={len(train):,}, test={len(test):,}"
    return Data(x[train], y[train], x[test], y[test], shape)


def make_2d(scale: float) -> Data:
    """A 200 x 200 grid on [0, 1]^2 of a smooth field, noise sd 0.05."""
    side = max(8, round(200 * math.sqrt(scale)))
    axis = torch.arange(side, dtype=torch.float64) / (side - 1)

    def field(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, 0], x[:, 1]
        return torch.sin(6 * x1) * torch.cos(4 * x2) + 0.5 * torch.sin(9 * (x1 + x2))

    return grid_case([axis, axis], field, noise_sd=0.05, seed=SEED + 2)


def make_3d(scale: float) -> Data:
    """A 40 x 60 x 60 (days, degrees lat, degrees lon at 0.25) grid, noise sd 0.1."""
    factor = scale ** (1 / 3)
    n_t, n_lat, n_lon = (max(6, round(side * factor)) for side in (40, 60, 60))
    t = torch.arange(n_t, dtype=torch.float64)
    lat = 35.0 + 0.25 * torch.arange(n_lat, dtype=torch.float64)
    lon = -10.0 + 0.25 * torch.arange(n_lon, dtype=torch.float64)

    def field(x: torch.Tensor) -> torch.Tensor:
        t, a, b = x[:, 0], x[:, 1] - 35.0, x[:, 2] + 10.0
        return (
            torch.sin(2 * math.pi * t / 30) * torch.cos(a / 3)
            + 0.6 * torch.sin((a + b) / 2) * torch.cos(t / 9)
            + 0.3 * torch.cos(b / 1.5)
        )

    return grid_case([t, lat, lon], field, noise_sd=0.1, seed=SEED + 3)


def make_mt2(scale: float) -> Data:
    """Two correlated tasks at the same random points of [0, 1], noise sd 0.1 each."""
    gen = torch.Generator().manual_seed(SEED + 4)
    n = max(200, round(5_000 * scale))
    n_test = max(50, round(1_000 * scale))

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(m, 1, generator=gen, dtype=torch.float64)
        f1 = torch.sin(12 * x[:, 0]) + 0.5 * torch.sin(30 * x[:, 0])
        f2 = 0.8 * f1 + 0.6 * torch.cos(9 * x[:, 0])
        f = torch.stack([f1, f2], 1)
        return x, f + 0.1 * torch.randn(m, 2, generator=gen, dtype=torch.float64)

    x, y = draw(n)
    x_test, y_test = draw(n_test)
    return Data(x, y, x_test, y_test, f"2 tasks, n={n:,}, test={n_test:,}")


def make_gappy2d(scale: float) -> Data:
    """An exact Matern-3/2 draw on a 150 x 166 grid, a third of it missing in cloud blobs."""
    from gpkernels import make_kernel, sample_separable_grid

    gen = torch.Generator().manual_seed(SEED + 5)
    shape = tuple(max(12, round(n * math.sqrt(scale))) for n in GAPPY_SHAPE)
    h = 1.0 / (shape[0] - 1)

    def draw(name: str, lengthscale: float) -> torch.Tensor:
        kernels = [make_kernel(name) for _ in shape]
        for kernel in kernels:
            kernel.lengthscale = lengthscale
        return sample_separable_grid(kernels, shape, (h, h), 1.0, gen).reshape(-1)

    field = draw("matern32", GAPPY_LENGTHSCALE)
    clouds = draw("rbf", GAPPY_CLOUD_LENGTHSCALE)
    missing = clouds > torch.quantile(clouds, 1.0 - GAPPY_MISSING)
    axes = [h * torch.arange(n, dtype=torch.float64) for n in shape]
    x = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=1)
    y = field + GAPPY_NOISE_SD * torch.randn(field.shape[0], generator=gen, dtype=torch.float64)
    n_missing = int(missing.sum())
    text = f"grid {shape[0]} x {shape[1]}, observed={len(y) - n_missing:,}, gaps={n_missing:,}"
    return Data(x[~missing], y[~missing], x[missing], field[missing], text, True, shape)


MAKERS: dict[str, Callable[[float], Data]] = {
    "1d": make_1d,
    "2d": make_2d,
    "3d": make_3d,
    "svgp1d": make_1d,
    "mt2": make_mt2,
    "gappy2d": make_gappy2d,
}


# ----------------------------------------------------------------------------- runners


def timed_predict(status: dict, predict: Callable[[], tuple]) -> tuple[tuple, float]:
    """Run the prediction stage; returns its (mean, var) and its seconds, GPU work included."""
    status["stage"] = "predict"
    start = time.perf_counter()
    moments = predict()
    synchronize()
    return moments, time.perf_counter() - start


def gpytorch_moments(model, likelihood, x_test: torch.Tensor, fast: bool) -> tuple:  # noqa: ANN001
    """Latent mean and variance of a GPyTorch model in eval mode (fast_pred_var if `fast`)."""
    import gpytorch

    model.eval()
    likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(fast):
        latent = model(x_test)
        return latent.mean.cpu(), latent.variance.cpu()


def train_gpytorch_exact(model, likelihood, x, y, iterations: int) -> list[float]:  # noqa: ANN001
    """GPyTorch's exact-GP training recipe: Adam at LEARNING_RATE on the exact marginal
    likelihood for `iterations` steps; returns the losses (GPU work finished)."""
    import gpytorch

    model.train()
    likelihood.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    losses = []
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    synchronize()
    return losses


def run_ours(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Fit and predict with gpkernels.KissGP; returns raw predictions and timings."""
    from gpkernels import KissGP, separable  # lazy: keeps the GPyTorch side usable alone
    from gpkernels.optim import AdamSteps

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    status["stage"] = "train"
    start = time.perf_counter()
    model = KissGP(separable(["rbf"] * x.shape[1]))
    # Adam, as GPyTorch's recipe, for the same number of steps (whatever the path's default).
    report = model.fit(x, y, optimizer=AdamSteps(ITERATIONS, LEARNING_RATE, 0.0)).fit_report
    synchronize()
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(status, lambda: model.predict(x_test))

    losses = [float(v) for v in getattr(report, "loss_history", None) or []]
    losses.append(float(report.log_marginal_likelihood))
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": int(report.iterations),
        "stop": str(getattr(report, "stop_reason", "")),
        "losses": losses,
        "mean": mean.detach().cpu(),
        "var": var.detach().cpu(),
        "noise": float(model.hyperparameters()["noise"]),
        "diagnostics": model.diagnostics.as_dict(),
    }


def run_gpytorch(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Fit and predict with GPyTorch's KISS-GP recipe; returns raw predictions and timings."""
    import gpytorch
    from gpytorch.utils.grid import choose_grid_size

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    dims = x.shape[1]
    grid_size = choose_grid_size(x, 1.0)
    status["grid"] = f"{grid_size}^{dims}"

    class KissExactGP(gpytorch.models.ExactGP):
        def __init__(self, likelihood: gpytorch.likelihoods.GaussianLikelihood) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            base = gpytorch.kernels.RBFKernel(ard_num_dims=dims if dims > 1 else None)
            grid = gpytorch.kernels.GridInterpolationKernel(base, grid_size, num_dims=dims)
            self.covar_module = gpytorch.kernels.ScaleKernel(grid)

        def forward(self, inputs: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(inputs), self.covar_module(inputs)
            )

    status["stage"] = "train"
    start = time.perf_counter()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().to(DEVICE, dtype)
    model = KissExactGP(likelihood).to(DEVICE, dtype)
    losses = train_gpytorch_exact(model, likelihood, x, y, ITERATIONS)
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(
        status, lambda: gpytorch_moments(model, likelihood, x_test, fast=True)
    )

    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": ITERATIONS,
        "stop": f"max_iter={ITERATIONS} reached",
        "losses": losses,
        "mean": mean,
        "var": var,
        "noise": float(likelihood.noise.item()),
        "diagnostics": {"grid": status["grid"]},
    }


def run_ours_svgp(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Fit and predict with gpkernels.SVGP on minibatches."""
    from gpkernels import SVGP, separable

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    status["stage"] = "train"
    start = time.perf_counter()
    model = SVGP(separable(["rbf"] * x.shape[1]), num_inducing=SVGP_INDUCING, batch_size=SVGP_BATCH)
    report = model.fit(x, y, epochs=SVGP_EPOCHS, lr=SVGP_LEARNING_RATE).fit_report
    synchronize()
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(status, lambda: model.predict(x_test))
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": int(report.iterations),
        "stop": report.stop_reason,
        "losses": [float(report.log_marginal_likelihood)],
        "mean": mean.detach().cpu(),
        "var": var.detach().cpu(),
        "noise": float(model.hyperparameters()["noise"]),
        "diagnostics": model.diagnostics.as_dict(),
    }


def run_gpytorch_svgp(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Fit and predict with GPyTorch's SVGP recipe (its tutorial's settings)."""
    import gpytorch

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    dims = x.shape[1]

    class VariationalGP(gpytorch.models.ApproximateGP):
        def __init__(self, inducing: torch.Tensor) -> None:
            distribution = gpytorch.variational.CholeskyVariationalDistribution(len(inducing))
            strategy = gpytorch.variational.VariationalStrategy(
                self, inducing, distribution, learn_inducing_locations=True
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean()
            base = gpytorch.kernels.RBFKernel(ard_num_dims=dims if dims > 1 else None)
            self.covar_module = gpytorch.kernels.ScaleKernel(base)

        def forward(self, inputs: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(inputs), self.covar_module(inputs)
            )

    status["stage"] = "train"
    start = time.perf_counter()
    model = VariationalGP(x[:SVGP_INDUCING].clone()).to(DEVICE, dtype)
    likelihood = gpytorch.likelihoods.GaussianLikelihood().to(DEVICE, dtype)
    model.train()
    likelihood.train()
    optimizer = torch.optim.Adam(
        [*model.parameters(), *likelihood.parameters()], lr=SVGP_LEARNING_RATE
    )
    elbo = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=x.shape[0])
    gen = torch.Generator().manual_seed(SEED)
    losses, steps = [], 0
    for _ in range(SVGP_EPOCHS):
        order = torch.randperm(x.shape[0], generator=gen).to(x.device)
        for idx in torch.split(order, SVGP_BATCH):
            optimizer.zero_grad()
            loss = -elbo(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
    synchronize()
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(
        status, lambda: gpytorch_moments(model, likelihood, x_test, fast=False)
    )
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": steps,
        "stop": f"{SVGP_EPOCHS} epochs",
        "losses": losses,
        "mean": mean,
        "var": var,
        "noise": float(likelihood.noise.item()),
        "diagnostics": {},
    }


def run_ours_multitask(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Fit and predict with gpkernels.MultitaskKissGP (ICM through a KISS grid)."""
    from gpkernels import MultitaskKissGP
    from gpkernels.kernels import RBF

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    status["stage"] = "train"
    start = time.perf_counter()
    model = MultitaskKissGP(RBF(), num_tasks=y.shape[1], rank=1)
    report = model.fit(x, y, max_iter=ITERATIONS, lr=LEARNING_RATE, tol=0.0).fit_report
    synchronize()
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(status, lambda: model.predict(x_test))
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": int(report.iterations),
        "stop": report.stop_reason,
        "losses": [float(report.log_marginal_likelihood)],
        "mean": mean.detach().cpu(),
        "var": var.detach().cpu(),
        "noise": model.hyperparameters()["noise"],
        "diagnostics": model.diagnostics,
    }


def run_gpytorch_multitask(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Fit and predict with GPyTorch's exact multitask GP (its tutorial's recipe, rank 1)."""
    import gpytorch

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    tasks = y.shape[1]

    class MultitaskGP(gpytorch.models.ExactGP):
        def __init__(self, likelihood: gpytorch.likelihoods.MultitaskGaussianLikelihood) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.MultitaskMean(
                gpytorch.means.ConstantMean(), num_tasks=tasks
            )
            self.covar_module = gpytorch.kernels.MultitaskKernel(
                gpytorch.kernels.RBFKernel(), num_tasks=tasks, rank=1
            )

        def forward(self, inputs: torch.Tensor) -> gpytorch.distributions.Distribution:
            return gpytorch.distributions.MultitaskMultivariateNormal(
                self.mean_module(inputs), self.covar_module(inputs)
            )

    status["stage"] = "train"
    start = time.perf_counter()
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=tasks)
    likelihood = likelihood.to(DEVICE, dtype)
    model = MultitaskGP(likelihood).to(DEVICE, dtype)
    losses = train_gpytorch_exact(model, likelihood, x, y, MT_GPYTORCH_ITERATIONS)
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(
        status, lambda: gpytorch_moments(model, likelihood, x_test, fast=False)
    )
    noise = likelihood.task_noises.detach() + likelihood.noise.detach()
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": MT_GPYTORCH_ITERATIONS,
        "stop": f"max_iter={MT_GPYTORCH_ITERATIONS} reached",
        "losses": losses,
        "mean": mean,
        "var": var,
        "noise": noise.cpu().tolist(),
        "diagnostics": {},
    }


def lengthscales_of(model) -> list[float]:  # noqa: ANN001
    """Our separable model's per-axis lengthscales, in the inputs' units."""
    factors = model.hyperparameters()["kernel"]["base"]["factors"]
    return [float(v) for f in factors for v in f["lengthscale"]]


def run_ours_gappy(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """gpkernels.KissGP with its default fit (subsample init, its own stopping rule)."""
    from gpkernels import KissGP, separable

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    status["stage"] = "train"
    start = time.perf_counter()
    model = KissGP(separable(["matern32", "matern32"])).fit(x, y)
    synchronize()
    train_s = time.perf_counter() - start
    report = model.fit_report

    (mean, var), predict_s = timed_predict(status, lambda: model.predict(x_test))
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": int(report.iterations),
        "stop": report.stop_reason,
        "losses": [float(report.log_marginal_likelihood)],
        "mean": mean.detach().cpu(),
        "var": var.detach().cpu(),
        "noise": float(model.hyperparameters()["noise"]),
        "lengthscales": lengthscales_of(model),
        "diagnostics": model.diagnostics.as_dict(),
    }


def run_gpytorch_gappy(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """GPyTorch's KISS-GP with a Matern-3/2 kernel on a grid of the data's own sides."""
    import gpytorch

    x, y, x_test = (t.to(DEVICE, dtype) for t in (data.x, data.y, data.x_test))
    grid_size = list(data.lattice)
    status["grid"] = " x ".join(str(n) for n in grid_size)

    class KissExactGP(gpytorch.models.ExactGP):
        def __init__(self, likelihood: gpytorch.likelihoods.GaussianLikelihood) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            base = gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=2)
            grid = gpytorch.kernels.GridInterpolationKernel(base, grid_size, num_dims=2)
            self.covar_module = gpytorch.kernels.ScaleKernel(grid)

        def forward(self, inputs: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(inputs), self.covar_module(inputs)
            )

    status["stage"] = "train"
    start = time.perf_counter()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().to(DEVICE, dtype)
    model = KissExactGP(likelihood).to(DEVICE, dtype)
    losses = train_gpytorch_exact(model, likelihood, x, y, ITERATIONS)
    train_s = time.perf_counter() - start

    (mean, var), predict_s = timed_predict(
        status, lambda: gpytorch_moments(model, likelihood, x_test, fast=True)
    )
    lengthscale = model.covar_module.base_kernel.base_kernel.lengthscale
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": ITERATIONS,
        "stop": f"max_iter={ITERATIONS} reached",
        "losses": losses,
        "mean": mean,
        "var": var,
        "noise": float(likelihood.noise.item()),
        "lengthscales": lengthscale.detach().cpu().reshape(-1).tolist(),
        "diagnostics": {"grid": status["grid"]},
    }


def matern32_product(a: torch.Tensor, b: torch.Tensor, lengthscale: float) -> torch.Tensor:
    """prod over columns of the 1-D Matern-3/2 kernel between the rows of a and b (dense)."""
    out = None
    for dim in range(a.shape[1]):
        s = (a[:, dim, None] - b[None, :, dim]).abs_().mul_(math.sqrt(3.0) / lengthscale)
        k = torch.exp(-s).mul_(s.add_(1.0))  # (1 + s) exp(-s), two n x m buffers at most
        del s
        out = k if out is None else out.mul_(k)
    return out


def run_exact_gappy(data: Data, dtype: torch.dtype, status: dict) -> dict:
    """Dense float64 Cholesky GP with the TRUE kernel and noise: the accuracy reference."""
    x, y, x_test = (t.to(DEVICE, torch.float64) for t in (data.x, data.y, data.x_test))
    status["stage"] = "train"
    start = time.perf_counter()
    gram = matern32_product(x, x, GAPPY_LENGTHSCALE)
    gram.diagonal().add_(GAPPY_NOISE_SD**2)
    factor = torch.linalg.cholesky(gram)
    del gram
    alpha = torch.cholesky_solve(y[:, None], factor)
    synchronize()
    train_s = time.perf_counter() - start

    def predict() -> tuple[torch.Tensor, torch.Tensor]:
        cross = matern32_product(x, x_test, GAPPY_LENGTHSCALE)
        mean = (cross.T @ alpha)[:, 0]
        projected = torch.linalg.solve_triangular(factor, cross, upper=False)
        return mean.cpu(), (1.0 - (projected * projected).sum(0)).cpu()

    (mean, var), predict_s = timed_predict(status, predict)
    return {
        "train_s": train_s,
        "predict_s": predict_s,
        "iterations": 0,
        "stop": "true hyperparameters, no fit",
        "losses": [],
        "mean": mean,
        "var": var,
        "noise": GAPPY_NOISE_SD**2,
        "lengthscales": [GAPPY_LENGTHSCALE, GAPPY_LENGTHSCALE],
        "diagnostics": {},
    }


KISS_RUNNERS = {"ours": run_ours, "gpytorch": run_gpytorch}
RUNNERS: dict[str, dict[str, Callable[[Data, torch.dtype, dict], dict]]] = {
    "1d": KISS_RUNNERS,
    "2d": KISS_RUNNERS,
    "3d": KISS_RUNNERS,
    "svgp1d": {"ours": run_ours_svgp, "gpytorch": run_gpytorch_svgp},
    "mt2": {"ours": run_ours_multitask, "gpytorch": run_gpytorch_multitask},
    "gappy2d": {"ours": run_ours_gappy, "gpytorch": run_gpytorch_gappy, "exact": run_exact_gappy},
}


def runs(case: str, lib: str, dtype_name: str) -> bool:
    """Whether the case has this library, and the dense reference runs in float64 only."""
    return lib in RUNNERS[case] and (lib != "exact" or dtype_name == "float64")


# ----------------------------------------------------------------------------- child


def score(raw: dict, y_test: torch.Tensor, latent: bool = False) -> dict:
    """RMSE, NLPD and 95% coverage of the test targets, NaN flags, in float64.

    Noisy targets are scored under N(mean, var + noise); `latent` (noise-free) ones under
    N(mean, var)."""
    mean, var = raw["mean"].double().cpu(), raw["var"].double().cpu()
    total_var = var + torch.as_tensor(raw["noise"], dtype=torch.float64)  # per task if a list
    if latent:
        total_var = var.clamp_min(1e-300)
    inside = (y_test - mean).abs() <= 1.959964 * total_var.sqrt()
    rmse = float(torch.sqrt(torch.mean((mean - y_test) ** 2)))
    nlpd = float(
        torch.mean(
            0.5 * torch.log(2 * math.pi * total_var) + (y_test - mean) ** 2 / (2 * total_var)
        )
    )
    nan_seen = (
        any(math.isnan(v) for v in raw["losses"])
        or bool(torch.isnan(mean).any())
        or bool(torch.isnan(var).any())
    )
    return {
        "rmse": rmse,
        "nlpd": nlpd,
        "coverage": float(inside.double().mean()),
        "nan": nan_seen,
        "negative_var": int((var < 0).sum()),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def is_numerical(caught: warnings.WarningMessage) -> bool:
    """Numerical warnings are worth reporting; deprecations and the like are not."""
    return "Numerical" in caught.category.__name__ or issubclass(caught.category, RuntimeWarning)


def describe_warning(caught: warnings.WarningMessage) -> str:
    return f"{caught.category.__name__}: {str(caught.message).splitlines()[0][:140]}"


def failure_status(error: BaseException) -> str:
    """OOM for a failed allocation, NaN for a loss that stopped being finite, else error."""
    if is_oom(error):
        return "OOM"
    return "NaN" if isinstance(error, FloatingPointError) else "error"


def is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def child(case: str, lib: str, dtype_name: str, scale: float, mem_limit_gb: float) -> dict:
    """One run, inside its own process: returns the row that the parent prints."""
    if mem_limit_gb > 0 and DEVICE == "cpu":  # CUDA needs a vast address space
        limit = int(mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(SEED)

    data = MAKERS[case](scale)
    row: dict = {"case": case, "lib": lib, "dtype": dtype_name, "shape": data.shape}
    row["rss_before_mb"] = peak_rss_mb()
    status: dict = {"stage": "setup"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = RUNNERS[case][lib](data, getattr(torch, dtype_name), status)
        except Exception as error:  # reported in the table, not raised
            row["status"] = failure_status(error)
            row["message"] = f"during {status['stage']}: {first_line(error)}"
            raw = None
    row["peak_rss_mb"] = peak_rss_mb()
    if DEVICE == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    row["warnings"] = sorted({describe_warning(w) for w in caught if is_numerical(w)})
    row["grid"] = status.get("grid")
    if raw is not None:
        row["status"] = "ok"
        row.update({k: raw[k] for k in ("train_s", "predict_s", "iterations", "stop", "noise")})
        row["diagnostics"] = raw["diagnostics"]
        row["lengthscales"] = raw.get("lengthscales")
        row.update(score(raw, data.y_test, data.latent))
    return row


def child_main(spec: str, scale: float, mem_limit_gb: float) -> None:
    case, lib, dtype_name = spec.split(":")
    row = child(case, lib, dtype_name, scale, mem_limit_gb)
    print(RESULT_TAG + json.dumps(row, default=jsonable), flush=True)


def jsonable(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


# ----------------------------------------------------------------------------- parent


def spawn(case: str, lib: str, dtype_name: str, args: argparse.Namespace) -> dict:
    """Run one (case, lib, dtype) in a child process and return its row."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{case}:{lib}:{dtype_name}",
        "--scale",
        str(args.scale),
        "--mem-limit-gb",
        str(args.mem_limit_gb),
    ]
    base = {"case": case, "lib": lib, "dtype": dtype_name}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return base | {"status": "timeout", "message": f"killed after {args.timeout:g} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line.removeprefix(RESULT_TAG))
    tail = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    return base | {"status": "crashed", "message": f"exit code {done.returncode}: {tail}"}


def noise_cell(noise: float | list | None) -> float | str | None:
    """One noise variance, or the mean over tasks marked with a star."""
    if isinstance(noise, list):
        return f" {sum(noise) / len(noise):>9.3e}*"
    return noise


def nan_flag(row: dict) -> str:
    if row["status"] == "NaN":
        return "yes"
    return ("yes" if row["nan"] else "no") if row["status"] == "ok" else "-"


RESULTS = Table(
    (
        Column("case", 9, left=True),
        Column("lib", 10, left=True),
        Column("dtype", 9, left=True),
        Column("status", 7),
        Column("iters", 6, "d"),
        Column("train s", 9, ".2f"),
        Column("predict s", 10, ".2f"),
        Column("peak MB", 9, ".0f"),
        Column("RMSE", 9, ".4f"),
        Column("NLPD", 9, ".3f"),
        Column("cover95", 8, ".3f"),
        Column("noise", 11, ".3e"),
        Column("NaN", 5),
    )
)
ROW_KEYS = ("iterations", "train_s", "predict_s", "peak_rss_mb", "rmse", "nlpd", "coverage")


def result_cells(r: dict) -> list:
    """One run's values, in RESULTS' columns (None where the run has none)."""
    names = [r["case"], r["lib"], r["dtype"], r["status"]]
    numbers = [r.get(key) for key in ROW_KEYS]
    return [*names, *numbers, noise_cell(r.get("noise")), nan_flag(r)]


def print_table(rows: list[dict]) -> None:
    print("\n" + RESULTS.text(result_cells(r) for r in rows))


def print_notes(rows: list[dict]) -> None:
    print("\nNotes")
    shapes = {r["case"]: r["shape"] for r in rows if "shape" in r}
    for case, shape in shapes.items():
        print(f"  {case}: {shape}")
    for r in rows:
        label = f"  {r['case']} {r['lib']} {r['dtype']}:"
        if "peak_gpu_mb" in r:
            print(f"{label} peak GPU memory {r['peak_gpu_mb']:.0f} MB")
        if "rss_before_mb" in r:
            print(f"{label} peak RSS {r['rss_before_mb']:.0f} MB before the model was built")
        if r.get("message"):
            print(f"{label} {r['status']} {r['message']}")
        if r.get("grid"):
            print(f"{label} GPyTorch inducing grid {r['grid']}")
        if r["lib"] == "ours" and r["status"] == "ok":
            print(f"{label} stopped: {r['stop']}")
            print(f"{label} diagnostics {json.dumps(r['diagnostics'], default=str)}")
        if isinstance(r.get("noise"), list):
            print(f"{label} noise per task {[f'{v:.3e}' for v in r['noise']]} (* in the table)")
        if r.get("lengthscales"):
            print(f"{label} lengthscales {[f'{v:.4g}' for v in r['lengthscales']]}")
        if r.get("negative_var"):
            print(f"{label} {r['negative_var']} negative predictive variances")
        for message in r.get("warnings", [])[:3]:
            print(f"{label} warning: {message}")


def best_gpytorch(rows: list[dict]) -> dict | None:
    """GPyTorch's run with the lowest RMSE among those without NaN."""
    runs = [
        r
        for r in rows
        if r["lib"] == "gpytorch"
        and r["status"] == "ok"
        and not r["nan"]
        and math.isfinite(r["rmse"])
    ]
    return min(runs, key=lambda r: r["rmse"]) if runs else None


def print_ratios(rows: list[dict], cases: list[str]) -> None:
    print("\nRatios ours / GPyTorch's best run (lowest RMSE without NaN) per case")
    for case in cases:
        in_case = [r for r in rows if r["case"] == case]
        best = best_gpytorch(in_case)
        ours = [r for r in in_case if r["lib"] == "ours" and r["status"] == "ok"]
        if best is None:
            why = ", ".join(
                f"{r['dtype']} {r['status']}" for r in in_case if r["lib"] == "gpytorch"
            )
            print(f"  {case}: no usable GPyTorch run ({why or 'not run'})")
            continue
        if not ours:
            print(f"  {case}: no successful run of ours (GPyTorch best: {best['dtype']})")
            continue
        best_wall = best["train_s"] + best["predict_s"]
        for r in ours:
            wall = (r["train_s"] + r["predict_s"]) / best_wall
            rss = r["peak_rss_mb"] / best["peak_rss_mb"]
            print(
                f"  {case}: ours {r['dtype']} / gpytorch {best['dtype']}: "
                f"train+predict {wall:.3g}x, peak RSS {rss:.3g}x"
            )


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), type=lambda s: parse_list(s, CASES))
    parser.add_argument("--libs", default=",".join(LIBS), type=lambda s: parse_list(s, LIBS))
    parser.add_argument("--dtypes", default=",".join(DTYPES), type=lambda s: parse_list(s, DTYPES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of points")
    parser.add_argument(
        "--mem-limit-gb", type=float, default=16.0, help="RLIMIT_AS per child; 0: none"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.scale, args.mem_limit_gb)
        return
    os.environ["GPGRID_BENCH_DEVICE"] = args.device
    print(
        f"KISS-GP, ours vs GPyTorch on {args.device}: {ITERATIONS} Adam iterations at lr "
        f"{LEARNING_RATE}, "
        f"scale {args.scale:g}, {len(os.sched_getaffinity(0))} threads, "
        f"address space capped at {args.mem_limit_gb:g} GB per run"
    )
    rows = []
    for case in args.cases:
        for lib in args.libs:
            for dtype_name in args.dtypes:
                if not runs(case, lib, dtype_name):
                    continue
                print(f"  running {case} {lib} {dtype_name} ...", end=" ", flush=True)
                start = time.perf_counter()
                rows.append(spawn(case, lib, dtype_name, args))
                print(f"{rows[-1]['status']} ({time.perf_counter() - start:.1f} s)", flush=True)
    print_table(rows)
    print_notes(rows)
    print_ratios(rows, args.cases)


if __name__ == "__main__":
    main()
