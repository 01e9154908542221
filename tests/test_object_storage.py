"""Runs in and out of object storage: a real S3-compatible server on 127.0.0.1 (moto's),
reached through s3fs, with a real local Ray.

Gap filling end to end, a resume after SIGKILL bitwise identical to an uninterrupted
run, a second driver refused by the lease lock, and no credentials in the store.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs
import xarray as xr
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.config import PipelineConfig
from pipeline.errors import RunInProgressError
from pipeline.journal import finished_tile_indices, journal_dir
from pipeline.locks import LeaseLock
from pipeline.runner import run_pipeline
from pipeline.storage import Location
from pipeline.synthetic import DIMS, SyntheticGrid, write_synthetic
from tests.conftest import S3_KEY_ID, S3_SECRET
from tests.helpers import (
    assert_identical_stores,
    resumable_config,
    start_driver,
    wait_for_tiles,
)

pytestmark = pytest.mark.usefixtures("s3", "ray_cluster")

BUCKET = "gpgrid-test"
RECIPE = SyntheticGrid(shape=(6, 32, 32), seed=3)
TILES = 8


@pytest.fixture(scope="module")
def bucket(s3) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    return fs


@pytest.fixture(scope="module")
def local_source(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("input") / "syn.zarr"
    write_synthetic(str(path), RECIPE, chunks=(3, 16, 16))
    return str(path)


@pytest.fixture(scope="module")
def source(bucket, local_source) -> str:
    """The synthetic input, uploaded to the bucket."""
    bucket.put(local_source, f"{BUCKET}/input/syn.zarr", recursive=True)
    return f"s3://{BUCKET}/input/syn.zarr"


def config_for(s3: str, input_path: str, output_path: str) -> PipelineConfig:
    options = {"endpoint_url": s3}
    return resumable_config(
        input_path,
        output_path,
        input_options=options if input_path.startswith("s3://") else {},
        output_options=options if output_path.startswith("s3://") else {},
    )


@pytest.fixture(scope="module")
def reference(s3, source) -> str:
    """An uninterrupted run from and to the bucket."""
    out = f"s3://{BUCKET}/reference.zarr"
    summary = run_pipeline(config_for(s3, source, out), progress=False)
    assert summary.tiles == TILES and summary.resumed_tiles == 0
    return out


def test_gap_filling_end_to_end_on_s3_matches_a_local_run_and_writes_no_credentials(
    s3, bucket, source, local_source, tmp_path, failure_logs
) -> None:
    """`gpgrid run` with input and output in the bucket, its spec naming the endpoint and
    (the worst case) credentials in storage_options: the values equal a local run's, and
    neither those credentials nor the environment's appear in any object or the output."""
    key, secret = "AKIASPECKEY000000001", "spec-secret-never-written"
    options = {"endpoint_url": s3, "key": key, "secret": secret}
    out = f"s3://{BUCKET}/cli/out.zarr"
    on_s3 = job_spec(tmp_path / "s3.yaml", source, out, options)
    result = CliRunner().invoke(app, ["run", str(on_s3), "--no-progress"])
    assert result.exit_code == 0, result.output
    local = job_spec(tmp_path / "local.yaml", local_source, str(tmp_path / "local.zarr"))
    assert CliRunner().invoke(app, ["run", str(local), "--no-progress"]).exit_code == 0

    written = xr.open_zarr(out, storage_options={"endpoint_url": s3})
    expected = xr.open_zarr(tmp_path / "local.zarr")
    for name in ("tas", "tas_std"):
        np.testing.assert_array_equal(written[name].values, expected[name].values)
    assert not np.isnan(written["tas"].values).any()

    recorded = json.loads(bucket.cat(f"{BUCKET}/cli/out.zarr/zarr.json"))["attributes"]
    assert "<not recorded>" in recorded["gpgrid_spec"]
    secrets = (key, secret, S3_KEY_ID, S3_SECRET)
    for path in bucket.find(BUCKET):
        data = bucket.cat(path)
        assert not [s for s in secrets if s.encode() in data], f"a credential in {path}"
    assert not [s for s in secrets if s in result.output]
    for log in Path(failure_logs).rglob("*"):
        assert not [s for s in secrets if log.is_file() and s in log.read_text()]


def job_spec(path: Path, input_path: str, output_path: str, options: dict | None = None) -> Path:
    """A spec file for the synthetic input, with `options` for both ends when given."""
    spec = {
        "input": {"path": input_path, "variables": ["tas"], "dims": list(DIMS)},
        "model": {"type": "exact", "kernel": dict.fromkeys(DIMS, "matern32"), "max_points": 700},
        "tiling": {
            "tile": {"time": 3, "lat": 16, "lon": 16},
            "halo": {"time": 1, "lat": 4, "lon": 4},
        },
        "output": {"path": output_path},
    }
    if options:
        spec["input"]["storage_options"] = spec["output"]["storage_options"] = options
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_driver_killed_mid_run_on_s3_resumes_bitwise_identically(
    s3, source, reference, tmp_path
) -> None:
    out = f"s3://{BUCKET}/killed.zarr"
    config = config_for(s3, source, out)
    driver = start_driver(config, tmp_path)
    wait_for_tiles(config.output, 2, driver)
    driver.kill()  # SIGKILL: its lease stays behind, held by a process that is gone
    driver.wait()
    done_before = len(finished_tile_indices(config.output))
    assert 2 <= done_before < TILES

    summary = run_pipeline(config, progress=False)
    assert summary.resumed_tiles == done_before
    assert summary.cells == (TILES - done_before) * 3 * 16 * 16
    assert_identical_stores(out, reference, {"endpoint_url": s3})
    assert not journal_dir(config.output).child("lease").names(), "the lease was not released"


def test_a_second_driver_on_the_same_s3_output_is_refused(s3, source, reference, tmp_path) -> None:
    out = f"s3://{BUCKET}/contended.zarr"
    config = config_for(s3, source, out)
    driver = start_driver(config, tmp_path)
    wait_for_tiles(config.output, 1, driver)
    with pytest.raises(RunInProgressError, match=r"is being written by another run \(pid"):
        run_pipeline(config, progress=False)
    assert driver.wait(timeout=300) == 0
    assert_identical_stores(out, reference, {"endpoint_url": s3})


def journal_in_bucket(s3: str, name: str) -> Location:
    return Location(f"s3://{BUCKET}/leases/{name}.zarr.gpgrid", {"endpoint_url": s3})


def store_in_bucket(s3: str, name: str) -> Location:
    return Location(f"s3://{BUCKET}/leases/{name}.zarr", {"endpoint_url": s3})


def test_of_drivers_racing_for_a_lease_exactly_one_wins(s3) -> None:
    """The conditional create decides: racing drivers each see no lease, one creates it."""
    locks = [
        LeaseLock(store_in_bucket(s3, "race"), journal_in_bucket(s3, "race")) for _ in range(6)
    ]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(locks))

    def take(lock: LeaseLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except RunInProgressError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    for lock in locks:
        lock.release()
    assert not journal_in_bucket(s3, "race").exists(), "the released journal was left behind"


def forged_lease(s3: str, name: str, seconds_since_heartbeat: float) -> None:
    """A lease of a driver on another machine, last renewed that long ago."""
    lease = {
        "owner": "pid 4242 on elsewhere, started 2026-12-01T00:00:00",
        "host": "elsewhere.example.org",
        "pid": 4242,
        "process_started": 0.0,
        "renewed": time.time() - seconds_since_heartbeat,
        "ttl": 30.0,
    }
    journal_in_bucket(s3, name).child("lease").child("000000007.json").write_text(json.dumps(lease))


def test_a_lease_of_another_machine_holds_until_it_expires(s3) -> None:
    forged_lease(s3, "alive", seconds_since_heartbeat=5)
    lock = LeaseLock(store_in_bucket(s3, "alive"), journal_in_bucket(s3, "alive"))
    with pytest.raises(RunInProgressError, match=r"on elsewhere.*last heartbeat 5 s ago"):
        lock.acquire()

    forged_lease(s3, "expired", seconds_since_heartbeat=31)
    lock = LeaseLock(store_in_bucket(s3, "expired"), journal_in_bucket(s3, "expired"))
    lock.acquire()
    assert lock.generation == 8
    assert journal_in_bucket(s3, "expired").child("lease").names() == ["000000008.json"]
    lock.release()


def test_a_holder_taken_over_stops_writing(s3) -> None:
    """A driver that stalled past its lease's expiry and was taken over finds out at its
    next heartbeat: confirm() then refuses every further write."""
    lock = LeaseLock(store_in_bucket(s3, "stalled"), journal_in_bucket(s3, "stalled"), ttl=0.8)
    lock.acquire()
    lock.confirm()
    taker = {"owner": "pid 1 on elsewhere, started now", "renewed": time.time(), "ttl": 30}
    journal_in_bucket(s3, "stalled").child("lease").child("000000002.json").write_text(
        json.dumps(taker)
    )
    deadline = time.monotonic() + 10
    while lock.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunInProgressError, match=r"lost its lock .*taken by pid 1 on elsewhere"):
        lock.confirm()
    lock.release()
    assert journal_in_bucket(s3, "stalled").child("lease").names() == [
        "000000001.json",
        "000000002.json",
    ], "a holder that lost the lease must leave the leases alone"
