"""Hold-out validation: hide observed cells (scattered, contiguous blocks, and the input's
own gaps moved onto observed cells), predict them from the rest, and score the predictions
against what was hidden, per kind and per band of distance to the nearest observation.

Random cells test interpolation between close neighbours; blocks and moved gaps test what
users need most, filling large gaps, where a model's variances are least trustworthy. The
moved gaps have the shapes (and so the depths) of the gaps the job will fill; nested
deletions (`deep`: a ring of observed cells hidden around some of them) make those gaps
deeper still, so that the bands far from data, where a model's large scales decide, hold
enough cells to score.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import ndimage

from pipeline.bands import (
    BAND_EDGES,
    RANGE_EDGES,
    WARN_MIN_CELLS,
    Headline,
    banded_scores,
    coverage_warnings,
    distance_to_observed,
    fill_shares,
    reweighted,
)
from pipeline.errors import InputError
from pipeline.learned_ranges import cells_per_lengthscale
from pipeline.scores import score
from pipeline.store import std_name

GAP_FRACTION = 0.15  # share of observed cells hidden under the moved gaps
DEEP_FRACTION = 0.10  # share hidden in rings around some of them (nested deletions)
DEEP_RING = BAND_EDGES[-1] / 2  # ring width in cells: a gap 8 cells deep becomes 16 deep


@dataclass
class HoldOut:
    """Which cells were hidden, per variable: `random`, `blocks`, `gaps` and `deep` (boolean
    grids, disjoint), and `fill`: the cells the job itself fills (missing, and not never
    observed)."""

    random: dict[str, np.ndarray]
    blocks: dict[str, np.ndarray]
    gaps: dict[str, np.ndarray]
    deep: dict[str, np.ndarray]
    fill: dict[str, np.ndarray]

    def kinds(self, var: str) -> dict[str, np.ndarray]:
        return {
            "random": self.random[var],
            "blocks": self.blocks[var],
            "gaps": self.gaps[var],
            "deep": self.deep[var],
        }

    def hidden(self, var: str) -> np.ndarray:
        return self.random[var] | self.blocks[var] | self.gaps[var] | self.deep[var]


@dataclass(frozen=True)
class BandedScores:
    """One variable's hidden cells scored per distance band, each band's share of the fill
    cells, the headline re-weighted to those shares, and the bands' coverage warnings; then
    the same cells banded by distance in learned lengthscales (RANGE_EDGES), with how many
    cells a lengthscale spans along each dim (both None when the model has no range)."""

    bands: dict[str, dict[str, float]]
    shares: dict[str, float]
    headline: Headline | None
    warnings: list[str]
    range_bands: dict[str, dict[str, float]] | None = None
    cells_per_lengthscale: dict[str, float] | None = None


def fill_cells(observed: np.ndarray, dims: Sequence[str], never_along: str | None) -> np.ndarray:
    """The cells a job fills: the missing ones, except those missing along the whole of
    `never_along` (land in a sea field), which stay NaN."""
    missing = ~observed
    if never_along is not None:
        missing &= ~missing.all(axis=list(dims).index(never_along), keepdims=True)
    return missing


def moved_gaps(
    observed: np.ndarray, fill: np.ndarray, fraction: float, gen: np.random.Generator
) -> np.ndarray:
    """The fill mask rolled by half the grid along some dims (the shift landing most of it on
    observed cells), its connected pieces taken whole, at random, until about `fraction` of
    the observed cells are covered: hold-outs with the shapes of the real gaps."""
    if not fill.any():
        return np.zeros_like(observed)
    axes = tuple(range(fill.ndim))
    shifts = [s for s in itertools.product(*[(0, n // 2) for n in fill.shape]) if any(s)]
    if not shifts:  # a single cell
        return np.zeros_like(observed)
    best = max(shifts, key=lambda s: int((np.roll(fill, s, axes) & observed).sum()))
    pieces, count = ndimage.label(np.roll(fill, best, axes) & observed)
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
    order = gen.permutation(count)
    enough = np.searchsorted(np.cumsum(sizes[order]), fraction * observed.sum()) + 1
    return np.isin(pieces, order[:enough] + 1)


def deepened(
    observed: np.ndarray, gaps: np.ndarray, fraction: float, gen: np.random.Generator
) -> np.ndarray:
    """Nested deletions: rings of observed cells, DEEP_RING cells wide, around connected
    pieces of `gaps` taken at random until the rings hold about `fraction` of the observed
    cells. The gaps inside them then lie that much deeper from the data left."""
    pieces, count = ndimage.label(gaps)
    rings = np.zeros_like(observed)
    if not count:
        return rings
    radius = int(DEEP_RING)
    offsets = np.indices((2 * radius + 1,) * gaps.ndim) - radius
    ball = (offsets**2).sum(0) <= DEEP_RING**2
    budget = fraction * observed.sum()
    boxes = ndimage.find_objects(pieces)
    held = 0  # ring cells so far, counted per box (a sum over the grid per piece is slow)
    for label in gen.permutation(count) + 1:
        box = tuple(slice(max(s.start - radius, 0), s.stop + radius) for s in boxes[label - 1])
        grown = ndimage.binary_dilation(pieces[box] == label, structure=ball)
        new = grown & observed[box] & ~gaps[box] & ~rings[box]
        rings[box] |= new
        held += int(new.sum())
        if held >= budget:
            break
    return rings


def default_block(sizes: Mapping[str, int], dims: Sequence[str]) -> dict[str, int]:
    """Block edges: a sixth of each dim (at least one cell), for the dims not given."""
    return {dim: max(1, sizes[dim] // 6) for dim in dims}


def choose_hold_out(
    ds: xr.Dataset,
    variables: Sequence[str],
    dims: Sequence[str],
    fraction: float = 0.05,
    block: Mapping[str, int] | None = None,
    seed: int = 0,
    never_along: str | None = None,
) -> HoldOut:
    """Hide `GAP_FRACTION` of each variable's observed cells under its own gaps moved and
    `DEEP_FRACTION` in rings around some of them, then about `fraction` at random and as
    many again in blocks of `block` cells per dim (placed at random; only observed cells
    count)."""
    if not 0 < fraction < 0.5:
        raise InputError(f"--fraction {fraction} must lie between 0 and 0.5 (e.g. 0.05)")
    shape = tuple(ds.sizes[d] for d in dims)
    unknown = sorted(set(block or {}) - set(dims))
    if unknown:
        raise InputError(f"--block names {unknown}, which are not grid dims {list(dims)}")
    block = {**default_block(ds.sizes, dims), **(block or {})}
    edges = [min(block[d], n) for d, n in zip(dims, shape, strict=True)]
    gen = np.random.default_rng(seed)
    random, blocks, gaps, deep, fill = {}, {}, {}, {}, {}
    for var in variables:
        observed = np.isfinite(ds[var].transpose(*dims).values)
        fill[var] = fill_cells(observed, dims, never_along)
        target = int(fraction * observed.sum())
        gaps[var] = moved_gaps(observed, fill[var], GAP_FRACTION, gen)
        deep[var] = deepened(observed, gaps[var], DEEP_FRACTION, gen)
        taken = gaps[var] | deep[var]
        blocks[var] = _blocks(observed & ~taken, edges, target, gen)
        rest = np.flatnonzero(observed & ~taken & ~blocks[var])
        picked = gen.choice(rest, size=min(target, rest.size), replace=False)
        random[var] = np.zeros(shape, dtype=bool)
        random[var].flat[picked] = True
    return HoldOut(random, blocks, gaps, deep, fill)


def _blocks(
    observed: np.ndarray, edges: Sequence[int], target: int, gen: np.random.Generator
) -> np.ndarray:
    """Observed cells under boxes of `edges` placed at random until `target` are covered."""
    in_blocks = np.zeros(observed.shape, dtype=bool)
    covered = 0
    for _ in range(100_000):
        if covered >= target:
            break
        corner = [gen.integers(0, n - e + 1) for n, e in zip(observed.shape, edges, strict=True)]
        box = tuple(slice(c, c + e) for c, e in zip(corner, edges, strict=True))
        covered += int((observed[box] & ~in_blocks[box]).sum())
        in_blocks[box] = True
    return in_blocks & observed


def hide(ds: xr.Dataset, dims: Sequence[str], hold_out: HoldOut) -> xr.Dataset:
    """A copy of `ds` with the held-out cells set to NaN (attributes kept)."""
    out = ds.copy()
    for var in hold_out.random:
        hidden = hold_out.hidden(var)
        values = ds[var].transpose(*dims).values.copy()
        values[hidden] = np.nan
        out[var] = xr.Variable(dims, values, ds[var].attrs).transpose(*ds[var].dims)
    return out


def score_hold_out(
    truth: xr.Dataset, output: xr.Dataset, dims: Sequence[str], hold_out: HoldOut
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores per variable and kind of hold-out ('random', 'blocks', 'gaps', 'deep') against
    the truth."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for var in hold_out.random:
        true, mean, std = _arrays(truth, output, dims, var)
        scores[var] = {
            kind: _score_predicted(mean, std, true, cells)
            for kind, cells in hold_out.kinds(var).items()
            if cells.any()
        }
    return scores


def score_bands(
    truth: xr.Dataset,
    output: xr.Dataset,
    dims: Sequence[str],
    hold_out: HoldOut,
    records: Sequence[Mapping] = (),
) -> dict[str, BandedScores]:
    """Per variable: every hidden cell scored by band of distance to the nearest observation
    left after hiding, and the headline re-weighted to the bands of the cells to fill.

    The headline scores each band on the hold-outs that leave the data as dense as the job
    has them (all but the nested deletions, which thin the data around them and so
    overstate the error at a given distance); a band those leave with fewer than
    WARN_MIN_CELLS cells takes every hidden cell in it. The output's tile `records`
    give the learned ranges for the bands in lengthscales (none: no such bands).
    """
    out = {}
    for var in hold_out.random:
        true, mean, std = _arrays(truth, output, dims, var)
        observed = np.isfinite(true)
        left = distance_to_observed(observed & ~hold_out.hidden(var))
        cells = hold_out.hidden(var) & np.isfinite(mean) & np.isfinite(std)
        bands = banded_scores(mean[cells], std[cells], true[cells], left[cells])
        dense = cells & ~hold_out.deep[var]
        shares = fill_shares(distance_to_observed(observed)[hold_out.fill[var]])
        like_job = banded_scores(mean[dense], std[dense], true[dense], left[dense])
        headline = headline_like_job(bands, like_job, shares)
        per_range = cells_per_lengthscale(output, records, var, dims)
        range_bands = None
        if per_range is not None:
            sampling = [1.0 / per_range[d] for d in dims]
            in_ranges = distance_to_observed(observed & ~hold_out.hidden(var), sampling)
            range_bands = banded_scores(
                mean[cells], std[cells], true[cells], in_ranges[cells], RANGE_EDGES
            )
        warned = coverage_warnings(var, bands)
        out[var] = BandedScores(bands, shares, headline, warned, range_bands, per_range)
    return out


def headline_like_job(
    bands: dict[str, dict[str, float]],
    like_job: dict[str, dict[str, float]],
    shares: dict[str, float],
) -> Headline | None:
    """The headline re-weighted to the fill `shares`, each band scored on the hold-outs
    without nested deletions (`like_job`) where they have WARN_MIN_CELLS cells in it, else
    on every hidden cell (`bands`)."""
    chosen = {
        band: like_job[band] if like_job.get(band, {}).get("n", 0) >= WARN_MIN_CELLS else scores
        for band, scores in bands.items()
    }
    return reweighted(chosen, shares)


def _arrays(
    truth: xr.Dataset, output: xr.Dataset, dims: Sequence[str], var: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The truth, predicted mean and std of `var` as arrays over `dims`."""
    return (
        truth[var].transpose(*dims).values,
        output[var].transpose(*dims).values,
        output[std_name(var)].transpose(*dims).values,
    )


def _score_predicted(
    mean: np.ndarray, std: np.ndarray, truth: np.ndarray, cells: np.ndarray
) -> dict[str, float]:
    """Scores over `cells` that have a prediction; `unpredicted` counts those without."""
    predicted = cells & np.isfinite(mean) & np.isfinite(std)
    scores = score(mean[predicted], std[predicted], truth[predicted])
    scores["unpredicted"] = int(cells.sum() - predicted.sum())
    return scores


def score_forecast(
    source: xr.Dataset,
    output: xr.Dataset,
    dims: Sequence[str],
    dim: str,
    variables: Sequence[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of a backtest forecast against the data's last steps along `dim` (observed
    cells only), as {variable: {'forecast': scores}}."""
    steps = output.sizes[dim]
    scores = {}
    for var in variables:
        truth = source[var].isel({dim: slice(-steps, None)}).transpose(*dims).values
        mean = output[var].transpose(*dims).values
        std = output[std_name(var)].transpose(*dims).values
        scores[var] = {"forecast": _score_predicted(mean, std, truth, np.isfinite(truth))}
    return scores
