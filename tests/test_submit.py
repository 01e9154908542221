"""`gpgrid submit/status/logs/stop` against a real Ray head and its job server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
import requests
import xarray as xr
import yaml
from typer.testing import CliRunner, Result

from jobs.cli import app
from jobs.spec import load_spec
from jobs.submit import default_submission_id, resolve_address
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC

SPEC = SMALL_SPEC
VENV_BIN = Path(sys.executable).parent
HEAD_PORTS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


def gpgrid(*args: str) -> Result:
    """The `gpgrid` command itself, run in this process."""
    return CliRunner().invoke(app, list(args))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ray_head(auth_mode: str) -> Iterator[str]:
    """A real `ray start --head` in its own process group; yields its job server's URL."""
    if auth_mode == "token":
        # the head needs a token: make the default one (~/.ray/auth_token) if there is none,
        # as ray.init() does for the other test modules
        subprocess.run(
            [str(VENV_BIN / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True
        )
    temp_dir = tempfile.mkdtemp(prefix="rts", dir="/tmp")  # socket paths must stay short
    ports = {name: free_port() for name in HEAD_PORTS}
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # job entrypoints run `gpgrid`
        "RAY_AUTH_MODE": auth_mode,
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stop at once when the test ends
    }
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # a head, not a client
        env.pop(name, None)
    options = "--head --block --num-cpus 2 --include-dashboard true --dashboard-host 127.0.0.1"
    command = [str(VENV_BIN / "ray"), "start", *options.split(), "--temp-dir", temp_dir]
    command += ["--disable-usage-stats"]
    command += [arg for name, port in ports.items() for arg in (f"--{name}", str(port))]
    log = Path(temp_dir) / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        # the job server answers first; its node agent (which runs jobs) once the node is up
        for url in (address, f"http://127.0.0.1:{ports['dashboard-agent-listen-port']}"):
            wait_until_answering(url, head, log)
        yield address
    finally:
        stop_head(head, temp_dir)


def wait_until_answering(url: str, head: subprocess.Popen, log: Path) -> None:
    """Wait for any HTTP answer from `url` (401 with token auth still means it is up)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert head.poll() is None, f"ray start exited {head.returncode}:\n{log.read_text()}"
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers at {url} after 60 s:\n{log.read_text()}")


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """End our head's process group, then kill what is left of it (workers still starting)."""
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    for pid in processes_after(5, head.pid, temp_dir):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not processes_after(5, head.pid, temp_dir), "Ray processes survived SIGKILL"


def processes_after(seconds: float, group: int, temp_dir: str) -> list[int]:
    """Our processes still alive after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while (left := our_processes(group, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def our_processes(group: int, temp_dir: str) -> list[int]:
    """Live processes in the head's group, or run from its temp dir (job drivers: their cwd)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, _, pgid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if state != "Z" and (int(pgid) == group or temp_dir in cmdline or temp_dir in cwd):
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    with ray_head("token") as address:
        yield address


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
    with ray_head("disabled") as address:
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
