"""`gpgrid validate`: run a job on its own data with cells held out, and score what was hidden.

Gap-filling jobs hide the input's own gaps moved onto observed cells, random observed cells
and contiguous blocks; every hidden cell is also scored by band of distance to the nearest
observation left, and a headline weights the bands as the cells the job fills are spread
over them. Forecast jobs are backtested: issued `steps` before the end of the data and
scored on those last steps. Everything goes to `<output.path>.validate/` (the job's own
output is not touched).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from jobs.run import run_job
from jobs.spec import JobSpec
from pipeline.bands import RANGE_EDGES, band_labels
from pipeline.errors import InputError
from pipeline.holdout import (
    BandedScores,
    choose_hold_out,
    hide,
    score_bands,
    score_forecast,
    score_hold_out,
)
from pipeline.inputs import open_input
from pipeline.store import consolidated_v3_allowed
from pipeline.tile_records import read_tile_records


@dataclass
class Validation:
    """Scores per variable and hold-out kind, per distance band (none for a backtest), and
    where the run's files are."""

    scores: dict[str, dict[str, dict[str, float]]]
    folder: Path
    seconds: float
    bands: dict[str, BandedScores] = field(default_factory=dict)


def validate_job(
    spec: JobSpec,
    address: str | None = None,
    progress: bool = True,
    fraction: float = 0.05,
    block: Mapping[str, int] | None = None,
    seed: int = 0,
) -> Validation:
    """Hold out cells (or the last forecast steps), rerun the job, and score the hidden cells."""
    folder = Path(f"{spec.output.path.rstrip('/')}.validate")
    if spec.target.kind == "forecast":
        return _backtest(spec, folder, address, progress)
    dims = spec.input.dims
    source = open_input(spec.input.location, spec.input.selection)[spec.input.variables]
    never_along = spec.target.never_observed_along
    variables = spec.input.variables
    hold_out = choose_hold_out(source, variables, dims, fraction, block, seed, never_along)
    folder.mkdir(parents=True, exist_ok=True)  # after the arguments are checked
    hidden_path = folder / "input.zarr"
    shutil.rmtree(hidden_path, ignore_errors=True)
    with consolidated_v3_allowed():
        hidden = hide(source, dims, hold_out)
        hidden.to_zarr(hidden_path, mode="w", zarr_format=3, consolidated=True)
    job = _redirected(spec, input_path=str(hidden_path), output_path=str(folder / "output.zarr"))
    job = job.model_copy(  # the hidden copy is local and already cut to the selection
        update={"input": job.input.model_copy(update={"sel": {}, "storage_options": {}})}
    )
    summary = run_job(job, address=address, progress=progress)
    output = xr.open_zarr(summary.output_path)
    scores = score_hold_out(source, output, dims, hold_out)
    records = read_tile_records(summary.output_path)
    bands = score_bands(source, output, dims, hold_out, records)
    return Validation(scores, folder, summary.seconds, bands)


def _backtest(spec: JobSpec, folder: Path, address: str | None, progress: bool) -> Validation:
    """Issue the forecast `steps` before the end of the data; score it on those steps."""
    dim, steps = spec.target.dim, spec.target.steps
    source = open_input(spec.input.location, spec.input.selection)
    if source.sizes[dim] <= steps + 1:
        raise InputError(
            f"a backtest of {steps} steps needs more than {steps + 1} steps of data along "
            f"{dim!r}; the input has {source.sizes[dim]}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    issue = source[dim].values[-steps - 1]
    issue_time = (
        pd.Timestamp(issue).isoformat()
        if np.issubdtype(source[dim].dtype, np.datetime64)
        else str(issue)
    )
    job = _redirected(spec, input_path=spec.input.path, output_path=str(folder / "forecasts"))
    summary = run_job(job, address=address, progress=progress, issue_time=issue_time)
    output = xr.open_zarr(summary.output_path)
    scores = score_forecast(source, output, spec.input.dims, dim, spec.input.variables)
    return Validation(scores, folder, summary.seconds)


def _redirected(spec: JobSpec, input_path: str, output_path: str) -> JobSpec:
    """The same job reading `input_path` and writing a fresh `output_path` (a job for a new
    grid is checked on the input's own grid, where the hidden cells are)."""
    target = spec.target
    if target.kind == "grid":
        target = target.model_copy(update={"kind": "same_grid", "grid": {}})
    return spec.model_copy(
        update={
            "target": target,
            "input": spec.input.model_copy(update={"path": input_path}),
            "output": spec.output.model_copy(
                update={"path": output_path, "overwrite": True, "std": "observation"}
            ),
        }
    )


def format_scores(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A table: one row per variable and hold-out kind."""
    width = max([len("variable"), *map(len, scores)]) + 2
    header = f"{'variable':<{width}}{'hold-out':<10}{'cells':>9}{'MAE':>10}{'RMSE':>10}"
    header += f"{'CRPS':>10}{'IS95':>10}{'cover95':>9}"
    rows = [header]
    for var, kinds in scores.items():
        for kind, s in kinds.items():
            rows.append(
                f"{var:<{width}}{kind:<10}{s['n']:>9,}{s['mae']:>10.4g}{s['rmse']:>10.4g}"
                f"{s['crps']:>10.4g}{s['interval_score95']:>10.4g}{s['coverage95']:>9.3f}"
            )
            if s.get("unpredicted"):
                note = f"({s['unpredicted']:,} hidden cells got no prediction)"
                rows.append(" " * (width + 10) + note)
    return "\n".join(rows)


def format_validation(result: Validation) -> str:
    """The kinds table, then per variable the distance-banded table, the re-weighted
    headline and any coverage warnings."""
    parts = [format_scores(result.scores)]
    for var, banded in result.bands.items():
        parts.append(_format_bands(var, banded))
    return "\n\n".join(parts)


def _format_bands(var: str, banded: BandedScores) -> str:
    """One variable's hidden cells by distance band, with each band's share of the cells
    the job fills, and the headline over that spread."""
    rows = [
        f"{var}: every hidden cell, by distance to the nearest observation left (cells)",
        f"{'band':<8}{'cells':>9}{'fill share':>12}{'RMSE':>10}{'CRPS':>10}{'cover95':>9}",
    ]
    for label in band_labels():
        share = banded.shares.get(label, 0.0)
        s = banded.bands.get(label)
        if s is None:
            rows.append(f"{label:<8}{0:>9}{share:>12.3f}{'-':>10}{'-':>10}{'-':>9}")
            continue
        rows.append(
            f"{label:<8}{s['n']:>9,}{share:>12.3f}{s['rmse']:>10.4g}{s['crps']:>10.4g}"
            f"{s['coverage95']:>9.3f}"
        )
    head = banded.headline
    if head is None:
        rows.append("no cells to fill (or none in a scored band): no re-weighted headline")
    else:
        rows.append(
            f"headline, weighted like the cells to fill ({head.measured_share:.0%} of them in "
            f"scored bands): RMSE {head.rmse:.4g}, CRPS {head.crps:.4g}, "
            f"cover95 {head.coverage95:.3f}"
        )
    rows.extend(f"warning: {line}" for line in banded.warnings)
    if banded.range_bands is not None and banded.cells_per_lengthscale is not None:
        rows.append(_format_range_bands(var, banded.range_bands, banded.cells_per_lengthscale))
    return "\n".join(rows)


def _format_range_bands(
    var: str, range_bands: Mapping[str, Mapping[str, float]], per_range: Mapping[str, float]
) -> str:
    """The same hidden cells by distance in learned lengthscales (each dim's longest, median
    over tiles): where the std should have grown to the prior's."""
    spans = ", ".join(f"{dim} {cells:.3g}" for dim, cells in per_range.items())
    rows = [
        f"{var}: by distance in learned lengthscales (cells per lengthscale: {spans})",
        f"{'band':<8}{'cells':>9}{'RMSE':>10}{'CRPS':>10}{'cover95':>9}",
    ]
    for label in band_labels(RANGE_EDGES):
        s = range_bands.get(label)
        if s is None:
            rows.append(f"{label:<8}{0:>9}{'-':>10}{'-':>10}{'-':>9}")
            continue
        rows.append(
            f"{label:<8}{s['n']:>9,}{s['rmse']:>10.4g}{s['crps']:>10.4g}{s['coverage95']:>9.3f}"
        )
    return "\n".join(rows)
