"""Shared by the command-line and cluster tests: a small valid job spec, the `gpgrid`
command, and a real `ray start --head` cluster."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import requests
import zarr

from pipeline.config import AxisKernel, ModelConfig, PipelineConfig
from pipeline.inputs import open_input
from pipeline.journal import finished_tile_indices
from pipeline.resolved import resolve_run
from pipeline.storage import Location
from pipeline.synthetic import DIMS
from pipeline.work import TileWork

# A 3-tile-deep job over a synthetic (time, lat, lon) store at in.zarr, writing out.zarr.
SMALL_SPEC = {
    "input": {"path": "in.zarr", "variables": ["tas"], "dims": ["time", "lat", "lon"]},
    "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern52"}},
    "tiling": {
        "tile": {"time": 3, "lat": 10, "lon": 10},
        "halo": {"time": 1, "lat": 3, "lon": 3},
    },
    "output": {"path": "out.zarr"},
}


def resumable_config(input_path: str, output_path: str, **changes) -> PipelineConfig:  # noqa: ANN003
    """The small exact-GP run the resume, storage and cluster tests interrupt: a 6 x 32 x
    32 grid in 3 x 16 x 16 tiles, one output chunk per tile so that a kill keeps every
    finished tile; `changes` replace fields (storage options, tasks in flight)."""
    base = dict(
        input_path=input_path,
        variables=("tas",),
        dims=DIMS,
        output_path=output_path,
        tile=(3, 16, 16),
        halo=(1, 4, 4),
        model=ModelConfig(kernels=(AxisKernel("matern32"),) * 3, type="exact", max_points=700),
        max_in_flight=1,
        output_chunks=(3, 16, 16),
    )
    return PipelineConfig(**{**base, **changes})


def assert_identical_stores(store: str, expected: str, storage_options: dict | None = None) -> None:
    """Every array bitwise equal (NaN where NaN), and the same attributes (both stores
    reached with `storage_options`, e.g. a test server's endpoint)."""
    got, want = (
        zarr.open_group(Location(s, storage_options or {}).zarr_store(), mode="r")
        for s in (store, expected)
    )
    assert sorted(got.array_keys()) == sorted(want.array_keys())
    for name in want.array_keys():
        np.testing.assert_array_equal(got[name][...], want[name][...])
    assert dict(got.attrs) == dict(want.attrs)


def wait_for_tiles(
    store: str | Location, count: int, driver: subprocess.Popen, timeout: float = 180
) -> None:
    """Wait until the run writing `store` has journalled `count` tiles (its driver alive)."""
    deadline = time.monotonic() + timeout
    while len(finished_tile_indices(store)) < count:
        assert driver.poll() is None, "the driver ended before it was interrupted"
        assert time.monotonic() < deadline, f"fewer than {count} tiles after {timeout} s"
        time.sleep(0.05)


def tile_work(config: PipelineConfig, shared: dict | None = None) -> TileWork:
    """What a tile task of `config` receives (on CPU, with `shared` hyperparameters per
    variable or none), resolved against its input as a run does: to call tasks directly."""
    return resolve_run(config, open_input(config.input_path)).work("cpu", shared=shared)


def gpgrid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed `gpgrid` command in `cwd`, capturing its output."""
    script = Path(sys.executable).parent / "gpgrid"
    return subprocess.run(
        [str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_driver(config: PipelineConfig, folder: Path) -> subprocess.Popen:
    """A second driver process, joined to this module's Ray, running `config`."""
    pickled = folder / "config.pkl"
    pickled.write_bytes(pickle.dumps(config))
    address = ray.get_runtime_context().gcs_address
    code = (
        "import pickle, sys, ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        "from pipeline.runner import run_pipeline\n"
        f"run_pipeline(pickle.loads(open({str(pickled)!r}, 'rb').read()), progress=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1])


@contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """A real S3-compatible server (moto's standalone server) on 127.0.0.1 for as long as
    the context lasts; yields its endpoint URL."""
    port = free_port()
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the S3 server ended: {log.read_text()}"
            with suppress(requests.ConnectionError):
                requests.get(endpoint, timeout=1)
                break
            assert time.monotonic() < deadline, "the S3 server did not answer in 60 s"
            time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass(frozen=True)
class RayHead:
    """A started head: its job server's URL and its GCS address (what ray.init joins)."""

    url: str
    gcs: str


@contextmanager
def ray_head(auth_mode: str) -> Iterator[RayHead]:
    """A real `ray start --head` in its own process group."""
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
        yield RayHead(address, f"127.0.0.1:{ports['port']}")
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


def edge_jump_ratio(field: np.ndarray, axis: int, edges: list[int]) -> float:
    """Mean |step| between neighbouring cells along `axis` across tile edges (the step from
    cell i - 1 to cell i for each edge i) over the mean |step| inside tiles: about 1 when
    no edge shows, NaN steps (land, cells left unfilled) left out."""
    steps = np.abs(np.diff(field, axis=axis))
    at_edge = np.zeros(steps.shape[axis], dtype=bool)
    at_edge[[i - 1 for i in edges]] = True
    shape = [1] * steps.ndim
    shape[axis] = -1
    mask = np.broadcast_to(at_edge.reshape(shape), steps.shape)
    return float(np.nanmean(steps[mask]) / np.nanmean(steps[~mask]))
