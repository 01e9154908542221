"""Hold-out validation: hide observed cells (scattered, and contiguous blocks like clouds or
sensor outages), predict them from the rest, and score the predictions against what was hidden.

Random cells test interpolation between close neighbours; blocks test what users need
most, filling large gaps, where a model's variances are least trustworthy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pipeline.errors import InputError
from pipeline.scores import score
from pipeline.store import std_name


@dataclass
class HoldOut:
    """Which cells were hidden, per variable: `random` and `blocks` (boolean grids, disjoint)."""

    random: dict[str, np.ndarray]
    blocks: dict[str, np.ndarray]


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
) -> HoldOut:
    """Hide about `fraction` of each variable's observed cells at random and as many again
    in blocks of `block` cells per dim (placed at random; only observed cells count)."""
    if not 0 < fraction < 0.5:
        raise InputError(f"--fraction {fraction} must lie between 0 and 0.5 (e.g. 0.05)")
    shape = tuple(ds.sizes[d] for d in dims)
    unknown = sorted(set(block or {}) - set(dims))
    if unknown:
        raise InputError(f"--block names {unknown}, which are not grid dims {list(dims)}")
    block = {**default_block(ds.sizes, dims), **(block or {})}
    edges = [min(block[d], n) for d, n in zip(dims, shape, strict=True)]
    gen = np.random.default_rng(seed)
    random, blocks = {}, {}
    for var in variables:
        observed = np.isfinite(ds[var].transpose(*dims).values)
        target = int(fraction * observed.sum())
        in_blocks = np.zeros(shape, dtype=bool)
        covered = 0
        for _ in range(100_000):
            if covered >= target:
                break
            corner = [gen.integers(0, n - e + 1) for n, e in zip(shape, edges, strict=True)]
            box = tuple(slice(c, c + e) for c, e in zip(corner, edges, strict=True))
            covered += int((observed[box] & ~in_blocks[box]).sum())
            in_blocks[box] = True
        blocks[var] = in_blocks & observed
        rest = np.flatnonzero(observed & ~in_blocks)
        picked = gen.choice(rest, size=min(target, rest.size), replace=False)
        random[var] = np.zeros(shape, dtype=bool)
        random[var].flat[picked] = True
    return HoldOut(random, blocks)


def hide(ds: xr.Dataset, dims: Sequence[str], hold_out: HoldOut) -> xr.Dataset:
    """A copy of `ds` with the held-out cells set to NaN (attributes kept)."""
    out = ds.copy()
    for var in hold_out.random:
        hidden = hold_out.random[var] | hold_out.blocks[var]
        values = ds[var].transpose(*dims).values.copy()
        values[hidden] = np.nan
        out[var] = xr.Variable(dims, values, ds[var].attrs).transpose(*ds[var].dims)
    return out


def score_hold_out(
    truth: xr.Dataset, output: xr.Dataset, dims: Sequence[str], hold_out: HoldOut
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores per variable and per kind of hold-out ('random', 'blocks') against the truth."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for var in hold_out.random:
        true = truth[var].transpose(*dims).values
        mean = output[var].transpose(*dims).values
        std = output[std_name(var)].transpose(*dims).values
        scores[var] = {
            kind: _score_predicted(mean, std, true, cells)
            for kind, cells in (("random", hold_out.random[var]), ("blocks", hold_out.blocks[var]))
            if cells.any()
        }
    return scores


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
