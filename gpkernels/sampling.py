"""Exact GP draws on regular grids by circulant embedding: O(M log M), no dense Cholesky.

A separable kernel on a regular grid has a covariance that is a Kronecker product of
per-axis Toeplitz matrices. Each Toeplitz matrix embeds in a circulant one whose
eigenvalues are one FFT of its first row; the d-dimensional FFT of white noise scaled
by the square roots of the outer product of those eigenvalues is then an exact draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpkernels.kernels import Stationary

MAX_EMBEDDING_GROWTH = 8


def circulant_eigenvalues(kernel: Stationary, n: int, spacing: float) -> torch.Tensor:
    """Eigenvalues of the smallest circulant embedding (at least 2(n-1)) that is PSD.

    The embedding is doubled until its negative eigenvalues are below 1e-10 of the
    largest, which always happens for the Matérn family and for RBF once the
    embedding spans several lengthscales. Tiny negatives left are set to zero.
    """
    size = max(2 * (n - 1), 1)
    for _ in range(MAX_EMBEDDING_GROWTH):
        lags = torch.arange(size, dtype=torch.float64)
        lags = torch.minimum(lags, size - lags) * spacing
        with torch.no_grad():
            row = kernel(lags[:, None], torch.zeros(1, 1, dtype=torch.float64))
        eig = torch.fft.fft(row[:, 0]).real
        if float(eig.min()) >= -1e-10 * float(eig.max()):
            return eig.clamp_min(0.0)
        size *= 2
    raise ValueError(
        f"no PSD circulant embedding for a {n}-point axis with spacing {spacing} and "
        f"lengthscale {kernel.lengthscale.tolist()} up to size {size // 2}: the lengthscale is "
        "too long for this axis; shorten it or use a Matérn kernel"
    )


def sample_separable_grid(
    axis_kernels: Sequence[Stationary],
    shape: Sequence[int],
    spacings: Sequence[float],
    outputscale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One float64 draw of f ~ GP(0, outputscale * prod_i k_i) on a regular grid.

    `axis_kernels[i]` is a 1-D stationary kernel for axis i, whose points are
    `spacings[i]` apart in that kernel's units.
    """
    if not (len(axis_kernels) == len(shape) == len(spacings)):
        raise ValueError("give one kernel and one spacing per grid axis")
    eigs = [
        circulant_eigenvalues(k, n, h)
        for k, n, h in zip(axis_kernels, shape, spacings, strict=True)
    ]
    spectrum = torch.ones((), dtype=torch.float64)
    for axis, eig in enumerate(eigs):
        view = [1] * len(eigs)
        view[axis] = eig.shape[0]
        spectrum = spectrum * eig.reshape(view)
    embedded_size = spectrum.numel()
    noise = torch.randn((*spectrum.shape, 2), dtype=torch.float64, generator=generator)
    white = torch.complex(noise[..., 0], noise[..., 1])
    field = torch.fft.fftn(torch.sqrt(spectrum * outputscale / embedded_size) * white).real
    return field[tuple(slice(0, n) for n in shape)].contiguous()
