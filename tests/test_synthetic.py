"""The grid sampler reproduces its kernel; synthetic stores carry gaps, truth and CF metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from gpkernels import make_kernel, sample_separable_grid
from pipeline.synthetic import SyntheticGrid, make_synthetic_dataset, write_synthetic

SHAPE = (32, 64, 64)
OUTPUTSCALE = 2.0
AXES = (("matern32", 3.0), ("matern12", 4.0), ("rbf", 3.0))


def axis_kernels():
    kernels = []
    for name, scale in AXES:
        kernel = make_kernel(name)
        kernel.lengthscale = scale
        kernels.append(kernel)
    return kernels


def true_covariance(kernels, lag) -> float:
    value = OUTPUTSCALE
    with torch.no_grad():
        for kernel, step in zip(kernels, lag, strict=True):
            x = torch.tensor([[float(step)]], dtype=torch.float64)
            value *= float(kernel(x, torch.zeros(1, 1, dtype=torch.float64)))
    return value


def empirical_covariance(draws: np.ndarray, lag) -> float:
    head = (slice(None),) + tuple(slice(0, n - s) for n, s in zip(SHAPE, lag, strict=True))
    tail = (slice(None),) + tuple(slice(s, n) for n, s in zip(SHAPE, lag, strict=True))
    return float(np.mean(draws[head] * draws[tail]))


def test_draws_reproduce_the_separable_kernel() -> None:
    kernels = axis_kernels()
    gen = torch.Generator().manual_seed(1)
    draws = np.stack(
        [
            sample_separable_grid(kernels, SHAPE, (1.0, 1.0, 1.0), OUTPUTSCALE, gen).numpy()
            for _ in range(8)
        ]
    )
    assert draws.shape == (8, *SHAPE)
    for lag in [
        (0, 0, 0),
        (1, 0, 0),
        (3, 0, 0),
        (0, 2, 0),
        (0, 4, 0),
        (0, 0, 2),
        (0, 0, 3),
        (1, 1, 1),
        (2, 2, 2),
    ]:
        expected = true_covariance(kernels, lag)
        assert empirical_covariance(draws, lag) == pytest.approx(expected, rel=0.10), lag


def test_sampler_refuses_mismatched_axes() -> None:
    with pytest.raises(ValueError, match="one kernel and one spacing per grid axis"):
        sample_separable_grid(axis_kernels()[:2], SHAPE, (1.0, 1.0, 1.0))


def test_synthetic_dataset_has_gaps_truth_and_cf_attributes(tmp_path) -> None:
    recipe = SyntheticGrid(shape=(6, 40, 50), gap_fraction=0.3, seed=5)
    path = tmp_path / "syn.zarr"
    write_synthetic(str(path), recipe, chunks=(3, 20, 25))
    ds = xr.open_zarr(path)
    observed, truth = ds["tas"].values, ds["tas_true"].values
    gaps = np.isnan(observed)
    assert gaps.mean() == pytest.approx(0.3, abs=0.005)
    assert np.isfinite(truth).all()
    # Observations are truth plus noise of the stated size.
    assert np.nanstd(observed - truth) == pytest.approx(recipe.noise_std, rel=0.1)
    # Blobs make gaps cluster: a gap's neighbour is a gap far more often than chance.
    neighbour_also_gap = (gaps[:, :, 1:] & gaps[:, :, :-1]).sum() / gaps[:, :, 1:].sum()
    assert neighbour_also_gap > 0.5
    for name in ("tas", "tas_true"):
        assert ds[name].attrs["units"] == "K"
        assert ds[name].attrs["standard_name"] == "air_temperature"
    assert ds["lat"].attrs["units"] == "degrees_north"
    assert ds["lon"].attrs["units"] == "degrees_east"
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    assert ds["tas"].encoding["chunks"] == (3, 20, 25)


def test_synthetic_draws_are_seeded() -> None:
    recipe = SyntheticGrid(shape=(3, 10, 10), seed=7)
    a, b = make_synthetic_dataset(recipe), make_synthetic_dataset(recipe)
    xr.testing.assert_identical(a, b)
