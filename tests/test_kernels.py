"""Kernels against scikit-learn's kernel matrices and closed forms, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import kernels as sk

from gpkernels import RBF, Matern, Product, Scale, make_kernel, separable
from tests.conftest import DEVICES


@pytest.fixture
def points() -> torch.Tensor:
    return torch.rand(60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (RBF([0.7, 1.3, 2.0]), sk.RBF([0.7, 1.3, 2.0])),
        (Matern(0.5, [0.7, 1.3, 2.0]), sk.Matern([0.7, 1.3, 2.0], nu=0.5)),
        (Matern(1.5, [0.7, 1.3, 2.0]), sk.Matern([0.7, 1.3, 2.0], nu=1.5)),
        (Matern(2.5, [0.7, 1.3, 2.0]), sk.Matern([0.7, 1.3, 2.0], nu=2.5)),
    ],
    ids=["rbf", "matern12", "matern32", "matern52"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_ard_kernels_match_sklearn(ours, theirs, points, device) -> None:
    with torch.no_grad():
        ours = ours.to(device)
        ours_k = ours(points.to(device), points[:20].to(device)).cpu().numpy()
        diag = ours.diag(points.to(device)).cpu().numpy()
    np.testing.assert_allclose(ours_k, theirs(points.numpy(), points[:20].numpy()), rtol=1e-12)
    np.testing.assert_allclose(diag, 1.0)


def test_product_of_axis_rbfs_is_ard_rbf(points) -> None:
    product = Product([RBF(0.5, dims=[0]), RBF(1.5, dims=[1]), RBF(3.0, dims=[2])])
    with torch.no_grad():
        torch.testing.assert_close(product(points, points), RBF([0.5, 1.5, 3.0])(points, points))


def test_scale_and_separable(points) -> None:
    kernel = separable(["matern12", "matern32", "rbf"], outputscale=2.5)
    with torch.no_grad():
        expected = 2.5 * (
            Matern(0.5, dims=[0])(points, points)
            * Matern(1.5, dims=[1])(points, points)
            * RBF(dims=[2])(points, points)
        )
        torch.testing.assert_close(kernel(points, points), expected)
        torch.testing.assert_close(kernel.diag(points), torch.full((60,), 2.5, dtype=torch.float64))
    assert kernel.describe()["outputscale"] == pytest.approx(2.5)


def test_matern12_is_exact_at_zero_distance(points) -> None:
    """Rough kernels expose distance round-off; the diagonal must be exactly 1."""
    with torch.no_grad():
        k = Matern(0.5, 0.01)(points.float(), points.float())
    assert torch.all(k.diagonal() == 1.0)


def test_hyperparameters_keep_float64_precision() -> None:
    assert RBF([1.3]).lengthscale.item() == 1.3
    assert Scale(RBF(), 1.7).outputscale.item() == pytest.approx(1.7, rel=1e-15)


def test_bad_kernel_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="nu=1.0 is not supported"):
        Matern(1.0)
    with pytest.raises(ValueError, match="2 lengthscales given for 3 dims"):
        RBF([1.0, 2.0], dims=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown kernel 'matern33'"):
        make_kernel("matern33")
    with pytest.raises(ValueError, match="must be above its floor"):
        RBF().lengthscale = -1.0
