"""gpkernels: Gaussian-process kernels, solvers and models in torch (no Ray, xarray or zarr)."""

from gpkernels.exact import ExactGP, FitReport
from gpkernels.kernels import (
    RBF,
    Kernel,
    Matern,
    Product,
    Scale,
    Stationary,
    make_kernel,
    separable,
)
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import NumericalWarning, robust_cholesky
from gpkernels.sampling import sample_separable_grid

__all__ = [
    "RBF",
    "ExactGP",
    "FitReport",
    "GaussianLikelihood",
    "Kernel",
    "Matern",
    "NumericalWarning",
    "Product",
    "Scale",
    "Stationary",
    "make_kernel",
    "robust_cholesky",
    "sample_separable_grid",
    "separable",
]
