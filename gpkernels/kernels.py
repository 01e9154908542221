"""Covariance functions: stationary kernels on chosen input columns, products and a scale.

Inputs stay in physical units (days, degrees, metres) and lengthscales are in those
units, so learned values read directly and transfer between tiles of one grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gpkernels.params import PositiveParameter

LENGTHSCALE_FLOOR = 1e-6


class Kernel(nn.Module):
    """A covariance function k(x1, x2) on row-wise inputs of shape (n, d)."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        """k(x_i, x_i) for every row, without forming the matrix."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The kernel's kind and current hyperparameters as plain Python values."""
        raise NotImplementedError

    def __mul__(self, other: Kernel) -> Product:
        return Product([self, other])


class Stationary(Kernel):
    """A kernel of the scaled distance r = ||(x1 - x2) / lengthscale|| over some columns.

    `dims` picks the input columns the kernel sees (all of them when None); with
    several columns the lengthscales are per column (ARD) and the distance Euclidean.
    """

    kind = "stationary"

    def __init__(
        self,
        lengthscale: float | Sequence[float] = 1.0,
        dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        scales = (
            [float(lengthscale)] if isinstance(lengthscale, (int, float)) else list(lengthscale)
        )
        if dims is not None:
            dims = [int(d) for d in dims]
            if len(scales) == 1:
                scales = scales * len(dims)
            if len(scales) != len(dims):
                raise ValueError(
                    f"{len(scales)} lengthscales given for {len(dims)} dims {dims}: "
                    "give one lengthscale, or one per dim"
                )
        self.dims = dims
        self.lengthscale_param = PositiveParameter(
            torch.tensor(scales, dtype=torch.float64), floor=LENGTHSCALE_FLOOR
        )

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.lengthscale_param.value

    @lengthscale.setter
    def lengthscale(self, value: float | Sequence[float] | torch.Tensor) -> None:
        self.lengthscale_param.set(torch.as_tensor(value))

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dims is None else x[:, self.dims]

    def squared_distance(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Pairwise squared scaled distances, summed from exact per-column differences.

        The |a|^2 + |b|^2 - 2ab shortcut loses sqrt(eps) in the distance of close
        points, which rough kernels (Matérn 1/2) turn into visible errors.
        """
        a = self._columns(x1) / self.lengthscale
        b = self._columns(x2) / self.lengthscale
        sq = (a[:, :1] - b[:, 0]) ** 2
        for col in range(1, a.shape[1]):
            sq = sq + (a[:, col : col + 1] - b[:, col]) ** 2
        return sq

    def profile(self, sq: torch.Tensor) -> torch.Tensor:
        """k as a function of the squared scaled distance, with k(0) = 1."""
        raise NotImplementedError

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.profile(self.squared_distance(x1, x2))

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "dims": self.dims,
            "lengthscale": self.lengthscale.detach().cpu().tolist(),
        }


class RBF(Stationary):
    """Squared exponential: exp(-r^2 / 2); infinitely smooth fields."""

    kind = "rbf"

    def profile(self, sq: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * sq)


class Matern(Stationary):
    """Matérn with smoothness nu in {1/2, 3/2, 5/2}; nu = 1/2 is the exponential kernel."""

    def __init__(
        self,
        nu: float = 1.5,
        lengthscale: float | Sequence[float] = 1.0,
        dims: Sequence[int] | None = None,
    ) -> None:
        if nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"Matern nu={nu} is not supported: use 0.5, 1.5 or 2.5")
        super().__init__(lengthscale, dims)
        self.nu = nu

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"matern{int(2 * self.nu)}2"

    def profile(self, sq: torch.Tensor) -> torch.Tensor:
        # The floor keeps the gradient of sqrt finite at zero distance.
        r = torch.sqrt(sq.clamp_min(1e-36))
        if self.nu == 0.5:
            return torch.exp(-r)
        if self.nu == 1.5:
            s = math.sqrt(3.0) * r
            return (1.0 + s) * torch.exp(-s)
        s = math.sqrt(5.0) * r
        return (1.0 + s + s * s / 3.0) * torch.exp(-s)


class Product(Kernel):
    """Product of kernels, e.g. one per axis for a separable space-time covariance."""

    def __init__(self, kernels: Sequence[Kernel]) -> None:
        super().__init__()
        flat: list[Kernel] = []
        for kernel in kernels:
            flat.extend(kernel.factors if isinstance(kernel, Product) else [kernel])
        self.factors = nn.ModuleList(flat)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        out = self.factors[0](x1, x2)
        for kernel in self.factors[1:]:
            out = out * kernel(x1, x2)
        return out

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        out = self.factors[0].diag(x)
        for kernel in self.factors[1:]:
            out = out * kernel.diag(x)
        return out

    def describe(self) -> dict:
        return {"kind": "product", "factors": [k.describe() for k in self.factors]}


class Scale(Kernel):
    """outputscale * base: the marginal variance of the latent field."""

    def __init__(self, base: Kernel, outputscale: float = 1.0) -> None:
        super().__init__()
        self.base = base
        self.outputscale_param = PositiveParameter(outputscale, floor=1e-8)

    @property
    def outputscale(self) -> torch.Tensor:
        return self.outputscale_param.value

    @outputscale.setter
    def outputscale(self, value: float | torch.Tensor) -> None:
        self.outputscale_param.set(value)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.outputscale * self.base(x1, x2)

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputscale * self.base.diag(x)

    def describe(self) -> dict:
        return {
            "kind": "scale",
            "outputscale": float(self.outputscale.detach()),
            "base": self.base.describe(),
        }


KERNELS_BY_NAME = {
    "rbf": lambda dims: RBF(dims=dims),
    "matern12": lambda dims: Matern(0.5, dims=dims),
    "matern32": lambda dims: Matern(1.5, dims=dims),
    "matern52": lambda dims: Matern(2.5, dims=dims),
}


def make_kernel(name: str, dims: Sequence[int] | None = None) -> Stationary:
    """A stationary kernel by name ('rbf', 'matern12', 'matern32', 'matern52')."""
    try:
        return KERNELS_BY_NAME[name](dims)
    except KeyError:
        raise ValueError(
            f"unknown kernel {name!r}: choose one of {sorted(KERNELS_BY_NAME)}"
        ) from None


def separable(names: Sequence[str], outputscale: float = 1.0) -> Scale:
    """outputscale * prod_i k_i(x_i): one named 1-D kernel per input column."""
    return Scale(Product([make_kernel(n, dims=[i]) for i, n in enumerate(names)]), outputscale)


def stationary_factors(kernel: Kernel) -> list[Stationary]:
    """Every stationary kernel inside a (scaled) product, in order."""
    if isinstance(kernel, Scale):
        return stationary_factors(kernel.base)
    if isinstance(kernel, Product):
        return [s for k in kernel.factors for s in stationary_factors(k)]
    if isinstance(kernel, Stationary):
        return [kernel]
    raise TypeError(f"{type(kernel).__name__} has no stationary factors")
