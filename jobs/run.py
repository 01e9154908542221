"""Run a validated job spec: the jobs layer's one call into the pipeline."""

from __future__ import annotations

from jobs.spec import JobSpec
from pipeline.cluster import ensure_ray
from pipeline.runner import RunSummary, run_pipeline


def run_job(
    spec: JobSpec, spec_text: str = "", address: str | None = None, progress: bool = True
) -> RunSummary:
    """Run on the Ray cluster at `address`, or on an embedded local Ray when None."""
    ensure_ray(address)
    return run_pipeline(spec.to_pipeline_config(spec_text), progress=progress, address=address)
