"""`gpgrid submit/status/logs/stop` against a real Ray head and its job server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner, Result

from jobs.cli import app
from jobs.spec import load_spec
from jobs.submit import default_submission_id, resolve_address
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC, free_port, ray_head

SPEC = SMALL_SPEC


def gpgrid(*args: str) -> Result:
    """The `gpgrid` command itself, run in this process."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    with ray_head("token") as started:
        yield started.url


@pytest.fixture(scope="module")
def job(head, tmp_path_factory) -> tuple[Path, Path, Result]:
    """One spec submitted with --wait: its path, its output and the CLI's result."""
    folder = tmp_path_factory.mktemp("submit")
    write_synthetic(str(folder / "in.zarr"), SyntheticGrid(shape=(3, 20, 20), seed=2), (3, 10, 10))
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    return spec, folder / "out.zarr", gpgrid("submit", str(spec), "--address", head, "--wait")


def job_id(spec: Path) -> str:
    return default_submission_id(load_spec(spec)[0])


def test_submit_waits_and_writes_the_store(head, job) -> None:
    spec, out_path, result = job
    assert result.exit_code == 0, result.output
    assert f"submitted {job_id(spec)} to {head}" in result.stdout
    assert f"{job_id(spec)} SUCCEEDED" in result.stdout
    out = xr.open_zarr(out_path)
    assert np.isfinite(out["tas"].values).all() and np.isfinite(out["tas_std"].values).all()


def test_the_same_spec_is_refused(head, job) -> None:
    spec = job[0]
    again = gpgrid("submit", str(spec), "--address", head)
    assert again.exit_code == 2
    assert f"a job with submission id {job_id(spec)} already exists" in again.stderr
    assert "(status SUCCEEDED)" in again.stderr and "--submission-id" in again.stderr


def test_status_and_logs(head, job) -> None:
    spec = job[0]
    status = gpgrid("status", job_id(spec), "--address", head)
    assert status.exit_code == 0, status.output
    assert "SUCCEEDED" in status.stdout
    logs = gpgrid("logs", job_id(spec), "--address", head)
    assert logs.exit_code == 0, logs.output
    assert "wrote 1,200 cells in 4 tiles" in logs.stdout
    followed = gpgrid("logs", job_id(spec), "--address", head, "--follow")
    assert followed.exit_code == 0, followed.output
    assert "wrote 1,200 cells in 4 tiles" in followed.stdout


def test_unknown_ids_are_bad_input(head, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a GCS address: --address still wins
    for command in ("stop", "status", "logs"):
        result = gpgrid(command, "gpgrid-nope-000000000000", "--address", head)
        assert result.exit_code == 2
        assert (
            f"no job with submission id gpgrid-nope-000000000000 at address {head}: "
            f"list jobs with `ray job list --address {head}`" in result.stderr
        )


def test_a_bad_spec_is_refused_before_submitting(head, tmp_path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "model": {"kernel": {"time": "x"}}}))
    result = gpgrid("submit", str(spec), "--address", head)
    assert result.exit_code == 2
    assert "model.kernel" in result.stderr


def test_an_unreachable_address_names_the_fix(tmp_path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    address = f"http://127.0.0.1:{free_port()}"
    result = gpgrid("submit", str(spec), "--address", address)
    assert result.exit_code == 1
    assert f"cannot reach a Ray job server at {address}" in result.stderr
    assert "ray start --head" in result.stderr


def test_submit_and_stop_on_a_head_without_token_auth(job, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the client then sends no token
    spec = job[0].with_name("plain.yaml")
    spec.write_text(yaml.safe_dump({**SPEC, "output": {"path": "plain.zarr"}}))
    with ray_head("disabled") as started:
        address = started.url
        submitted = gpgrid("submit", str(spec), "--address", address)
        stopped = gpgrid("stop", job_id(spec), "--address", address)
    assert submitted.exit_code == 0, submitted.output
    assert f"submitted {job_id(spec)} to {address}" in submitted.stdout
    assert stopped.exit_code == 0, stopped.output
    assert f"asked {job_id(spec)} at {address} to stop" in stopped.stdout


def test_submission_id_follows_the_resolved_spec(tmp_path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    first = job_id(spec)
    assert first.startswith("gpgrid-out-") and len(first) == len("gpgrid-out-") + 12
    spec.write_text("# the same job, written differently\n" + yaml.safe_dump(SPEC, indent=4))
    assert job_id(spec) == first
    changed = {**SPEC, "model": {**SPEC["model"], "fit_points": 50}}
    spec.write_text(yaml.safe_dump(changed))
    assert job_id(spec) != first


def test_the_address_comes_from_the_option_then_the_environment(monkeypatch) -> None:
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS, not a job server
    assert resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert resolve_address() == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://jobs.example")
    assert resolve_address() == "https://jobs.example"
    assert resolve_address("other:8265") == "http://other:8265"


def test_a_wrong_token_is_refused_with_the_fix(head) -> None:
    # a fresh process: Ray's token loader caches the token it found first
    script = "import typer; from jobs.submit import status_command; typer.run(status_command)"
    env = {**os.environ, "RAY_AUTH_TOKEN": "0" * 32}
    result = subprocess.run(
        [sys.executable, "-c", script, "gpgrid-nope-000000000000", "--address", head],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"the Ray cluster at {head} refused our token" in result.stderr
    assert "ray get-auth-token" in result.stderr
