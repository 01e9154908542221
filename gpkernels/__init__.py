"""gpkernels: Gaussian-process kernels, solvers and models in torch (no Ray, xarray or zarr)."""

from gpkernels.base import FitReport, LengthscaleWarning
from gpkernels.exact import ExactGP
from gpkernels.kernels import (
    RBF,
    Kernel,
    Matern,
    MultiScale,
    Product,
    Scale,
    Stationary,
    make_kernel,
    seasonal,
    separable,
)
from gpkernels.kiss import KissGP
from gpkernels.lattice import Lattice
from gpkernels.likelihoods import GaussianLikelihood
from gpkernels.linalg import NumericalWarning, robust_cholesky
from gpkernels.lmc import LMCSVGP
from gpkernels.multitask import MultitaskExactGP, TaskCovariance
from gpkernels.multitask_kiss import MultitaskKissGP
from gpkernels.optim import AdamSteps, LBFGSSteps
from gpkernels.sampling import sample_separable_grid
from gpkernels.svgp import SVGP

__all__ = [
    "AdamSteps",
    "LBFGSSteps",
    "LMCSVGP",
    "MultitaskExactGP",
    "MultitaskKissGP",
    "TaskCovariance",
    "SVGP",
    "RBF",
    "ExactGP",
    "FitReport",
    "GaussianLikelihood",
    "KissGP",
    "Lattice",
    "LengthscaleWarning",
    "Kernel",
    "Matern",
    "MultiScale",
    "NumericalWarning",
    "Product",
    "Scale",
    "Stationary",
    "make_kernel",
    "robust_cholesky",
    "sample_separable_grid",
    "seasonal",
    "separable",
]
