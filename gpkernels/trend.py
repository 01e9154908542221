"""A smooth trend over a whole domain: the long-range part of a two-part GP on a subsample.

A tile's GP sees one window, so deep inside a large gap it reverts to its own mean (a
constant, or a plane extrapolated from one side of the gap). `DomainTrend` fits
`trend + local + noise` by maximum likelihood on observations drawn across the whole
domain, so the trend's range is identified from lags the tiles never see; its posterior
mean can then be the tiles' prior mean (its variance is there for callers that want it).
The local part only keeps short-range variation out of the trend.
"""

from __future__ import annotations

import math

import torch

from gpkernels.base import FitReport
from gpkernels.exact import ExactGP
from gpkernels.kernels import Scale, Sum, start_lengthscales, stationary_factors

TREND_START = 0.5  # the trend's lengthscales start at this fraction of each column's span
LOCAL_START = 0.02  # the local part's at this one
PART_START = 0.5  # each part's share of the (standardised) variance at the start
NOISE_START = 0.1


class DomainTrend:
    """`trend` and `local` (each an outputscale around stationary kernels) plus noise,
    fitted jointly on (x, y); `predict` gives the trend part's posterior with the
    constant mean. After the fit the part with the longer lengthscales (relative to the
    columns' spans) is the trend, whichever way the optimiser took them."""

    def __init__(self, trend: Scale, local: Scale) -> None:
        self.trend, self.local = trend, local
        self.model = ExactGP(Sum([trend, local]), mean="constant")

    @property
    def fit_report(self) -> FitReport | None:
        return self.model.fit_report

    def fit(self, x: torch.Tensor, y: torch.Tensor, max_iter: int = 100) -> DomainTrend:
        """Maximum likelihood from a long trend and a short local part, then condition."""
        spans = (x.max(0).values - x.min(0).values).clamp_min(1e-6)
        self.model.to(device=x.device, dtype=x.dtype)
        for part, fraction in ((self.trend, TREND_START), (self.local, LOCAL_START)):
            start_lengthscales(part, fraction, spans)
            part.outputscale = PART_START
        self.model.likelihood.noise = NOISE_START
        self.model.fit(x, y, max_iter=max_iter, init_from_data=False)
        if _relative_range(self.local, spans) > _relative_range(self.trend, spans):
            self.trend, self.local = self.local, self.trend
        return self

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trend's posterior mean (with the constant) and variance at x, in y's units."""
        return self.model.predict_part(x, self.trend)

    def hyperparameters(self) -> dict:
        """Both parts (outputscales as variances in y's units), the noise and the constant."""
        variance = self.model.y_scale**2
        found = {}
        for name, part in (("trend", self.trend), ("local", self.local)):
            described = part.describe()
            described["outputscale"] *= variance
            found[name] = described
        found["noise"] = float(self.model.likelihood.noise.detach()) * variance
        found["mean"] = self.model.y_mean
        return found


def _relative_range(part: Scale, spans: torch.Tensor) -> float:
    """Geometric mean of a part's lengthscales over its columns' spans."""
    logs = []
    for factor in stationary_factors(part):
        own = spans if factor.dims is None else spans[factor.dims]
        scale = factor.lengthscale.detach().reshape(-1)
        logs.extend(torch.log(scale / (own.mean() if factor.isotropic else own)).tolist())
    return math.exp(sum(logs) / len(logs))
