"""What every gpkernels regression model shares: data checks, standardised targets, reporting."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from gpkernels.kernels import LENGTHSCALE_FLOOR, Kernel, multiscale_parts, stationary_factors
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import NumericalWarning
from gpkernels.regression import KrigedColumns


class LengthscaleWarning(NumericalWarning):
    """A fitted lengthscale collapsed: far below the data's spacing, or at its lower bound."""


@dataclass
class FitReport:
    """How a hyperparameter fit went and why it stopped; `notes` are the fitted values that
    deserve a look (each also raised as a warning), e.g. a collapsed lengthscale."""

    iterations: int
    converged: bool
    stop_reason: str
    log_marginal_likelihood: float
    max_jitter: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def data_spacing(column: torch.Tensor) -> float:
    """The typical spacing of one input column: the median gap between its distinct values
    (a grid's step; for scattered inputs, robust to a few near-duplicates). 0 when constant."""
    values = torch.unique(column.detach().double())
    return float(values.diff().median()) if values.numel() > 1 else 0.0


def collapsed_lengthscales(
    kernel: Kernel, x: torch.Tensor, names: Sequence[str] | None = None
) -> list[str]:
    """A message for each lengthscale of `kernel` that collapsed on inputs x: below a tenth
    of the data's spacing in its column(s), or at the parameter's floor.

    Neighbouring observations are then uncorrelated: the data look like white noise at
    their resolution, predictions away from observations revert to the mean, and their std
    to the prior's. `names` label the input columns (their indices when None). An
    isotropic lengthscale is compared with the smallest spacing among its columns.
    """
    label = list(names) if names is not None else [str(c) for c in range(x.shape[1])]
    spacings = [data_spacing(x[:, c]) for c in range(x.shape[1])]
    messages = []
    for factor in stationary_factors(kernel):
        columns = factor.dims if factor.dims is not None else list(range(x.shape[1]))
        scales = factor.lengthscale.detach().reshape(-1).tolist()
        groups = [columns] if len(scales) == 1 else [[c] for c in columns]
        for scale, group in zip(scales, groups, strict=True):
            spacing = min(spacings[c] for c in group)
            what = "column" if len(group) == 1 else "columns"
            head = f"lengthscale of {what} {', '.join(label[c] for c in group)} learned {scale:.3g}"
            if scale <= 2 * LENGTHSCALE_FLOOR:
                reason = f"at its lower bound {LENGTHSCALE_FLOOR:g}"
            elif scale < 0.1 * spacing:
                reason = f"below a tenth of the data spacing {spacing:.3g}"
            else:
                continue
            messages.append(
                f"{head}, {reason}: the data look like white noise at this resolution; "
                "predictions far from observations revert to the mean"
            )
    return messages


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


MEANS = ("constant", "linear")


class GPModel(nn.Module):
    """A kernel, a Gaussian likelihood, a prior mean and the target standardisation.

    The prior mean is a constant, or with `mean="linear"` a linear trend in the inputs
    (least squares on the training data; the GP then models what the trend leaves).
    With `normalize_y` (the default) the targets less that mean are scaled to unit
    variance inside the model, so outputscale and noise are learned in units of the
    data variance; `hyperparameters()` reports them in the data's units. Inputs stay
    in physical units. The model moves to the device and dtype of its inputs.
    """

    def __init__(
        self,
        kernel: Kernel,
        likelihood: GaussianLikelihood | None = None,
        normalize_y: bool = True,
        mean: str = "constant",
    ) -> None:
        super().__init__()
        if mean not in MEANS:
            raise ValueError(f"mean={mean!r} is not one of {MEANS}")
        self.kernel = kernel
        self.likelihood = likelihood if likelihood is not None else GaussianLikelihood()
        self.normalize_y = normalize_y
        self.mean = mean
        self.y_mean = 0.0
        self.y_scale = 1.0
        self.trend: tuple[torch.Tensor, torch.Tensor] | None = None  # (centre, slopes)
        # Names of the input columns for messages (e.g. "lat"); callers that know them set it.
        self.column_names: Sequence[str] | None = None
        self.fit_report: FitReport | None = None  # how the last `fit` went

    def _standardise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_training_data(x, y)
        self.to(device=x.device, dtype=x.dtype)
        y = y.to(dtype=x.dtype, device=x.device)
        self.y_mean, self.y_scale, self.trend = self._target_scaling(x, y)
        return (y - self._prior_mean(x)) / self.y_scale

    def _target_scaling(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, float, tuple[torch.Tensor, torch.Tensor] | None]:
        """The prior mean (intercept, and the linear trend's centre and slopes) and the scale
        that y less that mean is divided by (1 without `normalize_y`)."""
        trend = None
        if self.mean == "linear" and x.shape[0] > x.shape[1] + 1:
            centre = x.double().mean(0)
            design = torch.cat([torch.ones_like(x[:, :1]).double(), x.double() - centre], 1)
            coef = torch.linalg.lstsq(design, y.double()[:, None]).solution[:, 0]
            intercept, trend = float(coef[0]), (centre.to(x.dtype), coef[1:].to(x.dtype))
            residual = y - intercept - (x - trend[0]) @ trend[1]
        elif self.normalize_y:
            intercept, residual = float(y.mean()), y - float(y.mean())
        else:
            return 0.0, 1.0, None
        spread = float(residual.std()) if self.normalize_y and y.shape[0] > 1 else 1.0
        return intercept, spread if spread > 0 else 1.0, trend

    def _prior_mean(self, x: torch.Tensor) -> torch.Tensor | float:
        """The prior mean at x in y's units: the constant, plus the trend where there is one."""
        if self.trend is None:
            return self.y_mean
        centre, slopes = self.trend
        return self.y_mean + (x - centre.to(x)) @ slopes.to(x)

    def shared_hyperparameters(self) -> dict:
        """The kernel's hyperparameters as plain values that `set_shared_hyperparameters`
        takes back, for another tile's data: one lengthscale per stationary factor in order
        (one per column for a separable kernel) with the columns each reads, the shares of
        a MultiScale's parts, and outputscale and noise as variances in y's units."""
        variance = self.y_scale**2
        factors = stationary_factors(self.kernel)
        return {
            "lengthscales": [float(f.lengthscale.detach().max()) for f in factors],
            "columns": [list(f.dims or []) for f in factors],
            "shares": [float(p.outputscale.detach()) for p in multiscale_parts(self.kernel)],
            "outputscale": float(self.kernel.outputscale.detach()) * variance,
            "noise": float(self.likelihood.noise.detach()) * variance,
        }

    def set_shared_hyperparameters(self, values: dict, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set hyperparameters given in y's units (as `shared_hyperparameters` reports them)
        for data (x, y), converting to the standardised units this model will learn y in;
        the noise is kept just above its floor."""
        variance = self._target_scaling(x, y)[1] ** 2
        factors = stationary_factors(self.kernel)
        for factor, lengthscale in zip(factors, values["lengthscales"], strict=True):
            factor.lengthscale = _above(lengthscale, factor.lengthscale_param.floor)
        parts = multiscale_parts(self.kernel)
        for part, share in zip(parts, values.get("shares", []), strict=True):
            part.outputscale = _above(share, part.outputscale_param.floor)
        self.kernel.outputscale = values["outputscale"] / variance
        self.likelihood.noise = _above(
            values["noise"] / variance, self.likelihood.noise_param.floor
        )

    def kriged(self, columns: torch.Tensor) -> KrigedColumns:
        """Simple kriging of other columns at the conditioned data (universal kriging needs
        it, gpkernels.regression); models that solve with their data's covariance offer it."""
        raise NotImplementedError(
            f"{type(self).__name__} offers no kriging of other columns, which universal "
            "kriging (covariates) needs: use ExactGP or KissGP on gridded inputs"
        )

    def _reviewed(self, report: FitReport, x: torch.Tensor) -> GPModel:
        """Keep `report` as `fit_report`, with a note and a LengthscaleWarning for each
        collapsed lengthscale; returns the model (what `fit` returns, as in scikit-learn)."""
        for message in collapsed_lengthscales(self.kernel, x, self.column_names):
            warnings.warn(f"{type(self).__name__}: {message}", LengthscaleWarning, stacklevel=3)
            report.notes.append(message)
        self.fit_report = report
        return self

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
        mean = torch.cat(means).to(x.dtype) * self.y_scale + self._prior_mean(x)
        var = torch.cat(variances).to(x.dtype)
        if include_noise:
            var = var + self.likelihood.noise.to(x.dtype)
        return mean, var.clamp_min(0.0) * self.y_scale**2

    def hyperparameters(self) -> dict:
        """Learned hyperparameters in the data's units (outputscale and noise are variances)."""
        kernel = self.kernel.describe()
        if kernel.get("kind") == "scale":
            kernel["outputscale"] *= self.y_scale**2
        found = {
            "kernel": kernel,
            "noise": float(self.likelihood.noise.detach()) * self.y_scale**2,
            "mean": self.y_mean,
        }
        if self.trend is not None:
            found["trend"] = {
                "centre": self.trend[0].cpu().tolist(),
                "slopes": self.trend[1].cpu().tolist(),
            }
        return found


def _above(value: float, floor: float) -> float:
    """`value`, or just above `floor` where a fit left it there (a collapsed lengthscale or
    an unused part of a multi-scale kernel, read back with rounding)."""
    return max(value, 1.01 * floor)
