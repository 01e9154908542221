"""Distance bands and gap-shaped hold-outs (pipeline/bands.py, pipeline/holdout.py) against
brute force and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from gpkernels import MultiScale, Product, Scale, make_kernel, seasonal
from pipeline.bands import (
    RANGE_EDGES,
    band_index,
    band_labels,
    banded_scores,
    coverage_warnings,
    distance_to_observed,
    fill_shares,
    reweighted,
)
from pipeline.holdout import DEEP_RING, deepened, fill_cells, moved_gaps
from pipeline.learned_ranges import kernel_lengthscales


def test_distance_to_the_nearest_observation_is_the_brute_force_one() -> None:
    gen = np.random.default_rng(0)
    observed = gen.random((9, 13)) < 0.1
    ours = distance_to_observed(observed)
    cells = np.argwhere(np.ones_like(observed))
    seen = np.argwhere(observed)
    brute = np.sqrt(((cells[:, None, :] - seen[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(ours.ravel(), brute)
    assert np.isinf(distance_to_observed(np.zeros((3, 3), dtype=bool))).all()
    # In lengthscales: each axis' steps scaled by how many cells one lengthscale spans.
    per_range = np.array([4.0, 0.5])
    scaled = np.sqrt((((cells[:, None, :] - seen[None, :, :]) / per_range) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(distance_to_observed(observed, 1 / per_range).ravel(), scaled)


def test_range_bands_are_labelled_by_their_edges() -> None:
    assert band_labels(RANGE_EDGES) == ["0-0.25", "0.25-0.5", "0.5-1", "1-2", "2+"]
    assert band_index(np.array([0.1, 0.5, 0.6, 3.0]), RANGE_EDGES).tolist() == [0, 1, 2, 4]


def test_each_column_takes_its_longest_learned_range_and_periodic_factors_none() -> None:
    """A two-scale isotropic space kernel (ranges 0.3 and 2.4) times a seasonal time factor
    (a Matérn range of 5 days plus a yearly cycle whose lengthscale is a fraction of it);
    a part with under 5% of the variance sets no range."""
    space = make_kernel("matern12", dims=[1, 2], isotropic=True)
    space.lengthscale = 0.3
    long = make_kernel("matern12", dims=[1, 2], isotropic=True)
    long.lengthscale = 2.4
    time = seasonal("matern32", 365.25, dim=0)
    time.factors[0].lengthscale = 5.0
    kernel = Scale(Product([time, MultiScale([Scale(space), Scale(long)])]))
    assert kernel_lengthscales(kernel.describe()) == pytest.approx({0: 5.0, 1: 2.4, 2: 2.4})
    negligible = Scale(MultiScale([Scale(space, 1.0), Scale(long, 0.04)]))  # 3.8% of it
    assert kernel_lengthscales(negligible.describe()) == pytest.approx({1: 0.3, 2: 0.3})
    ard = make_kernel("rbf", dims=[0, 1])
    ard.lengthscale = [1.5, 7.0]
    assert kernel_lengthscales(ard.describe()) == pytest.approx({0: 1.5, 1: 7.0})
    assert kernel_lengthscales(None) == {}


def test_bands_hold_distances_in_half_open_intervals() -> None:
    assert band_labels() == ["0-2", "2-4", "4-8", "8-16", "16+"]
    distances = np.array([1.0, 2.0, 2.01, 4.0, 7.9, 16.0, 16.5, 90.0])
    assert band_index(distances).tolist() == [0, 0, 1, 1, 2, 3, 4, 4]
    shares = fill_shares(distances)
    assert shares == pytest.approx(
        {"0-2": 2 / 8, "2-4": 2 / 8, "4-8": 1 / 8, "8-16": 1 / 8, "16+": 2 / 8}
    )
    assert fill_shares(np.array([])) == {}


def test_the_headline_weights_the_bands_like_the_cells_to_fill() -> None:
    """Near cells: error 1 everywhere, all covered; far cells: error 3, none covered. Filling
    75% near and 25% far: RMSE sqrt(0.75 + 0.25 * 9), coverage 0.75."""
    truth = np.zeros(20)
    mean = np.r_[np.ones(10), 3 * np.ones(10)]
    std = np.r_[np.ones(10), 0.1 * np.ones(10)]
    distance = np.r_[np.ones(10), 20 * np.ones(10)]
    bands = banded_scores(mean, std, truth, distance)
    assert set(bands) == {"0-2", "16+"}
    head = reweighted(bands, {"0-2": 0.75, "2-4": 0.0, "16+": 0.25})
    assert head.rmse == pytest.approx(math.sqrt(0.75 + 0.25 * 9))
    assert head.mae == pytest.approx(0.75 + 0.25 * 3)
    assert head.coverage95 == pytest.approx(0.75) and head.measured_share == 1.0
    # A band to fill with no hidden cells in it is left out and said so, not guessed.
    partial = reweighted(bands, {"0-2": 0.5, "4-8": 0.5})
    assert partial.measured_share == 0.5 and partial.rmse == pytest.approx(1.0)
    assert reweighted(bands, {}) is None


def test_coverage_outside_the_range_is_warned_about_where_cells_suffice() -> None:
    bands = {
        "0-2": {"n": 500, "coverage95": 0.95},
        "8-16": {"n": 40, "coverage95": 0.62},
        "16+": {"n": 12, "coverage95": 0.10},  # too few cells to say
    }
    warnings = coverage_warnings("lst", bands)
    assert len(warnings) == 1 and "0.620 at 8-16 cells" in warnings[0]
    assert "understates" in warnings[0] and "model.scales: 2" in warnings[0]


def test_moved_gaps_keep_the_input_gaps_shapes_on_observed_cells() -> None:
    observed = np.ones((40, 60), dtype=bool)
    observed[5:25, 10:30] = False  # one 20 x 20 cloud
    observed[30:33, 40:43] = False  # and a small one
    fill = fill_cells(observed, ("lat", "lon"), None)
    hidden = moved_gaps(observed, fill, 0.5, np.random.default_rng(0))
    assert not (hidden & ~observed).any()
    assert hidden.sum() == 400 + 9  # both pieces, whole: 0.5 of the cells is more
    pieces, count = ndimage.label(hidden)
    assert count == 2 and sorted(np.bincount(pieces.ravel())[1:]) == [9, 400]
    # The moved cloud's middle is as deep as the real cloud's: 10 cells from observed data.
    assert distance_to_observed(observed & ~hidden).max() == pytest.approx(10.0)
    one_piece = moved_gaps(observed, fill, 0.001, np.random.default_rng(0))
    assert one_piece.sum() in (9, 400)


def test_nested_deletions_make_moved_gaps_deeper_by_the_ring() -> None:
    observed = np.ones((80, 80), dtype=bool)
    gaps = np.zeros_like(observed)
    gaps[20:40, 20:40] = True  # a 20 x 20 moved gap: its middle is 10 cells deep
    gaps[60:63, 60:63] = True
    ring = deepened(observed, gaps, 1.0, np.random.default_rng(0))  # room for every piece
    assert not (ring & gaps).any() and ring.any()
    left = observed & ~gaps & ~ring
    assert distance_to_observed(left).max() == pytest.approx(10.0 + DEEP_RING)
    # the ring is the observed cells within DEEP_RING of a gap, nothing further
    near = distance_to_observed(gaps) <= DEEP_RING  # distance to the nearest gap cell
    assert np.array_equal(ring, near & ~gaps)
    one = deepened(observed, gaps, 0.001, np.random.default_rng(0))  # budget of one piece
    pieces, count = ndimage.label(one | gaps)
    assert 0 < one.sum() < ring.sum() and count == 2


def test_cells_never_observed_along_time_are_not_cells_to_fill() -> None:
    observed = np.ones((4, 5, 6), dtype=bool)
    observed[:, 1, 1] = False  # land
    observed[2, 3, 3] = False  # a gap
    fill = fill_cells(observed, ("time", "lat", "lon"), "time")
    assert fill.sum() == 1 and fill[2, 3, 3]
    assert fill_cells(observed, ("time", "lat", "lon"), None).sum() == 5
