"""Observation models linking the latent field to the data."""

from __future__ import annotations

import torch
from torch import nn

from gpkernels.params import PositiveParameter

NOISE_FLOOR = 1e-6


class GaussianLikelihood(nn.Module):
    """y = f + e, e ~ N(0, noise): one homoscedastic noise variance, kept above `floor`."""

    def __init__(self, noise: float = 0.1, floor: float = NOISE_FLOOR) -> None:
        super().__init__()
        self.noise_param = PositiveParameter(noise, floor=floor)

    @property
    def noise(self) -> torch.Tensor:
        return self.noise_param.value

    @noise.setter
    def noise(self, value: float | torch.Tensor) -> None:
        self.noise_param.set(value)
