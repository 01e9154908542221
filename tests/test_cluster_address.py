"""A run given a cluster's address runs on that cluster, and starts or joins Ray once.

Against a real `ray start --head` with token auth on free ports. Each run is a fresh
driver process (Ray reads RAY_AUTH_MODE once per process), with no Ray running in it and
no RAY_ADDRESS, so a run that ignored the address would start an embedded Ray of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import xarray as xr
import yaml

from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC, RayHead, ray_head

# A driver that counts the calls of ensure_ray (the real one still runs) wherever it is
# imported from, runs the spec at argv[2] with address argv[3] through argv[1]
# (run_pipeline or run_job), and prints what it joined.
DRIVER = """
import json, sys
import ray
import jobs.run, pipeline.cluster, pipeline.runner
from jobs.spec import load_spec

calls, real = [], pipeline.cluster.ensure_ray
def counted(address=None, num_cpus=None):
    calls.append(address)
    real(address, num_cpus)
for module in (pipeline.cluster, pipeline.runner, jobs.run):
    if hasattr(module, "ensure_ray"):
        module.ensure_ray = counted

how, spec_path, address = sys.argv[1:]
job, text = load_spec(spec_path)
if how == "run_pipeline":
    summary = pipeline.runner.run_pipeline(
        job.to_pipeline_config(text), progress=False, address=address
    )
else:
    summary = jobs.run.run_job(job, text, address=address, progress=False)
gcs = ray.get_runtime_context().gcs_address
print(json.dumps({"gcs": gcs, "calls": calls, "tiles": summary.tiles, "out": summary.output_path}))
"""


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head("token") as started:
        yield started


def run_driver(how: str, head: RayHead, folder: Path) -> dict:
    """SMALL_SPEC over a synthetic store in `folder`, run by a fresh driver process."""
    write_synthetic(str(folder / "in.zarr"), SyntheticGrid(shape=(3, 20, 20), seed=2), (3, 10, 10))
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump(SMALL_SPEC))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["RAY_AUTH_MODE"] = "token"  # send the head's token (~/.ray/auth_token)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, how, str(spec), head.gcs],
        cwd=Path(__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def port(address: str) -> str:
    """A GCS address's port (the host may be given as the node's own IP address)."""
    return address.rsplit(":", 1)[1]


@pytest.mark.parametrize("how", ["run_pipeline", "run_job"])
def test_a_run_given_an_address_runs_on_that_cluster_joining_once(
    head, tmp_path: Path, how: str
) -> None:
    ran = run_driver(how, head, tmp_path)
    assert port(ran["gcs"]) == port(head.gcs), f"ran on {ran['gcs']}, not the head {head.gcs}"
    assert ran["calls"] == [head.gcs]
    assert ran["tiles"] == 4
    assert xr.open_zarr(ran["out"])["tas"].notnull().all()
