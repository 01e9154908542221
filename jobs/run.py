"""Run a validated job spec: the jobs layer's one call into the pipeline."""

from __future__ import annotations

from datetime import datetime

from jobs.cron import CronSchedule
from jobs.schedule import Clock, Scheduler, SystemClock, format_issue_time
from jobs.spec import JobSpec
from pipeline.errors import InputError
from pipeline.runner import RunSummary, run_pipeline
from pipeline.target import forecast_stores


def run_job(
    spec: JobSpec,
    spec_text: str = "",
    address: str | None = None,
    progress: bool = True,
    issue_time: str | None = None,
) -> RunSummary:
    """Run on the Ray cluster at `address`, or on an embedded local Ray when None.

    `issue_time` (ISO 8601) overrides a forecast's target.issue_time."""
    if issue_time is not None and spec.target.kind != "forecast":
        raise InputError(
            f"--issue-time is for forecasts: the spec's target.kind is {spec.target.kind}"
        )
    config = spec.to_pipeline_config(spec_text, issue_time=issue_time)
    return run_pipeline(config, progress=progress, address=address)


def schedule_forecasts(
    spec: JobSpec,
    spec_text: str = "",
    address: str | None = None,
    max_ticks: int | None = None,
    clock: Clock | None = None,
) -> list[datetime]:
    """Issue one forecast per tick of the spec's cron schedule, each into its own store.

    The output folder is the only state: issue times already finished there are never
    run again, whoever ran them. Returns the issue times this call ran."""
    if spec.schedule is None:
        raise InputError("the spec has no schedule section: add schedule.cron, or use gpgrid run")
    scheduler = Scheduler(
        schedule=CronSchedule.parse(spec.schedule.cron),
        run_issue=lambda issue: run_job(
            spec, spec_text, address, progress=False, issue_time=format_issue_time(issue)
        ),
        completed=lambda: set(forecast_stores(spec.output.path)),
        clock=clock or SystemClock(),
        missed=spec.schedule.missed,
        start=spec.schedule.start,
        catch_up_limit=spec.schedule.catch_up_limit,
    )
    return scheduler.run(max_ticks)
