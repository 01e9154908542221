"""Stochastic variational GP (SVGP) for many scattered points, trained on minibatches.

M inducing points Z carry the field: u = f(Z) = L v with K_ZZ = L L^T (whitened), and
q(v) = N(m, S) with S = P^-1 kept as its natural parameters (precision P, shift h = P m).
For a Gaussian likelihood the natural gradient of the ELBO has a closed form, so each
minibatch moves q part of the way to that batch's optimum, while Adam steps the kernel
and noise on the same batch. `condition` then sets q to its optimum for all the data in
one streaming pass (Titsias' collapsed solution), so predictions carry no minibatch
noise. Memory: one batch plus a few M x M matrices, whatever the number of points.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import torch

from gpkernels.base import FitReport, GPModel
from gpkernels.initial import init_from_subsample
from gpkernels.kernels import Kernel
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import LOG_2PI, NumericalWarning, robust_cholesky
from gpkernels.optim import Adam

KMEANS_SAMPLE_PER_CENTRE = 20
KMEANS_ROUNDS = 10


@dataclass(frozen=True)
class SVGPDiagnostics:
    """What an SVGP's last conditioning used (inducing points, jitter on K_ZZ, how variances
    are computed) and, once `fit` ran, its training: batches, hyperparameter steps, epochs
    and batch size (None before, and left out of `as_dict`)."""

    inducing: int
    jitter: float
    variance: str = "exact under q (no sampling)"
    batches: int | None = None
    hyper_steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None

    def as_dict(self) -> dict:
        """A plain JSON-able dict of the fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def kmeans_centres(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k centres by Lloyd's algorithm on a subsample of x (empty clusters keep their start)."""
    gen = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(x.shape[0], generator=gen)[: k * KMEANS_SAMPLE_PER_CENTRE]]
    centres = sample[:k].clone()
    for _ in range(KMEANS_ROUNDS):
        label = torch.cdist(sample, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, label, sample)
        counts = torch.bincount(label, minlength=k).to(x.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


def grid_centres(x: torch.Tensor, k: int) -> torch.Tensor:
    """About k centres on a regular grid over the data's bounding box (k^(1/d) per axis)."""
    per_axis = max(2, round(k ** (1.0 / x.shape[1])))
    axes = [
        torch.linspace(float(c.min()), float(c.max()), per_axis, dtype=x.dtype, device=x.device)
        for c in x.T
    ]
    return torch.cartesian_prod(*axes).reshape(-1, x.shape[1])


def inducing_locations(
    x: torch.Tensor, inducing: str | torch.Tensor, num_inducing: int, seed: int
) -> torch.Tensor:
    """Inducing points: the given tensor, all of x when it has no more than `num_inducing`
    rows, else `num_inducing` k-means ("kmeans") or regular ("grid") centres."""
    if isinstance(inducing, torch.Tensor):
        z = inducing
    elif num_inducing >= x.shape[0]:
        z = x
    elif inducing == "grid":
        z = grid_centres(x, num_inducing)
    else:
        z = kmeans_centres(x, num_inducing, seed)
    return z.detach().to(device=x.device, dtype=x.dtype)


def minibatches(
    batch_size: int, seed: int, x: torch.Tensor, *others: torch.Tensor, epoch: int | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Rows of x (and of `others`) in batches: in order, or shuffled, seeded by the epoch."""
    n = x.shape[0]
    if epoch is None:
        order = torch.arange(n, device=x.device)
    else:
        gen = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=gen).to(x.device)
    for idx in torch.split(order, batch_size):
        yield (x[idx], *[o[idx] for o in others])


def inducing_whitener(k_zz: torch.Tensor, jitter: float, model: str) -> tuple[torch.Tensor, float]:
    """L^-1 with K_ZZ + jitter I = L L^T (float64, differentiable), and the jitter used.

    `jitter` is the least to add (what earlier factorisations needed); where that is not
    enough, the jitter grows to what K_ZZ needs and a `NumericalWarning` from `model` says
    how much. Kept as an explicit inverse so that every batch is whitened by one matrix
    product (a triangular solve with many right-hand sides is several times slower).
    """
    k_zz = k_zz.double()
    eye = torch.eye(k_zz.shape[0], dtype=k_zz.dtype, device=k_zz.device)
    factor, info = torch.linalg.cholesky_ex(k_zz + jitter * eye)
    if int(info) != 0:
        with torch.no_grad():
            _, needed = robust_cholesky(k_zz.detach(), warn=False)
        jitter = max(jitter, needed)
        warnings.warn(
            f"{model}: K_ZZ of {k_zz.shape[0]} inducing points needed {jitter:.3g} jitter "
            "on its diagonal (inducing points too close for the lengthscale); fewer help",
            NumericalWarning,
            stacklevel=4,
        )
        factor = torch.linalg.cholesky(k_zz + jitter * eye)
    return torch.linalg.solve_triangular(factor, eye, upper=False), jitter


class SVGP(GPModel):
    """Sparse variational GP regression with the `fit` / `predict` facade of ExactGP.

    `inducing` is "kmeans" (the default), "grid", or an (M, d) tensor of locations;
    the locations stay fixed while the hyperparameters and q are learned.
    """

    def __init__(
        self,
        kernel: Kernel,
        likelihood: GaussianLikelihood | None = None,
        num_inducing: int = 500,
        inducing: str | torch.Tensor = "kmeans",
        batch_size: int = 1024,
        normalize_y: bool = True,
        seed: int = 0,
        mean: str = "constant",
    ) -> None:
        super().__init__(kernel, likelihood, normalize_y, mean)
        if isinstance(inducing, str) and inducing not in ("kmeans", "grid"):
            raise ValueError(f"inducing must be 'kmeans', 'grid' or a tensor; got {inducing!r}")
        self.num_inducing = num_inducing
        self.inducing = inducing
        self.batch_size = batch_size
        self.seed = seed
        self.z: torch.Tensor | None = None  # inducing locations, (M, d)
        self.precision: torch.Tensor | None = None  # P of q(v), (M, M), float64
        self.shift: torch.Tensor | None = None  # h = P m, (M,), float64
        self.jitter = 0.0
        self.diagnostics: SVGPDiagnostics | None = None  # set by `condition` (and `fit`)
        self._cache: dict | None = None

    # -- structure -----------------------------------------------------------------
    def _place_inducing(self, x: torch.Tensor) -> None:
        self.z = inducing_locations(x, self.inducing, self.num_inducing, self.seed)
        m = self.z.shape[0]
        self.precision = torch.eye(m, dtype=torch.float64, device=x.device)
        self.shift = torch.zeros(m, dtype=torch.float64, device=x.device)

    def _whitener(self) -> torch.Tensor:
        """L^-1 with K_ZZ = L L^T (see `inducing_whitener`); the jitter it needs is kept."""
        whitener, self.jitter = inducing_whitener(self.kernel(self.z, self.z), self.jitter, "SVGP")
        return whitener

    def _projection(self, whitener: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """A = L^-1 K_Z,x for a batch: the whitened features, (M, B) in the model's dtype."""
        k_zx = self.kernel(self.z, xb)
        return whitener.to(k_zx.dtype) @ k_zx

    def _q_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cholesky factor C of the precision P, the mean m = P^-1 h, and S - I (float64)."""
        factor = torch.linalg.cholesky(self.precision)
        mean = torch.cholesky_solve(self.shift[:, None], factor)[:, 0]
        excess = torch.cholesky_inverse(factor)
        excess.diagonal().sub_(1.0)
        return factor, mean, excess

    def _latent_moments(
        self, a: torch.Tensor, xb: torch.Tensor, q_mean: torch.Tensor, q_excess: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean A^T m and variance k(x, x) + a^T (S - I) a of f under q, per column of A."""
        mean = a.T @ q_mean.to(a.dtype)
        var = self.kernel.diag(xb) + ((q_excess.to(a.dtype) @ a) * a).sum(0)
        return mean, var

    def _expected_log_lik(
        self,
        a: torch.Tensor,
        xb: torch.Tensor,
        zb: torch.Tensor,
        q_mean: torch.Tensor,
        q_excess: torch.Tensor,
    ) -> torch.Tensor:
        """sum over the batch of E_q[log N(z | f, noise)], accumulated in float64."""
        noise = self.likelihood.noise
        mean, var = self._latent_moments(a, xb, q_mean, q_excess)
        terms = -0.5 * (LOG_2PI + noise.log()) - 0.5 * ((zb - mean) ** 2 + var) / noise
        return terms.double().sum()

    def _collapsed_bound(
        self,
        z: torch.Tensor,
        q_factor: torch.Tensor,
        q_mean: torch.Tensor,
        data_p: torch.Tensor,
        prior_trace: float,
    ) -> float:
        """The ELBO at the optimal q (Titsias' bound), from the statistics of one pass.

        log N(z | 0, A^T A + noise I) - (sum k(x, x) - tr(A^T A)) / (2 noise), where the
        log-determinant and the quadratic form come from P = I + A A^T / noise.
        """
        n, noise = z.shape[0], float(self.likelihood.noise)
        zz = float((z.double() ** 2).sum())
        logdet_p = 2.0 * float(q_factor.diagonal().log().sum())
        quad = zz / noise - float(self.shift @ q_mean)
        residual_variance = prior_trace - noise * float(data_p.diagonal().sum())
        return (
            -0.5 * n * (LOG_2PI + math.log(noise))
            - 0.5 * logdet_p
            - 0.5 * quad
            - 0.5 * residual_variance / noise
        )

    def _natural_target(self, a: torch.Tensor, zb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A batch's terms of q's optimal precision and shift: A A^T / noise and A z / noise."""
        noise = float(self.likelihood.noise)
        return (a @ a.T).double() / noise, (a @ zb).double() / noise

    def _natural_step(self, rate: float, data_p: torch.Tensor, data_h: torch.Tensor) -> None:
        """Move q's natural parameters a fraction `rate` towards I + data_p and data_h."""
        eye = torch.eye(data_p.shape[0], dtype=torch.float64, device=data_p.device)
        self.precision = (1 - rate) * self.precision + rate * (eye + data_p)
        self.shift = (1 - rate) * self.shift + rate * data_h

    def _hyper_step(
        self,
        optimizer: Adam,
        xb: torch.Tensor,
        zb: torch.Tensor,
        q_mean: torch.Tensor,
        q_excess: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step on this batch's expected log-likelihood; returns L^-1 and A, detached."""
        optimizer.zero_grad()
        whitener = self._whitener()
        a = self._projection(whitener, xb)
        loss = -self._expected_log_lik(a, xb, zb, q_mean, q_excess) / xb.shape[0]
        if not bool(torch.isfinite(loss)):  # the KL term does not depend on the hyperparameters
            raise FloatingPointError(
                f"SVGP loss became {float(loss)} at batch {step} with hyperparameters "
                f"{self.hyperparameters()}: try float64 or a smaller lr"
            )
        loss.backward()
        optimizer.step()
        return whitener.detach(), a.detach()

    # -- training ------------------------------------------------------------------
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int = 3,
        lr: float = 0.01,
        natgrad_lr: float = 0.1,
        natgrad_every: int = 4,
        hyper_every: int = 4,
        init_from_data: bool = True,
        init_points: int = 400,
        init_iter: int = 50,
    ) -> SVGP:
        """Learn hyperparameters on minibatch ELBOs for `epochs` passes, then condition.

        Starts from an exact GP fitted by up to `init_iter` L-BFGS steps on `init_points`
        points unless `init_from_data` is False; `_train` says what a pass does. Returns
        the model; `fit_report` counts the batches, `diagnostics` also the Adam steps.
        """
        start = time.perf_counter()
        z_all = self._standardise(x, y)
        if init_from_data:
            init_from_subsample(self, x, y, init_points, self.seed, max_iter=init_iter)
        self._place_inducing(x)
        batches, hyper_steps = self._train(
            x, z_all, epochs, lr, natgrad_lr, natgrad_every, hyper_every
        )
        self.condition(x, y)
        self.diagnostics = replace(
            self.diagnostics,
            batches=batches,
            hyper_steps=hyper_steps,
            epochs=epochs,
            batch_size=self.batch_size,
        )
        seconds = time.perf_counter() - start
        elbo = self._cache["elbo"]
        report = FitReport(batches, True, f"{epochs} epochs done", elbo, self.jitter, seconds)
        return self._reviewed(report, x)

    def _train(
        self,
        x: torch.Tensor,
        z_all: torch.Tensor,
        epochs: int,
        lr: float,
        natgrad_lr: float,
        natgrad_every: int,
        hyper_every: int,
    ) -> tuple[int, int]:
        """`epochs` shuffled passes over (x, z_all); returns (batches, Adam steps).

        Every `hyper_every`-th batch, Adam (`lr`) steps the kernel and noise with q held
        fixed; every batch adds to q's statistics, and every `natgrad_every` batches q
        takes a natural-gradient step towards the optimum for them, of size
        max(`natgrad_lr`, 1/t) at its t-th step (a running mean at first). A hyperparameter
        step costs about four plain batches (the M x M factorisation and its gradient), so
        `hyper_every` > 1 trades steps for speed.
        """
        optimizer = Adam([p for p in self.parameters() if p.requires_grad], lr=lr)
        scale = x.shape[0] / (natgrad_every * self.batch_size)
        step, updates, hyper_steps = 0, 0, 0
        target_p, target_h = 0.0, 0.0
        with torch.no_grad():
            _, q_mean, q_excess = self._q_moments()
        whitener = None
        for epoch in range(epochs):
            for xb, zb in minibatches(self.batch_size, self.seed, x, z_all, epoch=epoch):
                step += 1
                if (step - 1) % hyper_every == 0:
                    # The batches up to the next step are whitened with this step's L^-1:
                    # one Adam step stale, which only q's running statistics see.
                    whitener, a = self._hyper_step(optimizer, xb, zb, q_mean, q_excess, step)
                    hyper_steps += 1
                else:
                    with torch.no_grad():
                        a = self._projection(whitener, xb)
                with torch.no_grad():
                    batch_p, batch_h = self._natural_target(a, zb)
                    target_p, target_h = target_p + batch_p, target_h + batch_h
                    if step % natgrad_every == 0:
                        updates += 1
                        rate = max(natgrad_lr, 1.0 / updates)
                        self._natural_step(rate, scale * target_p, scale * target_h)
                        _, q_mean, q_excess = self._q_moments()
                        target_p, target_h = 0.0, 0.0
        return step, hyper_steps

    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> SVGP:
        """Set q to its optimum for all of (x, y) in one pass (hyperparameters fixed)."""
        z_all = self._standardise(x, y)
        if self.z is None:
            self._place_inducing(x)
        whitener = self._whitener()
        data_p, data_h, prior_trace = 0.0, 0.0, 0.0
        for xb, zb in minibatches(self.batch_size, self.seed, x, z_all):
            batch_p, batch_h = self._natural_target(self._projection(whitener, xb), zb)
            data_p, data_h = data_p + batch_p, data_h + batch_h
            prior_trace += float(self.kernel.diag(xb).double().sum())
        self._natural_step(1.0, data_p, data_h)
        q_factor, q_mean, q_excess = self._q_moments()
        elbo = self._collapsed_bound(z_all, q_factor, q_mean, data_p, prior_trace)
        elbo -= x.shape[0] * math.log(self.y_scale)
        self._cache = {
            "whitener": whitener,
            "q_mean": q_mean,
            "q_excess": q_excess,
            "elbo": elbo,
            "ndim": x.shape[1],
        }
        used = {"inducing": self.z.shape[0], "jitter": self.jitter}
        if self.diagnostics is None:
            self.diagnostics = SVGPDiagnostics(**used)
        else:  # a fit's training record stays
            self.diagnostics = replace(self.diagnostics, **used)
        return self

    def elbo(self) -> float:
        """The evidence lower bound of the last conditioning, in the units of y."""
        if self._cache is None:
            raise RuntimeError("call fit(x, y) or condition(x, y) before elbo()")
        return self._cache["elbo"]

    # -- prediction ----------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance at x (of f, or of y with `include_noise`), in blocks."""
        cache = self._cache
        self._check_prediction_input(cache, x, cache["ndim"] if cache else 0)
        means, variances = [], []
        for xb in torch.split(x.to(self.z), block_size):
            a = self._projection(cache["whitener"], xb)
            mean, var = self._latent_moments(a, xb, cache["q_mean"], cache["q_excess"])
            means.append(mean)
            variances.append(var)
        return self._finish_prediction(means, variances, x, include_noise)
