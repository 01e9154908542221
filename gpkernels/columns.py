"""Per-output standardisation for the multi-output models: each column of y (n, T) to zero
mean and unit variance, and predictions back to each output's units (ICM, KISS ICM, LMC)."""

from __future__ import annotations

import torch


def standardise_columns(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each column of y (n, T, NaN where missing) to zero mean, unit variance; with the
    means and scales. Every column needs at least 2 observations."""
    observed = torch.isfinite(y)
    counts = observed.sum(0)
    if bool((counts < 2).any()):
        raise ValueError(
            f"every variable needs at least 2 observations; counts per variable {counts.tolist()}"
        )
    filled = torch.where(observed, y, torch.zeros_like(y))
    mean = filled.sum(0) / counts
    var = (torch.where(observed, y - mean, torch.zeros_like(y)) ** 2).sum(0) / (counts - 1)
    scale = var.sqrt().clamp_min(1e-12)
    return (y - mean) / scale, mean, scale


def to_output_units(
    means: list[torch.Tensor],
    variances: list[torch.Tensor],
    noise: torch.Tensor | None,
    y_mean: torch.Tensor,
    y_scale: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Join per-block standardised moments (m_b, T), clamp the variances at 0, add each
    output's `noise` (T,) when given, and return both in each output's units, in `dtype`."""
    var = torch.cat(variances).clamp_min(0.0).to(dtype)
    if noise is not None:
        var = var + noise.detach().to(dtype)
    scale = y_scale.to(dtype)
    return torch.cat(means).to(dtype) * scale + y_mean.to(dtype), var * scale**2
