"""Generated job specs: every one loads, or fails with a SpecError that names a field."""

from __future__ import annotations

import copy
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.spec import JobSpec, SpecError, parse_spec, spec_json_schema

BASE = {
    "input": {"path": "in.zarr", "variables": ["tas"], "dims": ["time", "lat", "lon"]},
    "target": {"kind": "same_grid"},
    "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern52"}},
    "tiling": {"tile": {"time": 3, "lat": 10, "lon": 10}, "halo": {"time": 1, "lat": 3, "lon": 3}},
    "resources": {"num_gpus": 0},
    "output": {"path": "out.zarr"},
}


def _field_paths(schema: dict) -> set[str]:
    """Every section and field name the schema knows, as they appear in messages."""
    names: set[str] = set()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        names.update(definition.get("properties", {}))
    return names


FIELDS = _field_paths(json.loads(spec_json_schema()))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "time",
            "lat",
            "lon",
            "forecast",
            "same_grid",
            "kiss",
            "exact",
            "svgp",
            "shared",
            "matern12",
            "rbf + periodic(365.25)",
            "matern32 + periodic(0)",
            "0 6 * * *",
            "61 * * * *",
            "2000-01-01",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(sorted(FIELDS) + ["time", "lat", "lon", "x"]), inner, max_size=4
        ),
    ),
    max_leaves=8,
)


@st.composite
def specs(draw: st.DrawFn) -> object:
    """BASE with a few random edits: a key dropped, set to a random value, or added."""
    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from([*BASE, "schedule", "colour"]))
        action = draw(st.sampled_from(["drop", "set", "set_section"]))
        if action == "set_section":
            spec[section] = draw(values)
        elif isinstance(spec.get(section), dict):
            key = draw(st.sampled_from(sorted(FIELDS | {"x"})))
            if action == "drop":
                spec[section].pop(key, None)
            else:
                spec[section][key] = draw(values)
    return draw(st.one_of(st.just(spec), values)) if draw(st.booleans()) is False else spec


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_a_spec_loads_or_names_a_field(data: object) -> None:
    try:
        spec = parse_spec(data)
    except SpecError as err:
        problems = [line[4:] for line in str(err).splitlines() if line.startswith("  - ")]
        for problem in problems or [str(err)]:
            where = problem.split(":", 1)[0]
            if where == "(top level)" or " " in where:  # a whole-spec rule: its text names fields
                assert set(re.findall(r"[A-Za-z_]+", problem)) & FIELDS, problem
            else:  # the dotted path of the offending key, e.g. model.kernel.time
                assert re.fullmatch(r"[\w.]+", where), problem
        return
    assert isinstance(spec, JobSpec)
    spec.to_pipeline_config()  # a loaded spec always maps onto a pipeline run


def test_schema_on_disk_matches_the_spec() -> None:
    """jobs/spec.schema.json (for editors) is what `gpgrid schema` prints today."""
    from pathlib import Path

    on_disk = Path(__file__).resolve().parents[1] / "jobs" / "spec.schema.json"
    assert on_disk.read_text() == spec_json_schema(), "regenerate: gpgrid schema --out " + str(
        on_disk
    )


def test_unquoted_yaml_dates_are_read_as_times() -> None:
    """YAML turns 1999-12-31 into a date; the spec keeps it as the ISO time it means."""
    import yaml

    spec = copy.deepcopy(BASE)
    spec["target"] = yaml.safe_load("{kind: forecast, steps: 3, issue_time: 1999-12-31}")
    assert parse_spec(spec).target.issue_time == "1999-12-31"
