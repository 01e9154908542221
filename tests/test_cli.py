"""The `gpgrid` command and job specs: validation messages, exit codes, a real run."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.spec import SpecError, load_spec, parse_spec
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC, gpgrid

GOOD = SMALL_SPEC


def with_change(section: str, key: str, value) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    spec[section][key] = value
    return spec


def test_good_spec_maps_dims_in_order(tmp_path) -> None:
    config = parse_spec(GOOD, base_dir=tmp_path).to_pipeline_config()
    assert [str(k) for k in config.model.kernels] == ["matern32", "matern32", "matern52"]
    assert config.model.isotropic == () and config.model.mean == "constant"
    assert config.tile == (3, 10, 10) and config.halo == (1, 3, 3)
    assert config.input_path == str(tmp_path / "in.zarr")
    assert config.output_path == str(tmp_path / "out.zarr")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            with_change("model", "kernel", {"time": "matern33", "lat": "rbf", "lon": "rbf"}),
            r"model\.kernel\.time: got 'matern33'; kernel 'matern33' is not one of rbf, matern12",
        ),
        (with_change("model", "colour", "red"), r"model\.colour: unknown key .*remove it"),
        ({k: v for k, v in GOOD.items() if k != "output"}, r"output: required but missing"),
        (
            with_change("tiling", "halo", {"time": 1}),
            r"tiling\.halo has keys \['time'\] but input\.dims .*are \['time', 'lat', 'lon'\]",
        ),
        (
            {**GOOD, "resources": {"num_gpus": -1}},
            r"resources\.num_gpus: got -1; Input should be greater than or equal to 0",
        ),
        (
            with_change("model", "multitask", True),
            r"model\.multitask needs model\.type exact or svgp and at least 2 input\.variables",
        ),
        (
            with_change("model", "warm_start", "old.zarr"),
            r"model\.warm_start gives shared hyperparameters: set model\.hyperparameters: shared",
        ),
        (
            {**GOOD, "model": {**GOOD["model"], "type": "svgp", "hyperparameters": "shared"}},
            r"hyperparameters: shared \(and warm_start\) work with kiss and exact models",
        ),
        (
            with_change("model", "isotropic", ["lat", "lon"]),
            r"model\.isotropic \['lat', 'lon'\] share one kernel, but model\.kernel gives them "
            r"\['matern32', 'matern52'\]",
        ),
        (
            with_change("model", "isotropic", ["lat", "depth"]),
            r"model\.isotropic \['lat', 'depth'\]: name two or more of the input columns",
        ),
        (
            with_change("model", "mean", "quadratic"),
            r"model\.mean: got 'quadratic'; Input should be 'constant', 'linear' or 'domain'",
        ),
        (
            {**with_change("model", "mean", "domain"), "target": {"kind": "forecast", "steps": 2}},
            r"model\.mean domain fits a trend over the input's own grid, which "
            r"\['target\.kind forecast'\] do not fit",
        ),
    ],
)
def test_bad_specs_name_the_field_value_and_fix(spec, expected) -> None:
    with pytest.raises(SpecError, match=expected):
        parse_spec(spec)


def test_spec_loading_never_executes_code(tmp_path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_cli_exit_codes_for_bad_input(tmp_path) -> None:
    missing = gpgrid("run", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "spec file" in missing.stderr and "does not exist" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("model", "kernel", {"time": "x"})))
    result = gpgrid("run", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "model.kernel" in result.stderr


@pytest.mark.usefixtures("ray_cluster", "failure_logs")
def test_cli_run_writes_the_store(tmp_path, monkeypatch) -> None:
    """The installed command runs the job in a process of its own, on its own embedded Ray;
    the rerun and the changed spec go through the same command in this process, on the
    session's Ray, saving a process and a Ray start each (a real process's exit codes are
    checked by the first run and by the test above)."""
    write_synthetic(
        str(tmp_path / "in.zarr"), SyntheticGrid(shape=(3, 20, 20), seed=2), (3, 10, 10)
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    result = gpgrid("run", str(spec), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 1,200 cells in 4 tiles" in result.stdout
    out = xr.open_zarr(tmp_path / "out.zarr")
    assert np.isfinite(out["tas"].values).all() and np.isfinite(out["tas_std"].values).all()
    monkeypatch.chdir(tmp_path)
    again = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "wrote 0 cells in 0 tiles" in again.stdout
    assert "(4 tiles were already written by an earlier run)" in again.stdout
    changed = {**GOOD, "model": {**GOOD["model"], "fit_points": 50}}
    spec.write_text(yaml.safe_dump(changed))
    refused = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert refused.exit_code == 2
    expected = "was made for another grid or spec (model.fit_points: store 400, job 50)"
    assert expected in refused.stderr


def test_help_lists_the_commands(tmp_path) -> None:
    result = gpgrid("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "demo"):
        assert command in result.stdout
