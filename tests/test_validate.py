"""gpgrid validate, inspect and plot through the real command, on a synthetic GP draw.

The command runs in this process, on the session's Ray: no process and no Ray to start per
call (test_cli runs the installed command as a process of its own)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner, Result

from jobs.cli import app
from jobs.run import run_job
from jobs.spec import load_spec
from jobs.validate import validate_job
from pipeline.holdout import choose_hold_out
from pipeline.scores import score_gap_cells
from pipeline.synthetic import SyntheticGrid, make_synthetic_dataset, write_synthetic
from pipeline.tile_records import read_tile_records


def gpgrid(*args: str) -> Result:
    """The `gpgrid` command run in this process."""
    return CliRunner().invoke(app, list(args))


SPEC = {
    "input": {"path": "in.zarr", "variables": ["tas"], "dims": ["time", "lat", "lon"]},
    "model": {"kernel": {"time": "matern32", "lat": "matern32", "lon": "matern32"}},
    "tiling": {
        "tile": {"time": 4, "lat": 24, "lon": 24},
        "halo": {"time": 0, "lat": 0, "lon": 0},
    },
    "output": {"path": "out.zarr"},
}


def test_hold_out_hides_observed_cells_in_random_and_block_sets() -> None:
    ds = make_synthetic_dataset(SyntheticGrid(shape=(6, 30, 30), seed=1))
    dims = ("time", "lat", "lon")
    hold = choose_hold_out(ds, ["tas"], dims, 0.05, {"lat": 5, "lon": 5}, seed=3)
    observed = np.isfinite(ds["tas"].values)
    random, blocks = hold.random["tas"], hold.blocks["tas"]
    assert not (random & blocks).any() and not ((random | blocks) & ~observed).any()
    target = int(0.05 * observed.sum())
    assert random.sum() == target and target <= blocks.sum() < target + 5 * 5 * 6
    # blocks are contiguous: every hidden block cell has a hidden or unobserved neighbour
    lat_runs = blocks[:, 1:, :] & blocks[:, :-1, :]
    assert lat_runs.sum() > 0.5 * blocks.sum()


@pytest.mark.usefixtures("ray_cluster", "failure_logs")
def test_validate_inspect_and_plot_commands(tmp_path, monkeypatch) -> None:
    write_synthetic(
        str(tmp_path / "in.zarr"), SyntheticGrid(shape=(4, 24, 24), seed=2), (4, 24, 24)
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(SPEC))
    monkeypatch.chdir(tmp_path)
    result = gpgrid("validate", "job.yaml", "--no-progress", "--block", "lat=4")
    assert result.exit_code == 0, result.output
    rows = {
        m[0]: (float(m[1]), float(m[2]))
        for m in re.findall(
            r"^tas\s+(random|blocks|gaps|deep)\s+[\d,]+\s+\S+\s+(\S+)\s+\S+\s+\S+\s+(\S+)$",
            result.stdout,
            re.MULTILINE,
        )
    }
    assert set(rows) == {"random", "blocks", "gaps", "deep"}, result.stdout
    assert "tas: every hidden cell, by distance to the nearest observation" in result.stdout
    assert "headline, weighted like the cells to fill (100% of them" in result.stdout
    for rmse, coverage in rows.values():
        assert rmse < 1.0 and 0.8 <= coverage <= 1.0  # a draw from the model's own prior
    spans = re.search(
        r"tas: by distance in learned lengthscales \(cells per lengthscale: "
        r"time (\S+), lat (\S+), lon (\S+)\)",
        result.stdout,
    )
    assert spans is not None, result.stdout
    # The validation's own tile records: each dim's one per-axis Matérn range over its step.
    validated = xr.open_zarr(tmp_path / "out.zarr.validate" / "output.zarr")
    for dim, shown in zip(("time", "lat", "lon"), spans.groups(), strict=True):
        column = SPEC["input"]["dims"].index(dim)
        learned = [
            factor["lengthscale"][0]
            for record in read_tile_records(str(tmp_path / "out.zarr.validate" / "output.zarr"))
            for factor in record["variables"]["tas"]["hyperparameters"]["kernel"]["base"]["factors"]
            if factor["dims"] == [column]
        ]
        steps = np.diff(validated[dim].values)
        if np.issubdtype(steps.dtype, np.timedelta64):
            steps = steps / np.timedelta64(1, "D")  # the GP reads time in days
        step = float(np.abs(steps).mean())
        assert float(shown) == pytest.approx(np.median(learned) / step, rel=5e-3)  # 3 digits
    cells_by_kind = sum(
        int(m.replace(",", ""))
        for m in re.findall(
            r"^tas\s+(?:random|blocks|gaps|deep)\s+([\d,]+)", result.stdout, re.MULTILINE
        )
    )
    table = result.stdout.split("by distance in learned lengthscales")[1]
    in_ranges = sum(
        int(m.replace(",", ""))
        for m in re.findall(r"^\S+\s+([\d,]+)\s+\S+\s+\S+\s+[\d.]+$", table, re.MULTILINE)
    )
    assert in_ranges == cells_by_kind  # every hidden cell lands in one range band
    assert not (tmp_path / "out.zarr").exists()  # validation leaves the job's output alone

    run = gpgrid("run", "job.yaml", "--no-progress")
    assert run.exit_code == 0, run.output
    shown = gpgrid("inspect", "out.zarr")
    assert shown.exit_code == 0, shown.output
    assert "complete (1 chunks written)" in shown.stdout and "matern32" in shown.stdout
    assert "tas_std" in shown.stdout and "standard_name" in shown.stdout

    plotted = gpgrid("plot", "out.zarr", "--at", "2", "--out", "look.png")
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "look.png").read_bytes()[:4] == b"\x89PNG"
    missing = gpgrid("plot", "out.zarr", "--variable", "nope")
    assert missing.exit_code == 2 and "'nope' is not in" in missing.stderr
    assert np.isfinite(xr.open_zarr(tmp_path / "out.zarr")["tas"].values).all()


@pytest.mark.usefixtures("ray_cluster", "failure_logs")
def test_the_reweighted_headline_predicts_the_error_in_the_real_gaps(tmp_path) -> None:
    """On a GP draw with known truth: the validation's headline RMSE, re-weighted to the
    distances of the cells the job fills, is within 10% of the RMSE the job makes there
    (against truth plus the draw's noise, which is what a held-out reading holds)."""
    recipe = SyntheticGrid(shape=(6, 60, 60), gap_fraction=0.35, blob_share=0.9, seed=4)
    source = write_synthetic(str(tmp_path / "in.zarr"), recipe, (6, 30, 30))
    spec = {
        **SPEC,
        "tiling": {
            "tile": {"time": 6, "lat": 30, "lon": 30},
            "halo": {"time": 0, "lat": 4, "lon": 4},
        },
    }
    spec["input"] = {**SPEC["input"], "path": str(tmp_path / "in.zarr")}
    spec["output"] = {"path": str(tmp_path / "out.zarr")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    job, _ = load_spec(tmp_path / "job.yaml")
    summary = run_job(job, progress=False)
    latent = score_gap_cells(xr.open_zarr(summary.output_path), source, "tas")["rmse"]
    real = float(np.hypot(latent, recipe.noise_std))
    validation = validate_job(job, progress=False)
    headline = validation.bands["tas"].headline
    assert headline is not None and headline.measured_share > 0.99
    kinds = {kind: round(s["rmse"], 4) for kind, s in validation.scores["tas"].items()}
    print(f"headline RMSE {headline.rmse:.4f}, in the real gaps {real:.4f}; by kind {kinds}")
    assert abs(headline.rmse / real - 1) < 0.10, (headline, real, validation.scores)


def test_quicklook_draws_two_dim_grids_and_station_series(tmp_path) -> None:
    """A lat x lon grid and a time x station table (station names as positions)."""
    from jobs.plots import quicklook

    gen = np.random.default_rng(0)
    cells = ("lat", "lon")
    grid = xr.Dataset(
        {"v": (cells, gen.normal(size=(6, 8))), "v_std": (cells, np.ones((6, 8)))},
        coords={"lat": np.arange(6.0), "lon": np.arange(8.0)},
    )
    rows = ("time", "station")
    stations = xr.Dataset(
        {"v": (rows, gen.normal(size=(5, 3))), "v_std": (rows, np.ones((5, 3)))},
        coords={"time": np.arange(5.0), "station": ["EWR", "JFK", "LGA"]},
    )
    for name, ds in (("grid", grid), ("stations", stations)):
        png = quicklook(ds, ds, "v", tmp_path / f"{name}.png")
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_quicklook_shows_the_truth_beside_the_mean_where_the_input_carries_it(tmp_path) -> None:
    from matplotlib.image import imread

    from jobs.plots import quicklook

    cells = ("lat", "lon")
    values = np.random.default_rng(1).normal(size=(6, 8))
    plain = xr.Dataset(
        {"v": (cells, values), "v_std": (cells, np.ones((6, 8)))},
        coords={"lat": np.arange(6.0), "lon": np.arange(8.0)},
    )
    with_truth = plain.assign(v_true=(cells, values + 0.1))
    widths = [
        imread(quicklook(ds, plain, "v", tmp_path / f"{name}.png")).shape[1]
        for name, ds in (("plain", plain), ("truth", with_truth))
    ]
    assert widths[1] == round(widths[0] * 4 / 3)  # a fourth panel of the same width
