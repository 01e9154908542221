"""Multi-output SVGP by the linear model of coregionalisation (LMC): Q latent GPs, T outputs.

f_t(x) = sum_q W[t, q] g_q(x), each g_q a GP with its own kernel and whitened inducing
variables at shared locations Z; q(v) is one joint Gaussian over all Q x M of them, kept
as natural parameters, so an observation of any subset of outputs at a point informs
every latent. For Gaussian likelihoods q's optimum has a closed form: `condition` finds
it in one streaming pass, and `fit` learns kernels, W and per-output noise on minibatches
in between natural-gradient steps, as `SVGP` does for one output.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from gpkernels.base import FitReport, check_prediction_input
from gpkernels.columns import standardise_columns, to_output_units
from gpkernels.kernels import Kernel
from gpkernels.linalg import LOG_2PI
from gpkernels.optim import Adam
from gpkernels.params import PositiveParameter
from gpkernels.svgp import inducing_locations, inducing_whitener, minibatches


class LMCSVGP(nn.Module):
    """Sparse variational LMC regression; y is (n, T) with NaN where an output is missing.

    `kernel` is copied once per latent (unit variance: W carries the scales).
    """

    def __init__(
        self,
        kernel: Kernel,
        num_outputs: int,
        num_latents: int = 1,
        num_inducing: int = 200,
        inducing: torch.Tensor | None = None,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.fit_report: FitReport | None = None  # how the last `fit` went
        self.kernels = nn.ModuleList(copy.deepcopy(kernel) for _ in range(num_latents))
        gen = torch.Generator().manual_seed(seed)
        self.mixing = nn.Parameter(torch.randn(num_outputs, num_latents, generator=gen).double())
        self.noise = PositiveParameter(torch.full((num_outputs,), 0.1), floor=1e-6)
        self.num_outputs, self.num_latents = num_outputs, num_latents
        self.num_inducing, self.inducing = num_inducing, inducing
        self.batch_size, self.seed = batch_size, seed
        self.z: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        self.jitter = 0.0  # the most any K_ZZ needed since the inducing points were placed
        self.y_mean = torch.zeros(num_outputs)
        self.y_scale = torch.ones(num_outputs)
        self._cache: dict | None = None

    def hyperparameters(self) -> dict:
        """Latent kernels, mixing W (standardised units), per-output noise (data units)."""
        return {
            "kernels": [k.describe() for k in self.kernels],
            "mixing": self.mixing.detach().cpu().tolist(),
            "noise": (self.noise.value.detach() * self.y_scale**2).cpu().tolist(),
            "mean": self.y_mean.cpu().tolist(),
        }

    # -- data ------------------------------------------------------------------------
    def _standardise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or y.shape != (x.shape[0], self.num_outputs):
            raise ValueError(
                f"x must be (n, d) and y (n, {self.num_outputs}) with NaN where an output is "
                f"missing; got x {tuple(x.shape)}, y {tuple(y.shape)}"
            )
        self.to(device=x.device, dtype=x.dtype)
        z, self.y_mean, self.y_scale = standardise_columns(y)
        return z

    def _place_inducing(self, x: torch.Tensor) -> None:
        inducing = "kmeans" if self.inducing is None else self.inducing
        self.z = inducing_locations(x, inducing, self.num_inducing, self.seed)
        self.jitter = 0.0
        size = self.num_latents * self.z.shape[0]
        self.precision = torch.eye(size, dtype=torch.float64, device=x.device)
        self.shift = torch.zeros(size, dtype=torch.float64, device=x.device)

    # -- features ------------------------------------------------------------------
    def _whiteners(self) -> list[torch.Tensor]:
        """L_q^-1 per latent (float64; differentiable where grad is enabled), from one
        factorisation of each K_ZZ (more only where it needs jitter)."""
        out = []
        for kernel in self.kernels:
            whitener, jitter = inducing_whitener(kernel(self.z, self.z), 0.0, "LMCSVGP")
            self.jitter = max(self.jitter, jitter)
            out.append(whitener)
        return out

    def _features(
        self, whiteners: list[torch.Tensor], xb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per latent: whitened features A_q (Q, M, B) and unexplained variances (Q, B)."""
        feats, rest = [], []
        for kernel, whitener in zip(self.kernels, whiteners, strict=True):
            a = whitener.to(xb.dtype) @ kernel(self.z, xb)
            feats.append(a)
            rest.append(kernel.diag(xb) - (a * a).sum(0))
        return torch.stack(feats), torch.stack(rest)

    def _output_features(self, feats: torch.Tensor, t: int) -> torch.Tensor:
        """Phi_t (Q M, B): output t's features, the latents' scaled by W[t, q]."""
        w = self.mixing[t].to(feats.dtype)
        return (w[:, None, None] * feats).reshape(-1, feats.shape[-1])

    @torch.no_grad()
    def _statistics(self, feats: torch.Tensor, zb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sum over observed entries of Phi Phi^T / noise and Phi z / noise (float64)."""
        noise = self.noise.value
        p = torch.zeros_like(self.precision)
        h = torch.zeros_like(self.shift)
        for t in range(self.num_outputs):
            seen = torch.isfinite(zb[:, t])
            phi = self._output_features(feats, t)[:, seen]
            p += (phi @ phi.T).double() / float(noise[t])
            h += (phi @ zb[seen, t]).double() / float(noise[t])
        return p, h

    def _q_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        factor = torch.linalg.cholesky(self.precision)
        mean = torch.cholesky_solve(self.shift[:, None], factor)[:, 0]
        return factor, mean, torch.cholesky_inverse(factor)

    def _moments(
        self,
        feats: torch.Tensor,
        rest: torch.Tensor,
        t: int,
        q_mean,
        q_cov,  # noqa: ANN001
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of f_t under q at the batch's points."""
        phi = self._output_features(feats, t)
        w2 = self.mixing[t].to(rest.dtype) ** 2
        mean = phi.T @ q_mean.to(phi.dtype)
        var = (w2[:, None] * rest).sum(0) + ((q_cov.to(phi.dtype) @ phi) * phi).sum(0)
        return mean, var

    # -- training and conditioning -----------------------------------------------------
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int = 3,
        lr: float = 0.05,
        natgrad_lr: float = 0.1,
        every: int = 4,
    ) -> LMCSVGP:
        """Minibatch epochs, then an exact conditioning pass; returns the model, with
        `fit_report` (iterations: the batches seen; max_jitter: the most K_ZZ needed).

        Every `every`-th batch, Adam (`lr`) steps kernels, W and noise on the batch's
        expected log-likelihood (the only batches that build an autograd graph); every
        batch adds to q's statistics, and every `every` batches q takes a natural-gradient
        step towards their optimum, of size max(`natgrad_lr`, 1/t) at its t-th step.
        """
        start = time.perf_counter()
        z_all = self._standardise(x, y)
        self._place_inducing(x)
        self._init_mixing(z_all)
        optimizer = Adam([p for p in self.parameters() if p.requires_grad], lr=lr)
        scale = x.shape[0] / (every * self.batch_size)
        batch, updates, acc_p, acc_h = 0, 0, 0.0, 0.0
        _, q_mean, q_cov = self._q_moments()
        whiteners = None  # L_q^-1 at the current hyperparameters, once a batch needs them
        for epoch in range(epochs):
            for xb, zb in minibatches(self.batch_size, self.seed, x, z_all, epoch=epoch):
                batch += 1
                if (batch - 1) % every == 0:
                    feats = self._hyper_step(optimizer, xb, zb, q_mean, q_cov)
                    whiteners = None  # the step moved the kernels
                else:
                    with torch.no_grad():
                        if whiteners is None:
                            whiteners = self._whiteners()
                        feats, _ = self._features(whiteners, xb)
                p, h = self._statistics(feats, zb)
                acc_p, acc_h = acc_p + p, acc_h + h
                if batch % every == 0:
                    updates += 1
                    q_mean, q_cov = self._natural_step(
                        max(natgrad_lr, 1.0 / updates), scale, acc_p, acc_h
                    )
                    acc_p, acc_h = 0.0, 0.0
        self.condition(x, y)
        elbo, seconds = self._cache["elbo"], time.perf_counter() - start
        report = FitReport(batch, True, f"{epochs} epochs done", elbo, self.jitter, seconds)
        self.fit_report = report
        return self

    def _hyper_step(
        self,
        optimizer: Adam,
        xb: torch.Tensor,
        zb: torch.Tensor,
        q_mean: torch.Tensor,
        q_cov: torch.Tensor,
    ) -> torch.Tensor:
        """One Adam step on the batch's expected log-likelihood (q fixed); returns the
        batch's features at the hyperparameters before the step, detached."""
        optimizer.zero_grad()
        feats, rest = self._features(self._whiteners(), xb)
        loss = -self._expected_log_lik(feats, rest, zb, q_mean, q_cov) / xb.shape[0]
        loss.backward()
        optimizer.step()
        return feats.detach()

    @torch.no_grad()
    def _natural_step(
        self, rate: float, scale: float, acc_p: torch.Tensor, acc_h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move q's natural parameters a fraction `rate` towards I + scale acc_p and
        scale acc_h (the accumulated statistics scaled to all rows); q's new mean and cov."""
        eye = torch.eye(acc_p.shape[0], dtype=torch.float64, device=acc_p.device)
        self.precision = (1 - rate) * self.precision + rate * (eye + scale * acc_p)
        self.shift = (1 - rate) * self.shift + rate * scale * acc_h
        _, q_mean, q_cov = self._q_moments()
        return q_mean, q_cov

    @torch.no_grad()
    def _init_mixing(self, z: torch.Tensor) -> None:
        """W from the leading eigenpairs of the outputs' correlation (pairwise complete rows),
        so that correlated outputs start sharing latents instead of random ones."""
        t = self.num_outputs
        corr = torch.eye(t, dtype=torch.float64, device=z.device)
        for i in range(t):
            for j in range(i):
                both = torch.isfinite(z[:, i]) & torch.isfinite(z[:, j])
                if int(both.sum()) > 2:
                    a, b = z[both, i].double(), z[both, j].double()
                    a, b = a - a.mean(), b - b.mean()
                    corr[i, j] = corr[j, i] = (a @ b) / (a.norm() * b.norm()).clamp_min(1e-12)
        values, vectors = torch.linalg.eigh(corr)
        top = min(self.num_latents, t)
        start = vectors[:, -top:] * values[-top:].clamp_min(1e-3).sqrt()
        self.mixing[:, :top] = start.flip(1).to(self.mixing)

    def _expected_log_lik(self, feats, rest, zb, q_mean, q_cov) -> torch.Tensor:  # noqa: ANN001
        """Sum over the batch's observed entries of E_q[log N(z | f_t, noise_t)], float64."""
        total = torch.zeros((), dtype=torch.float64, device=zb.device)
        for t in range(self.num_outputs):
            seen = torch.isfinite(zb[:, t])
            mean, var = self._moments(feats[:, :, seen], rest[:, seen], t, q_mean, q_cov)
            noise = self.noise.value[t]
            terms = -0.5 * (LOG_2PI + noise.log()) - 0.5 * ((zb[seen, t] - mean) ** 2 + var) / noise
            total = total + terms.double().sum()
        return total

    @torch.no_grad()
    def condition(self, x: torch.Tensor, y: torch.Tensor) -> LMCSVGP:
        """Set q to its optimum for all observed entries in one pass; cache the bound."""
        z_all = self._standardise(x, y)
        if self.z is None:
            self._place_inducing(x)
        whiteners = self._whiteners()
        data_p = torch.zeros_like(self.precision)
        data_h = torch.zeros_like(self.shift)
        entries, log_noise, zz, residual = 0, 0.0, 0.0, 0.0
        noise = self.noise.value.double()
        for xb, zb in minibatches(self.batch_size, self.seed, x, z_all):
            feats, rest = self._features(whiteners, xb)
            p, h = self._statistics(feats, zb)
            data_p, data_h = data_p + p, data_h + h
            for t in range(self.num_outputs):
                seen = torch.isfinite(zb[:, t])
                w2 = self.mixing[t].double() ** 2
                entries += int(seen.sum())
                log_noise += float(seen.sum()) * float(noise[t].log())
                zz += float((zb[seen, t].double() ** 2).sum()) / float(noise[t])
                residual += float((w2[:, None] * rest[:, seen].double()).sum()) / float(noise[t])
        eye = torch.eye(data_p.shape[0], dtype=torch.float64, device=data_p.device)
        self.precision, self.shift = eye + data_p, data_h
        factor, q_mean, q_cov = self._q_moments()
        elbo = (
            -0.5 * entries * LOG_2PI
            - 0.5 * log_noise
            - factor.diagonal().log().sum().item()
            - 0.5 * (zz - float(self.shift @ q_mean))
            - 0.5 * residual
        )
        _, outputs = torch.nonzero(torch.isfinite(z_all), as_tuple=True)
        elbo -= float(self.y_scale.log()[outputs].sum())
        self._cache = {"whiteners": whiteners, "q_mean": q_mean, "q_cov": q_cov, "elbo": elbo}
        return self

    def elbo(self) -> float:
        """The evidence lower bound of the last conditioning, in the units of y."""
        if self._cache is None:
            raise RuntimeError("call fit(x, y) or condition(x, y) before elbo()")
        return self._cache["elbo"]

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, include_noise: bool = False, block_size: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and variances (m, T) of every output at x (latent, or of new observations
        with `include_noise`), in each output's units."""
        check_prediction_input(self._cache, x, self.z.shape[1] if self._cache else None)
        means, variances = [], []
        for xb in torch.split(x.to(self.z), block_size):
            feats, rest = self._features(self._cache["whiteners"], xb)
            pairs = [
                self._moments(feats, rest, t, self._cache["q_mean"], self._cache["q_cov"])
                for t in range(self.num_outputs)
            ]
            means.append(torch.stack([m for m, _ in pairs], 1))
            variances.append(torch.stack([v for _, v in pairs], 1))
        noise = self.noise.value if include_noise else None
        return to_output_units(means, variances, noise, self.y_mean, self.y_scale, x.dtype)
