"""Faults during a run: Ctrl-C and a full disk; what is kept, what is said.

A failure that is not the user's input exits 1 with one line on screen and the whole
traceback in a log; an interrupted or failed run keeps its finished tiles for the rerun,
and one that wrote nothing leaves nothing behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.spec import parse_spec
from pipeline.journal import finished_tiles, journal_dir
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC

pytestmark = pytest.mark.usefixtures("ray_cluster", "failure_logs")


def job(folder: Path, shape: tuple[int, int, int], output: str, **model: object) -> Path:
    """A synthetic input of `shape` in `folder` and a spec writing to `output`."""
    write_synthetic(str(folder / "in.zarr"), SyntheticGrid(shape=shape, seed=3), (3, 10, 10))
    spec = yaml.safe_load(yaml.safe_dump(SMALL_SPEC))
    spec["input"]["path"] = str(folder / "in.zarr")
    spec["output"]["path"] = output
    spec["model"].update(model)
    spec["resources"] = {"max_in_flight": 1}
    spec["output"]["chunks"] = spec["tiling"]["tile"]  # one chunk per tile: kills keep tiles
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_ctrl_c_says_what_was_kept_and_the_rerun_resumes(tmp_path) -> None:
    # 16 tiles, one at a time: enough left when the first is journalled that the signal
    # lands mid-run (6 fast tiles could all finish before it)
    spec = job(tmp_path, (3, 40, 40), str(tmp_path / "out.zarr"))
    command = [str(Path(sys.executable).parent / "gpgrid"), "run", str(spec), "--no-progress"]
    # SIGINT at its default in the driver, even where pytest was started with it ignored
    # (a background job of a shell without job control): Python then handles it as Ctrl-C.
    driver = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    tiles = Path(journal_dir(str(tmp_path / "out.zarr")).url) / "tiles"
    deadline = time.monotonic() + 120
    while not (tiles.is_dir() and any(tiles.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr
    kept = len(finished_tiles(str(tmp_path / "out.zarr")))
    assert 1 <= kept < 16
    assert f"interrupted: {kept} finished tiles are kept in {tmp_path / 'out.zarr'}" in stderr
    assert "run the same command again to resume" in stderr
    rerun = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert rerun.exit_code == 0, rerun.output
    assert f"({kept} tiles were already written by an earlier run)" in rerun.stdout


@pytest.fixture
def small_disk(tmp_path):  # noqa: ANN201
    """A function mounting a tmpfs of a given size at a new folder (skips where not allowed)."""
    mounts: list[Path] = []

    def mount(kib: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_names_the_path_keeps_finished_tiles_and_resumes(
    tmp_path, small_disk, failure_logs
) -> None:
    disk = small_disk(120)  # room for the template and about half of the 16 tiles
    out = disk / "out.zarr"
    spec = job(tmp_path, (3, 40, 40), str(out))
    result = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "writing tile" in result.stderr and str(out) in result.stderr
    assert "free disk space" in result.stderr and "rerun to resume" in result.stderr
    assert result.stderr.startswith("gpgrid: failed: StorageError: ")
    assert "traceback in" in result.stderr
    logs = list(failure_logs.glob("*.log"))
    assert logs and "Traceback" in logs[0].read_text()
    kept = finished_tiles(str(out))
    assert 0 < len(kept) < 16
    # the store that fit is intact: every finished tile's cells are written
    written = xr.open_zarr(out, consolidated=False)["tas"].values
    assert np.isfinite(written).sum() >= len(kept) * 3 * 10 * 10
    # free the space (move the store to a bigger disk) and rerun: it resumes
    moved = tmp_path / "big"
    moved.mkdir()
    subprocess.run(["cp", "-a", str(out), journal_dir(str(out)).url, str(moved)], check=True)
    spec.write_text(spec.read_text().replace(str(out), str(moved / "out.zarr")))
    rerun = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert rerun.exit_code == 0, rerun.output
    assert f"({len(kept)} tiles were already written by an earlier run)" in rerun.stdout


def test_a_run_that_wrote_nothing_leaves_nothing(tmp_path, small_disk) -> None:
    disk = small_disk(16)  # room for the store's metadata, not for one tile
    out = disk / "out.zarr"
    spec = job(tmp_path, (6, 80, 80), str(out))
    result = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert list(disk.iterdir()) == []


def test_home_paths_are_expanded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = {**SMALL_SPEC, "output": {"path": "~/filled.zarr"}}
    config = parse_spec(spec, base_dir=tmp_path / "specs").to_pipeline_config()
    assert config.output_path == str(tmp_path / "filled.zarr")


def test_tiles_without_data_are_counted_in_the_summary_and_inspect(tmp_path) -> None:
    spec = job(tmp_path, (3, 20, 20), str(tmp_path / "out.zarr"))
    unblended = yaml.safe_load(spec.read_text())
    unblended["tiling"]["blend"] = {}  # each tile's own cells, as it predicted them
    spec.write_text(yaml.safe_dump(unblended))
    source = xr.open_zarr(tmp_path / "in.zarr").load()
    values = source["tas"].values.copy()
    values[:, 7:, 7:] = 4.0  # tile (1, 1) reads only this constant (and the NaN below)
    values[:, :13, :13] = np.nan  # tile (0, 0) reads no observation at all
    source["tas"].values = values
    for var in source.variables.values():
        var.encoding = {}
    source.to_zarr(tmp_path / "in.zarr", mode="w", consolidated=False)
    result = CliRunner().invoke(app, ["run", str(spec), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "tas: 1 of 4 tiles had too few observations (left NaN)" in result.stderr
    assert "1 of 4 tiles were constant (predicted as that constant)" in result.stderr
    out = xr.open_zarr(tmp_path / "out.zarr")
    assert np.isnan(out["tas"].values[:, :10, :10]).all()
    assert np.allclose(out["tas"].values[:, 10:, 10:], 4.0)
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "out.zarr")])
    assert "skipped    tas: 1 tiles had too few observations (left NaN): 0" in shown.stdout
