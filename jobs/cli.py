"""The `gpgrid` command. Exit codes: 0 success, 2 bad input (spec, paths, data), 1 failure."""

from __future__ import annotations

import os
import time
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from jobs.preflight import check_paths
from jobs.spec import load_spec
from jobs.submit import logs_command, status_command, stop_command, submit_command
from pipeline.errors import InputError
from pipeline.journal import TILE_FLAGS, finished_tile_indices
from pipeline.storage import Location

app = typer.Typer(
    help="Gaussian-process gap filling for gridded spatiotemporal data, sharded over Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ModelType(StrEnum):
    kiss = "kiss"
    exact = "exact"


def _fail(err: Exception) -> NoReturn:
    """Bad input (InputError) exits 2 with its message; anything else is a failure: exit 1,
    one line on screen and the whole traceback in a log file."""
    if isinstance(err, InputError):
        typer.echo(f"gpgrid: bad input: {err}", err=True)
        raise typer.Exit(2)
    log = _write_traceback(err)
    typer.echo(f"gpgrid: failed: {_one_line(err)}\n  (traceback in {log})", err=True)
    raise typer.Exit(1)


def _one_line(err: Exception) -> str:
    """`Type: message` of a failure; for one inside a Ray task, of the task's own error
    (the remote traceback, many lines long, stays in the log)."""
    from ray.exceptions import RayTaskError

    if isinstance(err, RayTaskError) and err.cause is not None:
        err = err.cause
    return f"{type(err).__name__}: {err}"


def _write_traceback(err: Exception) -> Path:
    """Write the failure's traceback to a new log file under GPGRID_LOG_DIR (default
    ~/.cache/gpgrid/logs) and return its path."""
    folder = Path(os.environ.get("GPGRID_LOG_DIR", Path.home() / ".cache" / "gpgrid" / "logs"))
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    log.write_text("".join(traceback.format_exception(err)))
    return log


def _interrupted(output: Location | None) -> NoReturn:
    """Ctrl-C: say what was kept and how to go on, then exit 130 as shells expect."""
    if output is None:
        typer.echo(
            "gpgrid: interrupted: tiles finished so far are kept; run the same command again "
            "to resume",
            err=True,
        )
        raise typer.Exit(130)
    done = len(finished_tile_indices(output))
    typer.echo(
        f"gpgrid: interrupted: {done} finished tiles are kept in {output.url}; run the same "
        "command again to resume with the others",
        err=True,
    )
    raise typer.Exit(130)


def _start_ray(address: str | None = None) -> None:
    """Start (or join) Ray before the heavy imports, so its workers warm up meanwhile."""
    from pipeline.cluster import ensure_ray

    ensure_ray(address)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="job spec (YAML)")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address; an embedded local Ray when omitted")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar over tiles")] = True,
    issue_time: Annotated[
        str | None,
        typer.Option(help="forecasts: issue at this time (ISO 8601), using only data up to it"),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print the plan (tiles, chunks, bytes to read and write, metadata size) "
            "and stop: no Ray, nothing written",
        ),
    ] = False,
) -> None:
    """Run a job spec: predict every target cell and write mean and std to the output zarr.

    Run it again after an interruption to resume: only unfinished tiles are computed.
    """
    output = None
    try:
        job, text = load_spec(spec)
        output = job.output.location if job.target.kind != "forecast" else None
        check_paths(job, spec)  # before Ray starts: a wrong output.path is refused at once
        if dry_run:
            from pipeline.plan_report import plan_report

            config = job.to_pipeline_config(text, issue_time=issue_time)
            typer.echo("\n".join(plan_report(config).lines()))
            return
        from jobs.run import run_job  # run_pipeline starts or joins Ray, once

        summary = run_job(job, text, address=address, progress=progress, issue_time=issue_time)
    except KeyboardInterrupt:
        _interrupted(output)
    except Exception as err:  # noqa: BLE001 - every error becomes a message and an exit code
        _fail(err)
    resumed = (
        f" ({summary.resumed_tiles} tiles were already written by an earlier run)"
        if summary.resumed_tiles
        else ""
    )
    for var, flags in summary.flagged.items():
        typer.echo(f"gpgrid: warning: {_flag_text(var, flags, summary.tiles)}", err=True)
    typer.echo(
        f"wrote {summary.cells:,} cells in {summary.tiles - summary.resumed_tiles} tiles to "
        f"{summary.output_path}{resumed} in {summary.seconds:.1f} s "
        f"({summary.cells_per_second:,.0f} cells/s)"
    )


def _flag_text(var: str, flags: dict[str, list[int]], tiles: int) -> str:
    """`tas: 3 of 16 tiles had too few observations (left NaN)` for the summary."""
    parts = [f"{len(indices)} of {tiles} tiles {TILE_FLAGS[f]}" for f, indices in flags.items()]
    return f"{var}: {'; '.join(parts)}; gpgrid inspect on the store lists them"


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output zarr store")] = Path("out/demo.zarr"),
    progress: Annotated[bool, typer.Option(help="show a progress bar over tiles")] = True,
    model: Annotated[
        ModelType, typer.Option(help="kiss (structured, default) or exact (dense, to compare)")
    ] = ModelType.kiss,
) -> None:
    """Fill a 200,000-cell synthetic grid with 30% gaps on an embedded Ray and score it."""
    try:
        _start_ray()
        from jobs.demo import run_demo

        result = run_demo(out, progress=progress, model=model.value)
    except Exception as err:  # noqa: BLE001
        _fail(err)
    s, scores = result.summary, result.scores
    typer.echo(
        "\n".join(
            [
                f"gpgrid demo ({model.value} model)",
                f"  input      {result.input_path}  (synthetic GP draw, truth kept)",
                f"  spec       {result.spec_path}  (rerun with: gpgrid run {result.spec_path})",
                f"  output     {s.output_path}",
                f"  quick-look {result.png_path}",
                f"  cells      {s.cells:,} in {s.tiles} tiles, {s.seconds:.1f} s "
                f"({s.cells_per_second:,.0f} cells/s)",
                f"  hold-out   {scores['n']:,} gap cells against the true field:",
                f"             RMSE {scores['rmse']:.3f} "
                f"({scores['rmse'] / scores['truth_std']:.2f} of the field's std "
                f"{scores['truth_std']:.2f}), MAE {scores['mae']:.3f}, CRPS {scores['crps']:.3f}",
                f"             95% coverage {scores['coverage95']:.3f}, "
                f"interval score {scores['interval_score95']:.3f}",
                f"  read it    xarray.open_zarr({str(s.output_path)!r})",
            ]
        )
    )


def _parse_block(block: list[str]) -> dict[str, int]:
    """`--block lat=3 --block lon=40` as {dim: cells}."""
    out = {}
    for item in block:
        dim, _, cells = item.partition("=")
        if not cells.isdigit() or int(cells) < 1:
            raise InputError(f"--block {item!r} must look like dim=cells, e.g. lat=4")
        out[dim] = int(cells)
    return out


@app.command()
def validate(
    spec: Annotated[Path, typer.Argument(help="job spec (YAML)")],
    fraction: Annotated[
        float, typer.Option(help="share of observed cells hidden at random (as many in blocks)")
    ] = 0.05,
    block: Annotated[
        list[str] | None,
        typer.Option(help="block edge along a dim, as dim=cells (repeat; default a sixth)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for where cells and blocks are hidden")] = 0,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address; an embedded local Ray when omitted")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar over tiles")] = True,
) -> None:
    """Score a job on its own data: hide cells, predict them, print the scores.

    Gap-filling jobs hide the input's own gaps moved onto observed cells, random cells
    and blocks; forecasts are backtested on the data's last steps. Prints MAE, RMSE,
    CRPS, 95% interval score and 95% coverage per variable and kind of hold-out, then
    per band of distance to the nearest observation, a headline weighted like the cells
    the job fills, and a warning for any band whose coverage leaves 0.90-0.98.
    """
    try:
        job, _ = load_spec(spec)
        blocks = _parse_block(block or [])
        _start_ray(address)
        from jobs.validate import format_validation, validate_job

        result = validate_job(job, address, progress, fraction, blocks or None, seed)
    except Exception as err:  # noqa: BLE001
        _fail(err)
    typer.echo(format_validation(result))
    typer.echo(f"({result.seconds:.1f} s; inputs and predictions in {result.folder})")


@app.command("inspect")
def inspect_store(
    path: Annotated[Path, typer.Argument(help="an output store, or a folder of forecasts")],
) -> None:
    """Show what a store holds and how it was made.

    Grid, variables and units; the spec, model and shared hyperparameters; whether the
    run finished. Given a forecast folder, lists its issue times.
    """
    try:
        from jobs.describe import describe

        typer.echo(describe(path))
    except Exception as err:  # noqa: BLE001
        _fail(err)


@app.command()
def plot(
    store: Annotated[Path, typer.Argument(help="an output store")],
    variable: Annotated[str | None, typer.Option(help="variable (default: the first)")] = None,
    at: Annotated[
        str | None, typer.Option(help="step of the first dim: an index or a value (2006-07-16)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG to write (default: beside the store)")
    ] = None,
) -> None:
    """Quick-look PNG: the input (gaps blank), predicted mean and std at one step."""
    try:
        from jobs.plots import plot_store

        typer.echo(f"wrote {plot_store(store, variable, at, out)}")
    except Exception as err:  # noqa: BLE001
        _fail(err)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="file to write (default: print)")] = None,
) -> None:
    """Print the job spec's JSON schema, for editors to check specs as you type."""
    from jobs.spec import spec_json_schema

    text = spec_json_schema()
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


@app.command()
def schedule(
    spec: Annotated[Path, typer.Argument(help="forecast job spec (YAML) with a schedule section")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address; an embedded local Ray when omitted")
    ] = None,
    max_ticks: Annotated[
        int | None, typer.Option(help="stop after this many issue times (default: run forever)")
    ] = None,
) -> None:
    """Issue one forecast per cron tick of the spec's schedule, until stopped.

    Each issue time gets its own store in output.path and is never run twice, also
    across restarts; ticks missed while stopped follow schedule.missed (skip or catch_up).
    """
    try:
        job, text = load_spec(spec)
        check_paths(job, spec)
        _start_ray(address)
        from jobs.run import schedule_forecasts

        issued = schedule_forecasts(job, text, address, max_ticks)
    except Exception as err:  # noqa: BLE001
        _fail(err)
    typer.echo(f"issued {len(issued)} forecasts into {job.output.path}")


@app.command()
def example(
    name: Annotated[str, typer.Argument(help="ostia, ozone, heaton or multitask")],
    out: Annotated[
        Path | None, typer.Option(help="folder for input, spec and output (default: out/NAME)")
    ] = None,
    check: Annotated[
        bool, typer.Option("--validate", help="also score it on held-out cells (gpgrid validate)")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar over tiles")] = True,
) -> None:
    """Run an example job on real data: build its input, write its spec, run, score.

    The spec lands in OUT/job.yaml, ready for gpgrid run, validate, plot and inspect.
    """
    out = out or Path("out") / name
    try:
        _start_ray()
        from jobs.examples.catalog import run_example
        from jobs.validate import format_scores, format_validation, validate_job

        summary, scores = run_example(name, out, progress=progress)
        typer.echo(
            f"wrote {summary.cells:,} cells to {summary.output_path} in {summary.seconds:.1f} s"
        )
        if scores:
            typer.echo(format_scores(scores))
        if check:
            job, _ = load_spec(out / "job.yaml")
            result = validate_job(job, progress=progress)
            typer.echo(f"held-out validation ({result.seconds:.1f} s):")
            typer.echo(format_validation(result))
    except Exception as err:  # noqa: BLE001
        _fail(err)
    typer.echo(f"spec: {out / 'job.yaml'}  (gpgrid validate|plot|inspect work on it)")


app.command("submit")(submit_command)
app.command("status")(status_command)
app.command("logs")(logs_command)
app.command("stop")(stop_command)
