"""An embedded Ray ends with its driver: SIGKILL of the driver, or of the driver and its watchdog
followed by a rerun, or a normal exit, leaves no process of that Ray session alive.

Real drivers (`python -c` calling `pipeline.cluster.ensure_ray`), real signals, no mocks. Each
driver prints the pids of its Ray processes - gcs_server, raylet, dashboard, monitors, both
agents, a worker - once they are all up; the test then kills and watches those very processes
(psutil.Process objects taken while they live, so a reused pid is never mistaken for one).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline import reaper

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 20  # every process of a dead driver's session must be gone within this

DRIVER = """
import json, os, sys, time
import psutil, ray
from pipeline import reaper
from pipeline.cluster import ensure_ray

ensure_ray(num_cpus=1)
@ray.remote
def pid():
    return os.getpid()
ray.get(pid.remote())
me = psutil.Process()
needed = {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}
for _ in range(150):  # the raylet starts the agents in the background
    procs = {p.pid: p.name() for p in me.children(recursive=True)}
    if needed <= set(procs.values()):
        break
    time.sleep(0.1)
records = list(reaper.records_dir().glob(f"{os.getpid()}-*.json"))
watchdog = json.loads(records[0].read_text())["watchdog_pid"] if records else None
procs.pop(watchdog, None)
session = ray._private.worker._global_node.get_session_dir_path()
print(json.dumps({"session_dir": session, "procs": procs, "watchdog": watchdog}), flush=True)
sys.stdin.read()  # until the test closes stdin (normal exit) or kills us
"""


class Driver:
    """A driver subprocess and the Ray processes it reported."""

    def __init__(self, tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = str(tmp)
        self.stderr = open(tmp / f"driver-{time.monotonic_ns()}.err", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.ray: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}
        self.watchdog: psutil.Process | None = None
        self.session_dir = ""

    def wait_ready(self, timeout: float = 90) -> None:
        """Read the driver's report: its Ray processes, its watchdog, its session dir."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stderr.seek(0)
            pytest.fail(f"driver did not start:\n{self.stderr.read().decode()[-3000:]}")
        report = json.loads(line)
        self.session_dir = report["session_dir"]
        for pid, name in report["procs"].items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self.ray[int(pid)] = psutil.Process(int(pid))
                self.names[int(pid)] = name
        if report["watchdog"] is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.watchdog = psutil.Process(report["watchdog"])

    def everything(self) -> list[psutil.Process]:
        """The Ray processes and the watchdog."""
        return list(self.ray.values()) + ([self.watchdog] if self.watchdog else [])

    def close(self) -> None:
        """Kill whatever is left of this driver and its cluster (test teardown)."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for proc in self.everything():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            if stream is not None:
                stream.close()


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until pid 1 reaps it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def survivors(driver: Driver, within: float = DEADLINE_S) -> list[str]:
    """The driver's Ray processes (and watchdog) still running after waiting up to `within` s."""
    deadline = time.monotonic() + within
    while True:
        left = [p for p in driver.everything() if running(p)]
        if not left or time.monotonic() > deadline:
            return [f"{p.pid} {driver.names.get(p.pid, 'watchdog')}" for p in left]
        time.sleep(0.2)


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short private RAY_TMPDIR (socket paths are capped at 107 bytes), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="rL", dir="/tmp"))
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(tmp)  # so reaper.records_dir() here points at it too
    try:
        yield tmp
    finally:
        for path in reaper.records_dir().glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                for proc in reaper.session_processes(reaper.Record.load(path).token):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def drivers(ray_tmp: Path) -> Iterator[list[Driver]]:
    """Drivers started by a test; all killed, with their clusters, at teardown."""
    started: list[Driver] = []
    try:
        yield started
    finally:
        for driver in started:
            driver.close()


def start(ray_tmp: Path, drivers: list[Driver]) -> Driver:
    """Start a driver and wait until its cluster is fully up."""
    driver = Driver(ray_tmp)
    drivers.append(driver)
    driver.wait_ready()
    names = set(driver.names.values())
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
    assert any(n.startswith("ray::") and "Agent" not in n for n in names), names  # a worker
    assert str(ray_tmp) in driver.session_dir
    return driver


def test_sigkilled_driver_takes_its_ray_along(ray_tmp: Path, drivers: list[Driver]) -> None:
    driver = start(ray_tmp, drivers)
    assert not reaper.session_processes("no-such-token")
    driver.proc.send_signal(signal.SIGKILL)
    driver.proc.wait()
    assert survivors(driver) == []
    assert list(reaper.records_dir().glob("*.json")) == []


def test_rerun_reaps_a_killed_run_and_a_normal_exit_leaves_nothing(
    ray_tmp: Path, drivers: list[Driver]
) -> None:
    first = start(ray_tmp, drivers)
    if first.watchdog is not None:  # it dies first, so nothing cleans up after the driver
        first.watchdog.kill()
        while running(first.watchdog):  # a zombie until the driver, its parent, dies
            time.sleep(0.05)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    time.sleep(1)
    agents = [p for pid, p in first.ray.items() if "Agent" in first.names[pid]]
    if not any(running(p) for p in agents):  # a Ray that ends its agents leaves nothing
        pytest.skip("Ray ended its agents itself: nothing is left for the rerun to reap")

    second = start(ray_tmp, drivers)  # its ensure_ray reaps the first run's leftovers
    assert survivors(first, within=0) == []
    assert len(list(reaper.records_dir().glob("*.json"))) == 1  # only the second's own

    assert second.proc.stdin is not None
    second.proc.stdin.close()  # normal interpreter exit
    assert second.proc.wait(60) == 0
    assert survivors(second) == []
    assert list(reaper.records_dir().glob("*.json")) == []
