"""What every gpkernels regression model shares: data checks, standardised targets, reporting."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from gpkernels.kernels import Kernel
from gpkernels.likelihoods import GaussianLikelihood


@dataclass
class FitReport:
    """How a hyperparameter fit went and why it stopped."""

    iterations: int
    converged: bool
    stop_reason: str
    log_marginal_likelihood: float
    max_jitter: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_training_data(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse shapes and values a GP cannot be trained on, saying how to fix them."""
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d); got {tuple(x.shape)}: reshape with x[:, None]")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have shape ({x.shape[0]},) to match x {tuple(x.shape)}; got {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"a GP needs at least 2 observations; got {x.shape[0]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("x and y must be finite: drop NaN/inf observations (gaps) before fitting")
    if not x.is_floating_point():
        raise TypeError(f"x must be float32 or float64; got {x.dtype}")


def check_prediction_input(cache: dict | None, x: torch.Tensor, ndim: int | None) -> None:
    """Refuse predicting before conditioning, or at inputs of the wrong width (any when None)."""
    if cache is None:
        raise RuntimeError("call fit(x, y) or condition(x, y) before predict")
    if x.ndim != 2 or (ndim is not None and x.shape[1] != ndim):
        raise ValueError(f"x must have shape (m, {ndim or 'd'}); got {tuple(x.shape)}")


class GPModel(nn.Module):
    """A kernel, a Gaussian likelihood and the target standardisation.

    With `normalize_y` (the default) targets are standardised to zero mean and unit
    variance inside the model, so outputscale and noise are learned in units of the
    data variance; `hyperparameters()` reports them in the data's units. Inputs stay
    in physical units. The model moves to the device and dtype of its inputs.
    """

    def __init__(
        self, kernel: Kernel, likelihood: GaussianLikelihood | None = None, normalize_y: bool = True
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.likelihood = likelihood if likelihood is not None else GaussianLikelihood()
        self.normalize_y = normalize_y
        self.y_mean = 0.0
        self.y_scale = 1.0

    def _standardise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_training_data(x, y)
        self.to(device=x.device, dtype=x.dtype)
        y = y.to(dtype=x.dtype, device=x.device)
        self.y_mean, self.y_scale = self._target_scaling(y)
        return (y - self.y_mean) / self.y_scale

    def _target_scaling(self, y: torch.Tensor) -> tuple[float, float]:
        """Mean and scale that `normalize_y` standardises y with (0 and 1 without it)."""
        if not self.normalize_y:
            return 0.0, 1.0
        return float(y.mean()), float(y.std()) if float(y.std()) > 0 else 1.0

    def separable_hyperparameters(self) -> dict:
        """A separable kernel's lengthscale per input column, outputscale and noise (both
        variances in y's units): what `set_separable_hyperparameters` takes back."""
        variance = self.y_scale**2
        return {
            "lengthscales": [float(f.lengthscale.detach().max()) for f in self.kernel.base.factors],
            "outputscale": float(self.kernel.outputscale.detach()) * variance,
            "noise": float(self.likelihood.noise.detach()) * variance,
        }

    def set_separable_hyperparameters(self, values: dict, y: torch.Tensor) -> None:
        """Set hyperparameters given in y's units (as `separable_hyperparameters` reports them)
        for data y, converting to the standardised units this model will learn y in; the
        noise is kept just above its floor."""
        variance = self._target_scaling(y)[1] ** 2
        for factor, lengthscale in zip(
            self.kernel.base.factors, values["lengthscales"], strict=True
        ):
            factor.lengthscale = lengthscale
        self.kernel.outputscale = values["outputscale"] / variance
        floor = self.likelihood.noise_param.floor
        self.likelihood.noise = max(values["noise"] / variance, 1.01 * floor)

    def _check_prediction_input(self, cache: dict | None, x: torch.Tensor, ndim: int) -> None:
        check_prediction_input(cache, x, ndim)

    def _finish_prediction(
        self,
        means: list[torch.Tensor],
        variances: list[torch.Tensor],
        x: torch.Tensor,
        include_noise: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Join per-block standardised moments, add the noise if asked, return in y's units."""
        mean = torch.cat(means).to(x.dtype) * self.y_scale + self.y_mean
        var = torch.cat(variances).to(x.dtype)
        if include_noise:
            var = var + self.likelihood.noise.to(x.dtype)
        return mean, var.clamp_min(0.0) * self.y_scale**2

    def hyperparameters(self) -> dict:
        """Learned hyperparameters in the data's units (outputscale and noise are variances)."""
        kernel = self.kernel.describe()
        if kernel.get("kind") == "scale":
            kernel["outputscale"] *= self.y_scale**2
        return {
            "kernel": kernel,
            "noise": float(self.likelihood.noise.detach()) * self.y_scale**2,
            "mean": self.y_mean,
        }
