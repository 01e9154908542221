"""The output store's template: its root attributes, coordinates and empty arrays, laid
out in the run's chunks; made before any tile runs (and, for a dry run, in a scratch
folder to measure its metadata)."""

from __future__ import annotations

import json

from pipeline import __version__
from pipeline.resolved import ResolvedRun
from pipeline.storage import Location
from pipeline.store import create_output_store
from pipeline.target import FORECAST_COORDS


def create_template(run: ResolvedRun, place: Location) -> None:
    """Create the run's store template at `place` (which must not exist yet)."""
    config = run.config
    kernels = (
        "chosen by the data (gpgrid_kernel_choice)"
        if config.model.kernels is None
        else {c: str(k) for c, k in zip(config.input_columns, config.model.kernels, strict=True)}
    )
    attrs = {
        "title": "gpgrid Gaussian-process predictions",
        "Conventions": "CF-1.8",
        "source": f"gpgrid {__version__}",
        "gpgrid_version": __version__,
        "gpgrid_spec": config.spec_text,
        "gpgrid_input": config.input_path,
        **({"gpgrid_input_sel": json.dumps(config.input_sel.record())} if config.input_sel else {}),
        "gpgrid_model": f"{config.model.type} GP per tile, kernels {kernels}"
        + (
            f", mean regressed on {list(config.model.covariates)}"
            if config.model.covariates
            else ""
        ),
    }
    create_output_store(
        place,
        run.target,
        config.variables,
        config.dims,
        run.store_chunks,
        attrs,
        (*config.station_coords, *(FORECAST_COORDS if config.forecast else ())),
        run.inner,
        config.std_includes_noise,
    )
