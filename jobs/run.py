"""Run a validated job spec: the jobs layer's one call into the pipeline."""

from __future__ import annotations

from dataclasses import replace

from jobs.spec import JobSpec
from pipeline.cluster import ensure_ray
from pipeline.runner import RunSummary, run_pipeline


def run_job(
    spec: JobSpec,
    spec_text: str = "",
    address: str | None = None,
    progress: bool = True,
    issue_time: str | None = None,
) -> RunSummary:
    """Run on the Ray cluster at `address`, or on an embedded local Ray when None.

    `issue_time` (ISO 8601) overrides a forecast's target.issue_time."""
    config = spec.to_pipeline_config(spec_text)
    if issue_time is not None:
        if config.forecast is None:
            raise ValueError("--issue-time is for forecasts: the spec's target.kind is same_grid")
        config = replace(config, forecast=replace(config.forecast, issue_time=issue_time))
    ensure_ray(address)
    return run_pipeline(config, progress=progress, address=address)
