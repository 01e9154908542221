"""Shared fixtures: a real local Ray per test module, and devices to run numerics on."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_TMPDIR", "/tmp/ray_gpgrid_tests")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def ray_cluster():
    """One real local Ray cluster (2 CPUs, no dashboard) for the whole test module."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


# credentials a test's S3 server accepts, made to be found should anything write them
S3_KEY_ID = "AKIAGPGRIDTESTKEY0001"
S3_SECRET = "gpgrid-test-secret-never-written"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):  # noqa: ANN201
    """A real S3-compatible server on 127.0.0.1 for the module, its credentials in the
    usual environment variables (set before the module's Ray starts, so workers see them);
    yields the endpoint URL."""
    from tests.helpers import s3_server

    log = tmp_path_factory.mktemp("s3") / "server.log"
    with pytest.MonkeyPatch.context() as env, s3_server(log) as endpoint:
        env.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield endpoint


@pytest.fixture
def failure_logs(tmp_path_factory, monkeypatch):  # noqa: ANN201
    """A fresh folder for the command's failure logs (GPGRID_LOG_DIR), outside any test's
    own files; the embedded Ray, not a cluster named by RAY_ADDRESS."""
    folder = tmp_path_factory.mktemp("logs")
    monkeypatch.setenv("GPGRID_LOG_DIR", str(folder))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return folder
