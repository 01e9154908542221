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

    @property
    def columns(self) -> frozenset[int] | None:
        """Input columns the kernel reads (None: all of them)."""
        raise NotImplementedError

    def __mul__(self, other: Kernel) -> Product:
        return Product([self, other])

    def __add__(self, other: Kernel) -> Sum:
        return Sum([self, other])


class Stationary(Kernel):
    """A kernel of the scaled distance r = ||(x1 - x2) / lengthscale|| over some columns.

    `dims` picks the input columns the kernel sees (all of them when None); with
    several columns the distance is Euclidean and the lengthscales are per column (ARD),
    or one shared lengthscale with `isotropic` (geostatistics' distance-based covariances,
    for columns in the same units, e.g. projected x and y).
    """

    kind = "stationary"

    def __init__(
        self,
        lengthscale: float | Sequence[float] = 1.0,
        dims: Sequence[int] | None = None,
        isotropic: bool = False,
    ) -> None:
        super().__init__()
        scales = (
            [float(lengthscale)] if isinstance(lengthscale, (int, float)) else list(lengthscale)
        )
        if isotropic and len(scales) != 1:
            raise ValueError(f"an isotropic kernel has one lengthscale, not {len(scales)}")
        self.isotropic = isotropic
        if dims is not None:
            dims = [int(d) for d in dims]
            if len(scales) == 1 and not isotropic:
                scales = scales * len(dims)
            if len(scales) != len(dims) and not isotropic:
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

    @property
    def columns(self) -> frozenset[int] | None:
        return None if self.dims is None else frozenset(self.dims)

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
        found = {
            "kind": self.kind,
            "dims": self.dims,
            "lengthscale": self.lengthscale.detach().cpu().tolist(),
        }
        return {**found, "isotropic": True} if self.isotropic else found


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
        isotropic: bool = False,
    ) -> None:
        if nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"Matern nu={nu} is not supported: use 0.5, 1.5 or 2.5")
        super().__init__(lengthscale, dims, isotropic)
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


class _Combination(Kernel):
    """Shared plumbing of sums and products of kernels."""

    def __init__(self, kernels: Sequence[Kernel]) -> None:
        super().__init__()
        flat: list[Kernel] = []
        for kernel in kernels:
            flat.extend(kernel.factors if type(kernel) is type(self) else [kernel])
        self.factors = nn.ModuleList(flat)

    @property
    def columns(self) -> frozenset[int] | None:
        found = [k.columns for k in self.factors]
        return None if any(c is None for c in found) else frozenset().union(*found)

    def describe(self) -> dict:
        return {
            "kind": type(self).__name__.lower(),
            "factors": [k.describe() for k in self.factors],
        }


class Product(_Combination):
    """Product of kernels, e.g. one per axis for a separable space-time covariance."""

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


class Sum(_Combination):
    """Sum of kernels on the same columns, e.g. time = Matérn 3/2 + periodic(365.25 days)."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        out = self.factors[0](x1, x2)
        for kernel in self.factors[1:]:
            out = out + kernel(x1, x2)
        return out

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        out = self.factors[0].diag(x)
        for kernel in self.factors[1:]:
            out = out + kernel.diag(x)
        return out


class MultiScale(Sum):
    """Copies of one kernel at different ranges, each with its own share of the variance:
    short-range variation near the data and a long range that carries information deep
    into large gaps, where one compromise range would be too short there and too long
    near the data. Fits start the copies `RANGE_RATIO` apart (see `start_ranges`)."""

    RANGE_RATIO = 8.0

    def __init__(self, parts: Sequence[Scale]) -> None:
        if len(parts) < 2 or not all(isinstance(p, Scale) for p in parts):
            raise ValueError("a MultiScale kernel sums two or more Scale(kernel) parts")
        super().__init__(parts)

    def start_ranges(self, fraction: float, spans: torch.Tensor) -> None:
        """Part j's lengthscales to fraction * RANGE_RATIO^j of its columns' spans, and equal
        shares of the variance."""
        for j, part in enumerate(self.factors):
            start_lengthscales(part, fraction * self.RANGE_RATIO**j, spans)
            part.outputscale = 1.0 / len(self.factors)


def start_lengthscales(kernel: Kernel, fraction: float, spans: torch.Tensor) -> None:
    """Every stationary factor's lengthscales to `fraction` of its columns' spans (an
    isotropic one: of their mean span); the copies of a MultiScale start apart."""
    if isinstance(kernel, MultiScale):
        kernel.start_ranges(fraction, spans)
        return
    if isinstance(kernel, Stationary):
        own = spans if kernel.dims is None else spans[kernel.dims]
        kernel.lengthscale = fraction * (own.mean(0, keepdim=True) if kernel.isotropic else own)
        return
    children = getattr(kernel, "factors", None) or [getattr(kernel, "base", None)]
    for child in children:
        if isinstance(child, Kernel):
            start_lengthscales(child, fraction, spans)


class Periodic(Kernel):
    """exp(-2 sin^2(pi |x1 - x2| / period) / lengthscale^2) on one input column.

    The lengthscale is relative to the period (unitless); the period is in the
    column's units and fixed by default (365.25 days for an annual cycle).
    """

    kind = "periodic"

    def __init__(
        self, period: float, lengthscale: float = 1.0, dim: int = 0, learn_period: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.lengthscale_param = PositiveParameter(lengthscale, floor=LENGTHSCALE_FLOOR)
        self.period_param = PositiveParameter(period, floor=LENGTHSCALE_FLOOR)
        self.period_param.raw.requires_grad_(learn_period)

    @property
    def columns(self) -> frozenset[int]:
        return frozenset({self.dim})

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        lag = x1[:, self.dim : self.dim + 1] - x2[:, self.dim]
        phase = torch.sin(math.pi * lag / self.period_param.value)
        return torch.exp(-2.0 * phase**2 / self.lengthscale_param.value**2)

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "dims": [self.dim],
            "period": float(self.period_param.value.detach()),
            "lengthscale": float(self.lengthscale_param.value.detach()),
        }


class Wrapped(Kernel):
    """A stationary kernel on a circle of circumference `period` (e.g. 360 degrees of longitude).

    Summing the base kernel over the periodic images keeps it positive definite, and
    on a regular grid that closes the circle it gives a circulant matrix.
    """

    IMAGES = 2

    def __init__(self, base: Stationary, period: float) -> None:
        super().__init__()
        if base.dims is None or len(base.dims) != 1:
            raise ValueError("Wrapped needs a base kernel on exactly one column, e.g. dims=[2]")
        self.base = base
        self.period = float(period)

    @property
    def columns(self) -> frozenset[int]:
        return self.base.columns

    def _shifted(self, x2: torch.Tensor, images: int) -> torch.Tensor:
        shifted = x2.clone()
        shifted[:, self.base.dims[0]] += images * self.period
        return shifted

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        out = self.base(x1, x2)
        for m in range(1, self.IMAGES + 1):
            out = out + self.base(x1, self._shifted(x2, m)) + self.base(x1, self._shifted(x2, -m))
        return out

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(1, x.shape[1], dtype=x.dtype, device=x.device)
        return self.forward(zero, zero)[0, 0] * torch.ones(
            x.shape[0], dtype=x.dtype, device=x.device
        )

    def describe(self) -> dict:
        return {"kind": "wrapped", "period": self.period, "base": self.base.describe()}


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

    @property
    def columns(self) -> frozenset[int] | None:
        return self.base.columns

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
    "rbf": lambda dims, iso: RBF(dims=dims, isotropic=iso),
    "matern12": lambda dims, iso: Matern(0.5, dims=dims, isotropic=iso),
    "matern32": lambda dims, iso: Matern(1.5, dims=dims, isotropic=iso),
    "matern52": lambda dims, iso: Matern(2.5, dims=dims, isotropic=iso),
}


def make_kernel(
    name: str, dims: Sequence[int] | None = None, isotropic: bool = False
) -> Stationary:
    """A stationary kernel by name ('rbf', 'matern12', 'matern32', 'matern52'); with
    `isotropic`, one lengthscale for all its columns (Euclidean distance)."""
    try:
        return KERNELS_BY_NAME[name](dims, isotropic)
    except KeyError:
        raise ValueError(
            f"unknown kernel {name!r}: choose one of {sorted(KERNELS_BY_NAME)}"
        ) from None


def seasonal(name: str, period: float, dim: int) -> Sum:
    """k(t) = k_name(t) + w * periodic(t; period) on one column: a trend that decays plus a
    cycle that repeats (e.g. 365.25 days), so forecasts carry the cycle forward."""
    return Sum([make_kernel(name, dims=[dim]), Scale(Periodic(period, dim=dim), 0.5)])


def separable(factors: Sequence[str | Kernel], outputscale: float = 1.0) -> Scale:
    """outputscale * prod_i k_i(x_i): one 1-D kernel per input column, by name or built."""
    built = [make_kernel(f, dims=[i]) if isinstance(f, str) else f for i, f in enumerate(factors)]
    return Scale(Product(built), outputscale)


def is_separable(kernel: Kernel, ndim: int) -> bool:
    """Whether `kernel` is outputscale * prod_i k_i(x_i), one factor per column (Kronecker
    structure on grids)."""
    try:
        axis_factors(kernel, ndim)
    except ValueError:
        return False
    return True


def lag_table(kernel: Kernel, spacings: Sequence[float], shape: Sequence[int]) -> torch.Tensor:
    """k(lag, 0) at every non-negative grid lag, shape `shape` (the first column of the
    multilevel Toeplitz matrix of a stationary kernel on a regular grid).

    Each factor of a product is evaluated on its own columns' lags only and the factors
    broadcast together, so the cost is the grid size, not the grid size times d.
    The kernel must be even in every column (all of ours are): k(l) = k(|l_1|, |l_2|, ...).
    """
    ndim = len(shape)
    base = kernel.base if isinstance(kernel, Scale) else kernel
    parts = list(base.factors) if isinstance(base, Product) else [base]
    dtype = torch.float64
    device = next((p.device for p in kernel.parameters()), torch.device("cpu"))
    table = torch.ones(tuple(shape), dtype=dtype, device=device)
    for part in parts:
        cols = sorted(part.columns) if part.columns is not None else list(range(ndim))
        axes = [torch.arange(shape[c], dtype=dtype, device=device) * spacings[c] for c in cols]
        lags = torch.cartesian_prod(*axes).reshape(-1, len(cols))
        points = torch.zeros(lags.shape[0], ndim, dtype=dtype, device=device)
        points[:, cols] = lags
        values = part(points, points.new_zeros(1, ndim))[:, 0]
        view = [shape[c] if c in cols else 1 for c in range(ndim)]
        table = table * values.reshape(view)
    return table


def stationary_factors(kernel: Kernel) -> list[Stationary]:
    """Every distance-based (Stationary) kernel inside a kernel, in order."""
    return _parts_of_type(kernel, Stationary)


def periodic_factors(kernel: Kernel) -> list[Periodic]:
    """Every Periodic kernel inside a kernel, in order."""
    return _parts_of_type(kernel, Periodic)


def multiscale_parts(kernel: Kernel) -> list[Scale]:
    """The parts of every MultiScale inside a kernel, in order."""
    return [part for multi in _parts_of_type(kernel, MultiScale) for part in multi.factors]


def _parts_of_type(kernel: Kernel, kind: type) -> list:
    if isinstance(kernel, kind):
        return [kernel]
    children = getattr(kernel, "factors", None) or [getattr(kernel, "base", None)]
    return [s for k in children if isinstance(k, Kernel) for s in _parts_of_type(k, kind)]


def axis_factors(kernel: Kernel, ndim: int) -> tuple[Scale, list[Kernel]]:
    """Split outputscale * prod_i k_i(x_i) into its scale and one factor per input column.

    Structured (grid) solvers need this separable form; any other kernel is refused
    with the form it should take.
    """
    hint = "use Scale(Product([k_0 on dims=[0], k_1 on dims=[1], ...])), e.g. separable(...)"
    if not isinstance(kernel, Scale):
        raise ValueError(f"a grid model needs an outputscale around a separable kernel: {hint}")
    return kernel, product_factors(kernel.base, ndim, hint)


def product_factors(kernel: Kernel, ndim: int, hint: str) -> list[Kernel]:
    """One factor per input column of a product kernel (or of a single 1-D kernel)."""
    parts = kernel.factors if isinstance(kernel, Product) else [kernel]
    by_axis: list[Kernel | None] = [None] * ndim
    for part in parts:
        cols = part.columns
        if cols is None and ndim == 1:  # a kernel over all columns of 1-D inputs
            cols = [0]
        if cols is None or len(cols) != 1:
            raise ValueError(f"factor {part.describe()} spans columns {cols}: {hint}")
        (axis,) = cols
        if axis >= ndim or by_axis[axis] is not None:
            raise ValueError(f"column {axis} has no single factor for a {ndim}-D grid: {hint}")
        by_axis[axis] = part
    missing = [i for i, k in enumerate(by_axis) if k is None]
    if missing:
        raise ValueError(f"columns {missing} have no kernel factor: {hint}")
    return by_axis  # type: ignore[return-value]


def axis_column(factor: Kernel, axis: int, lags: torch.Tensor, ndim: int) -> torch.Tensor:
    """k(lag) of one axis factor at the given lags: the first column of its Toeplitz matrix."""
    points = torch.zeros(lags.shape[0], ndim, dtype=lags.dtype, device=lags.device)
    points[:, axis] = lags
    origin = torch.zeros(1, ndim, dtype=lags.dtype, device=lags.device)
    return factor(points, origin)[:, 0]
