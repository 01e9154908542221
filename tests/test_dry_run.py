"""`gpgrid run --dry-run`: the plan printed without starting Ray or writing anything, and
its figures agree with what the real run then does."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs.spec import parse_spec
from pipeline.plan_report import plan_report
from pipeline.runner import run_pipeline
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC, gpgrid

TEMPLATE_ATTRIBUTES = {
    "title",
    "Conventions",
    "source",
    "gpgrid_version",
    "gpgrid_spec",
    "gpgrid_input",
    "gpgrid_model",
}


@pytest.fixture
def small_job(tmp_path):  # noqa: ANN201
    """SMALL_SPEC's 3 x 20 x 20 float32 grid in 4 tiles of 3 x 10 x 10, halos 1 x 3 x 3."""
    write_synthetic(
        str(tmp_path / "in.zarr"), SyntheticGrid(shape=(3, 20, 20), seed=2), (3, 10, 10)
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(SMALL_SPEC))
    return spec


def test_dry_run_prints_the_plan_and_starts_nothing(small_job, tmp_path, monkeypatch) -> None:
    ray_tmp = tmp_path / "ray"
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    result = gpgrid("run", str(small_job), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("grid      time 3, lat 20, lon 20 (1,200 cells)")
    assert lines[1] == "tiles     4 of time 3, lat 10, lon 10"
    # the default groups the four small tiles into one chunk, which the driver assembles
    assert lines[2] == "output    1 chunk of time 3, lat 20, lon 20"
    # windows clipped at the grid's edges: 3 x 13 x 13 cells each, 4 bytes a cell
    assert lines[3].startswith("read      8.1 kB")
    assert lines[4].startswith("write     9.6 kB")  # 1,200 cells x (mean, std) x 4 bytes
    assert lines[5].startswith("writers   the driver")
    assert not (tmp_path / "out.zarr").exists()
    assert not ray_tmp.exists(), "a dry run started Ray"


@pytest.mark.usefixtures("ray_cluster")
def test_dry_run_figures_match_the_run(small_job, tmp_path) -> None:
    """Tiles and root metadata as the run makes them (the run adds only its fitted
    attributes, none for this spec's fixed kernels); with one chunk per tile, the tasks
    write."""
    text = small_job.read_text()
    spec = yaml.safe_load(text)
    spec["output"]["chunks"] = spec["tiling"]["tile"]
    spec["tiling"]["halo"] = {"time": 0, "lat": 0, "lon": 0}
    config = parse_spec(spec, base_dir=tmp_path).to_pipeline_config(yaml.safe_dump(spec))
    plan = plan_report(config)
    assert plan.workers_write and plan.stored_objects == plan.tiles == 4
    summary = run_pipeline(config, progress=False)
    assert summary.tiles == plan.tiles and summary.driver_chunks == 0
    root = json.loads((tmp_path / "out.zarr" / "zarr.json").read_text())
    fitted = {k: v for k, v in root["attributes"].items() if k not in TEMPLATE_ATTRIBUTES}
    real = (tmp_path / "out.zarr" / "zarr.json").stat().st_size
    assert plan.metadata_bytes <= real <= plan.metadata_bytes + len(json.dumps(fitted)) + 64
