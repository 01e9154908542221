"""Positive hyperparameters stored unconstrained, so optimisers can move them freely."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    """The raw value whose softplus is `value` (stable for large values)."""
    return torch.where(value > 20, value, torch.log(torch.expm1(value.clamp_min(1e-30))))


class PositiveParameter(nn.Module):
    """A tensor of positive values, `floor + softplus(raw)`.

    The floor keeps variances and lengthscales away from zero, where Cholesky
    factorisations and distance scalings break down.
    """

    def __init__(self, value: float | torch.Tensor, floor: float = 0.0) -> None:
        super().__init__()
        self.floor = floor
        value = torch.as_tensor(value, dtype=torch.float64)
        self.raw = nn.Parameter(torch.zeros_like(value))
        self.set(value)

    @property
    def value(self) -> torch.Tensor:
        return self.floor + F.softplus(self.raw)

    @torch.no_grad()
    def set(self, value: float | torch.Tensor) -> None:
        """Set the constrained value; values at or below the floor are refused."""
        value = torch.as_tensor(value, dtype=self.raw.dtype, device=self.raw.device)
        value = value.expand_as(self.raw)
        if not bool(torch.all(value > self.floor)):
            raise ValueError(
                f"hyperparameter value {value.tolist()} must be above its floor {self.floor}"
            )
        self.raw.copy_(inverse_softplus(value - self.floor))
