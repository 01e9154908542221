"""A run on a real multi-node Ray cluster on this machine (a head that takes no tasks and
two worker nodes, each its own raylet with its own CPU), input and output through a
local S3 server: tiles are spread over the nodes, the output equals an embedded run's,
and a worker node killed mid-run costs nothing but time.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
import s3fs
from ray.cluster_utils import Cluster

from pipeline.config import PipelineConfig
from pipeline.journal import finished_tile_indices, finished_tiles
from pipeline.runner import run_pipeline
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import assert_identical_stores, resumable_config

BUCKET = "gpgrid-nodes"
RECIPE = SyntheticGrid(shape=(6, 32, 32), seed=5)
TILES = 8
STORE_BYTES = 100 * 1024**2


@pytest.fixture(scope="module")
def source(s3, tmp_path_factory) -> str:
    """The synthetic input, in the bucket."""
    local = tmp_path_factory.mktemp("input") / "syn.zarr"
    write_synthetic(str(local), RECIPE, chunks=(3, 16, 16))
    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    fs.put(str(local), f"{BUCKET}/input/syn.zarr", recursive=True)
    return f"s3://{BUCKET}/input/syn.zarr"


def config_for(s3: str, input_path: str, output_path: str) -> PipelineConfig:
    options = {"endpoint_url": s3}
    return resumable_config(
        input_path, output_path, max_in_flight=2, input_options=options, output_options=options
    )


@pytest.fixture(scope="module")
def embedded(s3, source) -> str:
    """The same run on an embedded single-node Ray, before the cluster starts."""
    out = f"s3://{BUCKET}/embedded.zarr"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=STORE_BYTES,
        logging_level="WARNING",
    )
    try:
        run_pipeline(config_for(s3, source, out), progress=False)
    finally:
        ray.shutdown()
    return out


@pytest.fixture(scope="module")
def cluster(embedded):  # noqa: ANN201
    """A head with no CPUs (it schedules, takes no tasks) and two one-CPU worker nodes."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": STORE_BYTES,
        },
    )
    workers = [cluster.add_node(num_cpus=1, object_store_memory=STORE_BYTES) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_tiles_spread_over_the_nodes_and_the_output_equals_an_embedded_run(
    s3, source, embedded, cluster
) -> None:
    _, workers = cluster
    config = config_for(s3, source, f"s3://{BUCKET}/spread.zarr")
    summary = run_pipeline(config, progress=False)
    assert summary.tiles == TILES
    nodes = {record["worker_node"] for record in finished_tiles(config.output).values()}
    assert nodes == {worker.node_id for worker in workers}, "a node ran no tile"
    assert_identical_stores(config.output_path, embedded, {"endpoint_url": s3})


def test_a_worker_node_killed_mid_run_and_the_run_completes_identically(
    s3, source, embedded, cluster
) -> None:
    """Its raylet and workers are killed once two tiles are done: the tasks it held are
    retried on the other node, and the output is still bitwise the embedded run's."""
    whole, workers = cluster
    config = config_for(s3, source, f"s3://{BUCKET}/killed_node.zarr")
    killed_after: list[int] = []

    def kill_a_node_mid_run() -> None:
        deadline = time.monotonic() + 300
        while len(finished_tile_indices(config.output)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_after.append(len(finished_tile_indices(config.output)))
        whole.remove_node(workers[1], allow_graceful=False)

    killer = threading.Thread(target=kill_a_node_mid_run)
    killer.start()
    summary = run_pipeline(config, progress=False)
    killer.join()
    assert killed_after and 2 <= killed_after[0] < TILES, f"killed after {killed_after} tiles"
    assert summary.tiles == TILES
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2, "the node was not killed"
    records = finished_tiles(config.output).values()
    assert {r["worker_node"] for r in records} >= {workers[0].node_id}
    assert_identical_stores(config.output_path, embedded, {"endpoint_url": s3})
