"""Dense linear algebra with its numerical trouble reported, never hidden."""

from __future__ import annotations

import math
import warnings

import torch

LOG_2PI = math.log(2.0 * math.pi)  # the Gaussian log-density's constant, per dimension


class NumericalWarning(UserWarning):
    """A solve needed help (jitter) or did not converge; the message carries the numbers."""


def robust_cholesky(
    matrix: torch.Tensor, max_tries: int = 6, warn: bool = True
) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of a symmetric PSD matrix, adding jitter only if needed.

    Returns the factor and the jitter added to the diagonal (0.0 when none was).
    Jitter starts at 1e-8 (float64) or 1e-6 (float32) times the mean diagonal and
    grows tenfold per try; a `NumericalWarning` reports the amount when `warn`.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return factor, 0.0
    scale = float(matrix.diagonal().mean().detach())
    jitter = scale * (1e-8 if matrix.dtype == torch.float64 else 1e-6)
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    for _ in range(max_tries):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            if warn:
                warnings.warn(
                    f"Cholesky of a {matrix.shape[0]}x{matrix.shape[0]} {matrix.dtype} matrix "
                    f"needed jitter {jitter:.3g} ({jitter / scale:.1e} of its mean diagonal "
                    f"{scale:.3g}) to factorise",
                    NumericalWarning,
                    stacklevel=2,
                )
            return factor, jitter
        jitter *= 10.0
    raise torch.linalg.LinAlgError(
        f"Cholesky failed on a {matrix.shape[0]}x{matrix.shape[0]} {matrix.dtype} matrix even "
        f"with jitter {jitter / 10:.3g} (mean diagonal {scale:.3g}): the kernel matrix is not "
        "positive definite; raise the noise floor or use float64"
    )
