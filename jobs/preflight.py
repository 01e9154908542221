"""Checks of a spec's paths that run before Ray starts or anything is written (light imports)."""

from __future__ import annotations

from pathlib import Path

from jobs.spec import JobSpec
from pipeline.output_guard import check_output_location, check_replaceable
from pipeline.storage import check_reached


def check_paths(spec: JobSpec, spec_path: Path | None = None) -> None:
    """Refuse, before Ray starts or anything is written, an output that is, holds or lies
    in the input (or a warm-start store), that holds the spec file, or that overwrite
    would have to delete although gpgrid did not make it; and an input or output on
    storage that does not answer."""
    check_reached(spec.input.location, "input")
    check_reached(spec.output.location, "output")
    protected = {spec.input.path: "the input"}
    if spec.model.warm_start:
        protected[spec.model.warm_start] = "the warm-start store"
    if spec_path is not None:
        protected[str(Path(spec_path).expanduser().resolve())] = "the spec file"
    check_output_location(spec.output.location, protected)
    if spec.output.overwrite and spec.target.kind != "forecast":  # forecasts: a folder of stores
        check_replaceable(spec.output.location)
