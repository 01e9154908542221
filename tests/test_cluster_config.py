"""cluster.yaml is a valid Ray cluster-launcher config with the promised shape."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema() -> None:
    validate_config(prepare_config(yaml.safe_load(CLUSTER_YAML.read_text())))


def test_head_runs_no_work_and_dashboard_stays_inside() -> None:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--dashboard-host=127.0.0.1" in start
    assert any("pip install" in c and "gpgrid" in c for c in config["setup_commands"])
