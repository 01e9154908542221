"""The run's state: the spec's model fields reach ModelConfig by name, kernel text is parsed
once into values, one function resolves the run, and tile tasks receive no PipelineConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jobs.spec import ModelSpec, parse_spec
from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.inputs import open_input
from pipeline.resolved import resolve_run
from pipeline.synthetic import SyntheticGrid, write_synthetic
from pipeline.work import TileWork
from tests.helpers import SMALL_SPEC

# a value for each field the spec and the model config share, none of them a default
CHANGED = {
    "fit_points": 123,
    "max_points": 456,
    "max_iter": 7,
    "refine_iter": 3,
    "neighbours": 64,
    "dtype": "float32",
    "rank": 2,
    "inducing": 77,
    "epochs": 5,
    "hyperparameters": "per_tile",
    "mean": "linear",
    "calibrate_variance": False,
}


def test_every_model_config_field_but_the_resolved_ones_is_a_spec_field_with_its_default() -> None:
    spec_fields = ModelSpec.model_fields
    for field in dataclasses.fields(ModelConfig):
        if field.name in ("kernels", "type", "scales", "calibrate_variance"):  # resolved below
            continue
        assert field.name in spec_fields, f"ModelSpec lacks {field.name}"
        default = spec_fields[field.name].get_default(call_default_factory=True)
        got = tuple(default) if field.name in ("isotropic", "covariates") else default
        assert got == field.default, field.name


@pytest.mark.parametrize(
    ("kernel", "scales", "kind", "expected"),
    [
        (None, None, "same_grid", 2),  # the data choose: short and long ranges
        ({"time": "matern32", "lat": "matern32", "lon": "matern32"}, None, "same_grid", 1),
        (None, None, "grid", 1),  # a new grid's interpolated path needs one kernel
        ({"time": "matern32", "lat": "matern32", "lon": "matern32"}, 2, "same_grid", 2),
        (None, 1, "same_grid", 1),
    ],
)
def test_model_scales_resolve_from_the_kernel_and_the_target(
    kernel: dict | None, scales: int | None, kind: str, expected: int
) -> None:
    model = {"type": "kiss", "kernel": kernel, "scales": scales}
    target = {"kind": kind}
    if kind == "grid":
        target["grid"] = {"lat": {"start": 0.0, "step": 0.5, "size": 4}}
    spec = parse_spec({**SMALL_SPEC, "model": model, "target": target})
    assert spec.to_pipeline_config().model.scales == expected


@pytest.mark.parametrize(
    ("model", "kind", "expected"),
    [
        ({"type": "kiss"}, "same_grid", True),  # wherever it can run
        ({"type": "auto"}, "same_grid", True),
        ({"type": "kiss", "calibrate_variance": False}, "same_grid", False),
        ({"type": "kiss"}, "grid", False),  # interpolated onto a new grid: no moved gaps
        ({"type": "exact"}, "same_grid", False),
        ({"type": "svgp"}, "same_grid", False),
    ],
)
def test_variance_calibration_resolves_to_on_wherever_it_can_run(
    model: dict, kind: str, expected: bool
) -> None:
    target = {"kind": kind}
    if kind == "grid":
        target["grid"] = {"lat": {"start": 0.0, "step": 0.5, "size": 4}}
    spec = parse_spec({**SMALL_SPEC, "model": {**SMALL_SPEC["model"], **model}, "target": target})
    assert spec.to_pipeline_config().model.calibrate_variance is expected


def test_to_pipeline_config_carries_every_model_field() -> None:
    model = {**SMALL_SPEC["model"], "type": "svgp", **CHANGED}
    spec = parse_spec(
        {**SMALL_SPEC, "model": model, "input": {**SMALL_SPEC["input"], "variables": ["a", "b"]}}
    )
    config = spec.to_pipeline_config()
    for name, value in CHANGED.items():
        assert getattr(config.model, name) == value, name
    assert config.model.type == "svgp"
    multitask = {**model, "mean": "constant", "multitask": True}
    spec = spec.model_copy(update={"model": ModelSpec.model_validate(multitask)})
    assert spec.to_pipeline_config().model.multitask
    iso = {**SMALL_SPEC["model"], "kernel": dict.fromkeys(["time", "lat", "lon"], "matern32")}
    spec = parse_spec({**SMALL_SPEC, "model": {**iso, "isotropic": ["lat", "lon"]}})
    assert spec.to_pipeline_config().model.isotropic == ("lat", "lon")


def test_kernel_text_is_parsed_once_into_values_and_written_back_as_text() -> None:
    kernel = {"time": "matern32 +periodic( 365.25 )", "lat": "rbf", "lon": "matern52"}
    spec = parse_spec({**SMALL_SPEC, "model": {"kernel": kernel}})
    assert spec.model.kernel["time"] == AxisKernel("matern32", 365.25)
    assert spec.to_pipeline_config().model.kernels == (
        AxisKernel("matern32", 365.25),
        AxisKernel("rbf"),
        AxisKernel("matern52"),
    )
    assert "time: matern32 + periodic(365.25)" in spec.to_yaml()
    assert parse_spec({**SMALL_SPEC, "model": {"kernel": kernel}}) == spec
    assert str(AxisKernel.parse("matern12 + periodic(7)")) == "matern12 + periodic(7)"
    with pytest.raises(ValueError, match="is not one of rbf, matern12"):
        AxisKernel.parse("matern33")


def test_fault_injection_is_no_field_of_the_production_config() -> None:
    names = {f.name for f in dataclasses.fields(PipelineConfig)}
    assert "crash_once" not in names and "shared_hyperparameters" not in names


def _configs_inside(value: object, seen: set[int] | None = None) -> list[object]:
    """Every PipelineConfig reachable from `value` through dataclass fields and containers."""
    seen = seen if seen is not None else set()
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, PipelineConfig):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return []
    return [c for child in children for c in _configs_inside(child, seen)]


def test_one_function_resolves_a_forecast_run_and_tasks_get_no_config(tmp_path: Path) -> None:
    source = str(tmp_path / "in.zarr")
    write_synthetic(source, SyntheticGrid(shape=(6, 20, 20), seed=1), (3, 10, 10))
    forecast = {"kind": "forecast", "steps": 2}
    spec = parse_spec({**SMALL_SPEC, "target": forecast}, base_dir=tmp_path)
    config = spec.to_pipeline_config()
    ds = open_input(source)
    run = resolve_run(config, ds)
    assert (
        run.output.url.startswith(str(tmp_path / "out.zarr"))
        and run.output.url != config.output_path
    )
    assert run.source.forecast.history == 6 and run.shape == (2, 20, 20)
    assert config.forecast.history == 0  # the user's config is left as it was
    assert len(run.tiles) == 4 and run.halo == config.halo
    work = run.work("cpu")
    assert isinstance(work, TileWork) and not _configs_inside(work)
    assert work.plan.halo == config.halo and work.plan.shared is None
    shared = {"tas": {"lengthscales": [1.0, 1.0, 1.0], "outputscale": 1.0, "noise": 0.1}}
    wider = run.work("cuda", (1, 5, 5), shared)
    assert wider.plan.halo == (1, 5, 5) and wider.plan.fixed("tas") == shared["tas"]
    assert wider.device == "cuda" and not _configs_inside(wider)
    assert [t.window for t in run.tiles_with((1, 5, 5))] != [t.window for t in run.tiles]


def test_two_scales_onto_a_new_grid_by_kiss_are_refused_with_the_fix() -> None:
    target = {"kind": "grid", "grid": {"lat": {"start": 0.0, "step": 0.5, "size": 4}}}
    with pytest.raises(ValueError, match="model.scales 2 .* drop model.scales"):
        parse_spec({**SMALL_SPEC, "model": {"type": "kiss", "scales": 2}, "target": target})
