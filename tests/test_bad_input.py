"""Bad inputs and faults as a hostile user would try them, through the real `gpgrid` command.

Every case asserts the exit code (2: bad input, 1: failure), that the message names the
problem (field, file or variable) and the fix, and that every file that existed before
the command (the input, the spec's folder, the user's files, earlier outputs) is
byte-identical afterwards, with nothing new written. Most cases fail before any tile runs;
the command runs in this process on one Ray for the module.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from typer.testing import CliRunner

from jobs.cli import app
from pipeline.journal import journal_dir
from pipeline.synthetic import SyntheticGrid, write_synthetic
from tests.helpers import SMALL_SPEC

pytestmark = pytest.mark.usefixtures("ray_cluster", "failure_logs")


def gpgrid(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args))


def write_input(folder: Path, name: str = "in.zarr") -> Path:
    path = folder / name
    write_synthetic(str(path), SyntheticGrid(shape=(3, 20, 20), seed=2), (3, 10, 10))
    return path


def spec_with(folder: Path, name: str = "job.yaml", **sections: dict) -> Path:
    """SMALL_SPEC with some sections' keys replaced, written as `folder/name`."""
    spec = yaml.safe_load(yaml.safe_dump(SMALL_SPEC))
    for section, changes in sections.items():
        spec[section] = {**spec.get(section, {}), **changes}
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def finished_run(folder: Path) -> Path:
    """The input, the spec and a finished store from a real run; returns the spec."""
    write_input(folder)
    spec = spec_with(folder)
    result = gpgrid("run", str(spec), "--no-progress")
    assert result.exit_code == 0, result.output
    return spec


def snapshot(folder: Path) -> dict[str, str]:
    """Every folder and file under `folder`, files by their hash; the run lock only by its
    presence (it names the last process that held it)."""

    def state(path: Path) -> str:
        if path.is_dir():
            return "folder"
        if path.name == "lock" and path.parent.suffix == ".gpgrid":
            return "lock"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))}


# --- case builders: each prepares `folder` and returns the command's arguments ---------


def run_with(**sections: dict) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        write_input(folder)
        return ["run", str(spec_with(folder, **sections)), "--no-progress"]

    return build


def run_text(text: str | bytes) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        write_input(folder)
        path = folder / "job.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", str(path), "--no-progress"]

    return build


GOOD_TEXT = yaml.safe_dump(SMALL_SPEC, sort_keys=False)


def replacing(old: str, new: str) -> str:
    assert old in GOOD_TEXT
    return GOOD_TEXT.replace(old, new, 1)


def with_data(change: Callable[[xr.Dataset], xr.Dataset], **sections: dict):  # noqa: ANN201
    """A run on the small input after `change`, written as a fresh zarr store."""

    def build(folder: Path) -> list[str]:
        source = xr.open_zarr(write_input(folder, "base.zarr")).load()
        changed = change(source)
        for var in changed.variables.values():
            var.encoding = {}
        changed.to_zarr(folder / "in.zarr", mode="w", zarr_format=3, consolidated=False)
        shutil.rmtree(folder / "base.zarr")
        return ["run", str(spec_with(folder, **sections)), "--no-progress"]

    return build


def set_values(name: str, values: Callable[[np.ndarray], np.ndarray]):  # noqa: ANN201
    def change(ds: xr.Dataset) -> xr.Dataset:
        return ds.assign({name: (ds[name].dims, values(ds[name].values.copy()))})

    return change


def set_coord(dim: str, values: Callable[[np.ndarray], np.ndarray]):  # noqa: ANN201
    def change(ds: xr.Dataset) -> xr.Dataset:
        return ds.assign_coords({dim: values(ds[dim].values.copy())})

    return change


def with_elevation(missing: int):  # noqa: ANN201
    """The input with an `elev` covariate over lat and lon, `missing` of its cells NaN."""

    def change(ds: xr.Dataset) -> xr.Dataset:
        elev = np.add.outer(ds["lat"].values, ds["lon"].values)
        elev.flat[:missing] = np.nan
        return ds.assign(elev=(("lat", "lon"), elev))

    return change


def one_observation(values: np.ndarray) -> np.ndarray:
    out = np.full_like(values, np.nan)
    out.flat[7] = 1.0
    return out


def irregular(values: np.ndarray) -> np.ndarray:
    values[5:] += 0.37 * (values[1] - values[0])
    return values


def unsorted(values: np.ndarray) -> np.ndarray:
    values[[3, 4]] = values[[4, 3]]
    return values


def duplicated(values: np.ndarray) -> np.ndarray:
    values[4] = values[3]
    return values


def missing_day(values: np.ndarray) -> np.ndarray:
    return values + np.array([0, 0, 1], dtype="timedelta64[D]")


def corrupt_chunk(folder: Path) -> list[str]:
    write_input(folder)
    chunk = next(p for p in sorted((folder / "in.zarr" / "tas" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"not a zstd frame")
    return ["run", str(spec_with(folder)), "--no-progress"]


def output_is_input(folder: Path) -> list[str]:
    write_input(folder)
    return ["run", str(spec_with(folder, output={"path": "in.zarr", "overwrite": True}))]


def output_is_spec_folder(folder: Path) -> list[str]:
    write_input(folder)
    (folder / "notes.txt").write_text("mine")
    return ["run", str(spec_with(folder, output={"path": ".", "overwrite": True}))]


def output_holds_foreign_files(folder: Path) -> list[str]:
    write_input(folder)
    (folder / "thesis").mkdir()
    (folder / "thesis" / "thesis.txt").write_text("four years of work")
    return ["run", str(spec_with(folder, output={"path": "thesis", "overwrite": True}))]


def output_inside_input(folder: Path) -> list[str]:
    write_input(folder)
    return ["run", str(spec_with(folder, output={"path": "in.zarr/filled.zarr"}))]


def output_contains_input(folder: Path) -> list[str]:
    (folder / "data").mkdir()
    write_input(folder / "data")
    spec = spec_with(folder, input={"path": "data/in.zarr"}, output={"path": "data"})
    return ["run", str(spec)]


def output_is_a_file(overwrite: bool) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        write_input(folder)
        (folder / "out.zarr").write_text("a file of mine")
        return ["run", str(spec_with(folder, output={"path": "out.zarr", "overwrite": overwrite}))]

    return build


def overwrite_through_a_link(folder: Path) -> list[str]:
    finished_run(folder)
    (folder / "link.zarr").symlink_to(folder / "out.zarr")
    return ["run", str(spec_with(folder, output={"path": "link.zarr", "overwrite": True}))]


def warm_start_is_output(folder: Path) -> list[str]:
    finished_run(folder)
    spec = spec_with(
        folder,
        "warm.yaml",
        model={"hyperparameters": "shared", "warm_start": "out.zarr"},
        output={"path": "out.zarr", "overwrite": True},
    )
    return ["run", str(spec)]


def changed_input_on_resume(folder: Path) -> list[str]:
    spec = finished_run(folder)
    (Path(journal_dir(str(folder / "out.zarr")).url) / "complete.json").unlink()
    next((Path(journal_dir(str(folder / "out.zarr")).url) / "tiles").glob("*.json")).unlink()
    group = zarr.open_group(str(folder / "in.zarr"), mode="r+")
    group["tas"][0] = np.asarray(group["tas"][0]) + 10.0
    return ["run", str(spec), "--no-progress"]


def changed_spec_on_resume(folder: Path) -> list[str]:
    finished_run(folder)
    return ["run", str(spec_with(folder, model={"fit_points": 50})), "--no-progress"]


def journal_deleted(folder: Path) -> list[str]:
    spec = finished_run(folder)
    shutil.rmtree(Path(journal_dir(str(folder / "out.zarr")).url))
    return ["run", str(spec), "--no-progress"]


def journal_record_damaged(folder: Path) -> list[str]:
    spec = finished_run(folder)
    record = next((Path(journal_dir(str(folder / "out.zarr")).url) / "tiles").glob("*.json"))
    record.write_text("{half a reco")
    return ["run", str(spec), "--no-progress"]


def after_a_run(*args: str) -> Callable[[Path], list[str]]:
    """A command on the finished store (`STORE`) or spec (`SPEC`) of a real run."""

    def build(folder: Path) -> list[str]:
        spec = finished_run(folder)
        names = {"STORE": str(folder / "out.zarr"), "SPEC": str(spec), "DIR": str(folder)}
        return [names.get(a, a) for a in args]

    return build


def input_moved(folder: Path) -> list[str]:
    finished_run(folder)
    (folder / "in.zarr").rename(folder / "moved.zarr")
    return ["plot", str(folder / "out.zarr")]


def spec_folder(command: str) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        write_input(folder)
        spec_with(folder)
        return [command, str(folder)]

    return build


def plain(*args: str) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        write_input(folder)
        spec = spec_with(folder)
        return [str(spec) if a == "SPEC" else a for a in args]

    return build


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], list[str]]
    problem: str  # regex: what the message must name (field, file, variable)
    fix: str  # regex: the fix it must give


ALL_NAN = set_values("tas", lambda v: np.full_like(v, np.nan))

CASES = [
    # the spec file itself
    Case("spec missing", plain("run", "nope.yaml"), r"nope\.yaml", "check the path"),
    Case("spec is a folder", spec_folder("run"), "is a folder, not a job spec", r"job\.yaml"),
    Case("validate a folder", spec_folder("validate"), "is a folder", "YAML file"),
    Case("not UTF-8", run_text(b"input:\n  path: \xff\xfe\n"), r"job\.yaml.*not UTF-8", "UTF-8"),
    Case("bad YAML", run_text("input: [unclosed\n"), r"job\.yaml.*not valid YAML", "line"),
    Case("not a mapping", run_text("- a\n- b\n"), "must be a mapping", "sections input"),
    Case(
        "duplicate key",
        run_text(replacing("  variables:", "  dims: [lat]\n  variables:")),
        r"key 'dims' is given twice, on lines \d+ and \d+",
        "keep one",
    ),
    Case(
        "boolean as a size",
        run_text(replacing("lat: 10", "lat: true")),
        r"tiling\.tile\.lat \(line \d+\): got True",
        "whole number",
    ),
    Case(
        "float as a size",
        run_with(tiling={"tile": {"time": 3, "lat": 2.5, "lon": 10}}),
        r"tiling\.tile\.lat",
        "whole number",
    ),
    Case(
        "text as a size",
        run_with(tiling={"tile": {"time": 3, "lat": "10", "lon": 10}}),
        r"tiling\.tile\.lat",
        "whole number",
    ),
    Case(
        "boolean as a count",
        run_with(model={"fit_points": True}),
        r"model\.fit_points",
        "whole number",
    ),
    Case(
        "duplicate variables",
        run_with(input={"variables": ["tas", "tas"]}),
        r"input\.variables \(line \d+\).*\['tas'\] appear more than once",
        "list each name once",
    ),
    Case(
        "duplicate dims",
        run_with(input={"dims": ["time", "lat", "lat"]}),
        r"input\.dims.*appear more than once",
        "list each name once",
    ),
    Case("unknown key", run_with(model={"colour": "red"}), r"model\.colour", "remove it"),
    Case(
        "unknown kernel",
        run_with(model={"kernel": {"time": "matern33", "lat": "rbf", "lon": "rbf"}}),
        r"model\.kernel\.time",
        "one of rbf",
    ),
    Case(
        "halo keys",
        run_with(tiling={"halo": {"time": 1}}),
        r"^(?!.*top level)(?!.*'input': \{).*line \d+: tiling\.halo has keys \['time'\]",
        "one entry per tiled dim",
    ),
    Case(
        "negative halo",
        run_with(tiling={"halo": {"time": -1, "lat": 3, "lon": 3}}),
        "tiling for dim 'time'",
        ">= 0",
    ),
    Case(
        "output over http",
        run_with(output={"path": "https://example.org/x.zarr"}),
        r"output\.path.*https://example\.org/x\.zarr.* is read-only",
        "object storage",
    ),
    Case(
        "input on a filesystem not installed",
        run_with(input={"path": "az://container/era5.zarr"}),
        r"input\.path.*az://container.*needs adlfs",
        "pip install adlfs",
    ),
    Case(
        "output on storage that does not answer",
        run_with(
            output={
                "path": "s3://bucket/x.zarr",
                "storage_options": {"endpoint_url": "http://127.0.0.1:9"},
            }
        ),
        r"cannot reach output\.path 's3://bucket/x\.zarr' "
        r"\((EndpointConnectionError|NoCredentialsError)",
        "output.storage_options",
    ),
    Case(
        "shards not whole chunks",
        run_with(output={"path": "out.zarr", "chunks": {"lat": 4}, "shards": {"lat": 6}}),
        r"output\.shards \{'time': 3, 'lat': 6, 'lon': 10\} must be whole multiples",
        "fix one of them",
    ),
    Case(
        "output chunks with tiling chunks",
        run_with(
            output={"path": "out.zarr", "chunks": {"lat": 5}},
            tiling={**SMALL_SPEC["tiling"], "chunks": {"lat": 5}},
        ),
        r"tiling\.chunks \(one shard per tile\) and output\.chunks",
        "give one of them",
    ),
    Case(
        "output chunks of an unknown dim",
        run_with(output={"path": "out.zarr", "chunks": {"level": 5}}),
        r"output\.chunks has keys \['level'\] that are not input\.dims",
        "input.dims",
    ),
    Case(
        "storage options for a local path",
        run_with(output={"path": "out.zarr", "storage_options": {"anon": True}}),
        r"output\.storage_options apply to URL paths",
        "drop output.storage_options",
    ),
    # where the output goes
    Case(
        "sel label not in the input",
        run_with(input={"sel": {"time": ["2031-01-01", "2031-02-01"]}}),
        r"input\.sel\.time: \['2031-01-01', '2031-02-01'\] selects no cells",
        "inside that range",
    ),
    Case(
        "sel picks a tiled dim",
        run_with(input={"sel": {"lat": 30.0}}),
        r"input\.sel\.lat picks one value, which drops 'lat'",
        "remove it from input.dims",
    ),
    Case(
        "input pattern matches nothing",
        run_with(input={"path": "data/tas_*.nc"}),
        r"input .*tas_\*\.nc' matches no files",
        "check input.path",
    ),
    Case("output is the input", output_is_input, r"is the input .*in\.zarr", "another output"),
    Case("output is the spec folder", output_is_spec_folder, "contains the", "holds nothing"),
    Case("overwrite a foreign folder", output_holds_foreign_files, "did not make", "move that"),
    Case("output inside the input", output_inside_input, "lies inside the input", "outside it"),
    Case("output contains the input", output_contains_input, "contains the input", "holds"),
    Case("overwrite a file", output_is_a_file(True), r"out\.zarr.*is a file", "another output"),
    Case("output is a file", output_is_a_file(False), r"out\.zarr.*not made by", "another output"),
    Case("overwrite through a link", overwrite_through_a_link, "is a link", "real path"),
    Case("warm start is the output", warm_start_is_output, "warm-start store", "another output"),
    # resources
    Case("too many CPUs", run_with(resources={"num_cpus": 64}), "num_cpus is 64", "at most 2"),
    Case("GPUs on a CPU machine", run_with(resources={"num_gpus": 1}), "num_gpus", "cpu_fallback"),
    # the data
    Case("input missing", run_with(input={"path": "gone.zarr"}), r"gone\.zarr", "input.path"),
    Case("unknown variable", run_with(input={"variables": ["pr"]}), "'pr'", "input.variables"),
    Case("unknown covariate", run_with(model={"covariates": ["elev"]}), "'elev'", "covariates"),
    Case(
        "covariate with gaps",
        with_data(with_elevation(3), model={"covariates": ["elev"]}),
        r"'elev' is missing \(NaN\) at 3 ",
        "fill it",
    ),
    Case(
        "covariate is a variable",
        run_with(model={"covariates": ["tas"]}),
        r"\['tas'\] are also input.variables",
        "drop it",
    ),
    Case(
        "covariates by svgp",
        with_data(with_elevation(0), model={"type": "svgp", "covariates": ["elev"]}),
        "model.type svgp",
        "drop model.covariates",
    ),
    Case(
        "dims in another order than the data's",
        with_data(lambda ds: ds.rename({"lat": "y"})),
        "'lat'",
        "input.dims",
    ),
    Case("hide too much", plain("validate", "SPEC", "--fraction", "0.7"), "--fraction 0.7", "0.05"),
    Case("block on no dim", plain("validate", "SPEC", "--block", "depth=3"), "depth", "grid dims"),
    Case("all NaN", with_data(ALL_NAN), r"'tas'.* 0 ", "input.variables|fill value"),
    Case(
        "one observation",
        with_data(set_values("tas", one_observation)),
        r"'tas'.* 1 ",
        "input.variables|fill value",
    ),
    Case(
        "infinite values",
        with_data(set_values("tas", lambda v: np.where(v > 1, np.inf, v))),
        r"'tas'.*infinite",
        "NaN|fill",
    ),
    Case("irregular lat", with_data(set_coord("lat", irregular)), "'lat'", "exact"),
    Case("unsorted lat", with_data(set_coord("lat", unsorted)), "'lat'", "sort"),
    Case("duplicate lat", with_data(set_coord("lat", duplicated)), "'lat'", "duplicate|once"),
    Case(
        "NaN coordinate",
        with_data(set_coord("lon", lambda v: np.where(np.arange(v.size) == 3, np.nan, v))),
        "'lon'",
        "NaN",
    ),
    Case("missing time steps", with_data(set_coord("time", missing_day)), "'time'", "exact"),
    Case("corrupt chunk", corrupt_chunk, r"'tas'.*tas/c/", "restore|rewrite"),
    Case(
        "chunks that do not divide tiles",
        run_with(tiling={"chunks": {"lat": 3}}),
        "tiling.chunks",
        "divide",
    ),
    # reruns and finished stores
    Case("changed input on resume", changed_input_on_resume, "'tas' data were rew", "overwrite"),
    Case(
        "changed spec on resume",
        changed_spec_on_resume,
        r"model\.fit_points: store 400, job 50",
        "overwrite",
    ),
    Case("journal deleted", journal_deleted, "made by gpgrid, but its journal", "overwrite"),
    Case("journal record damaged", journal_record_damaged, r"tiles/\d+\.json.*damaged", "delete"),
    Case("plot outside the data", after_a_run("plot", "STORE", "--at", "99"), "--at 99", "0 to 2"),
    Case(
        "plot a date outside",
        after_a_run("plot", "STORE", "--at", "2001-01-01"),
        "outside 'time'",
        "value in it",
    ),
    Case("plot after the input moved", input_moved, r"in\.zarr.*not there", "put the input back"),
    Case(
        "plot an unknown variable",
        after_a_run("plot", "STORE", "--variable", "pr"),
        "'pr'",
        "--variable",
    ),
    Case("inspect a missing store", plain("inspect", "nowhere.zarr"), "nowhere", "output store"),
    Case("bad --block", plain("validate", "SPEC", "--block", "lat"), "--block 'lat'", "dim=cells"),
    Case(
        "issue time without a forecast",
        plain("run", "SPEC", "--issue-time", "2001-01-01"),
        "--issue-time",
        "forecast",
    ),
    Case("unknown example", plain("example", "atlantis"), "'atlantis'", "choose one of"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(case: Case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = case.build(tmp_path)
    before = snapshot(tmp_path)
    result = gpgrid(*args)
    message = result.stderr
    assert result.exit_code == 2, f"{result.exit_code}: {result.output}"
    assert message.startswith("gpgrid: bad input: "), message
    assert "Traceback" not in message
    assert len(message.splitlines()) <= 6, message
    assert re.search(case.problem, message, re.S), message
    assert re.search(case.fix, message, re.S), message
    assert snapshot(tmp_path) == before, "files changed or appeared"
