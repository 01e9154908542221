"""A run's journal, so that a failed run loses nothing and a rerun resumes where it stopped.

It lives beside the output store, in `<store>.gpgrid/` (so zarr never sees it):

- `lock`: an OS file lock that one live run holds for its whole duration; the kernel
  releases it when the process dies, even by SIGKILL, so a crashed run never blocks
  its rerun while a live one is never joined.
- `plan.json`: what the store was made for (input, grid shape, tiling, model); a rerun
  with the same plan resumes, any other is refused.
- `hyperparameters.json`: shared hyperparameters from phase 1 (when the model shares them).
- `tiles/<index>.json`: one completion record per finished tile, with its diagnostics,
  written atomically after all of the tile's chunks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO

from pipeline.config import Forecast, PipelineConfig
from pipeline.errors import InputError, PlanMismatchError, RunInProgressError
from pipeline.fingerprint import changes as fingerprint_changes


def journal_dir(store_path: str) -> Path:
    """The journal folder of an output store: `<store>.gpgrid` beside it."""
    return Path(f"{store_path.rstrip('/')}.gpgrid")


def plan_of(
    config: PipelineConfig, forecast: Forecast | None, shape: tuple[int, ...], fingerprint: dict
) -> dict:
    """Everything that decides the output's values (not resources, progress or provenance),
    the resolved `forecast` and the input's content `fingerprint` included, as plain JSON
    values so that it compares equal to the stored copy (kernels as their text)."""
    plan = {
        "input_path": config.input_path,
        "input_fingerprint": fingerprint,
        "variables": list(config.variables),
        "dims": list(config.dims),
        "shape": list(shape),
        "tile": list(config.tile),
        "halo": list(config.halo),
        "blend": list(config.blend),
        "halo_lengthscales": config.halo_lengthscales,
        "wrap": list(config.wrap),
        "chunks": list(config.chunks),
        "model": {**asdict(config.model), "kernels": _kernel_names(config.model.kernels)},
        "station_dim": config.station_dim,
        "station_coords": list(config.station_coords),
        "warm_start": config.warm_start,
        "forecast": asdict(forecast) if forecast else None,
        "regrid": [list(axis) for axis in config.regrid],
        "never_observed_along": config.never_observed_along,
        "std_includes_noise": config.std_includes_noise,
    }
    return json.loads(json.dumps(plan))


class RunLock:
    """An exclusive, non-blocking lock on the journal's `lock` file for the life of a run."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.path = journal_dir(store_path) / "lock"
        self._file = None

    def acquire(self) -> None:
        """Take the lock, or raise RunInProgressError naming the run that holds it."""
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open until release()
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise RunInProgressError(
                    f"output {self.store_path!r} is being written by another run ({owner}): "
                    "wait for it to finish, or choose another output.path"
                ) from None
            if self._is_current(handle):
                break
            handle.close()  # locked a file an ending run just removed: lock the new one
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}")
        handle.flush()
        self._file = handle

    def _is_current(self, handle: IO) -> bool:
        """Whether `handle` is still the file at the lock's path (release may remove it)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(handle.fileno())
        return (held.st_ino, held.st_dev) == (on_disk.st_ino, on_disk.st_dev)

    def release(self) -> None:
        """Unlock; a journal holding nothing but the lock (a run that wrote nothing) goes."""
        if self._file is not None:
            if [p.name for p in self.path.parent.iterdir()] == ["lock"]:
                shutil.rmtree(self.path.parent)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_atomically(path: Path, payload: object) -> None:
    """Write JSON to a temporary file and rename it into place: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, default=str))
    os.replace(tmp, path)


def reset(store_path: str) -> None:
    """Forget plan, shared hyperparameters and completion records (before a new store)."""
    folder = journal_dir(store_path)
    (folder / "plan.json").unlink(missing_ok=True)
    (folder / "hyperparameters.json").unlink(missing_ok=True)
    (folder / "complete.json").unlink(missing_ok=True)
    shutil.rmtree(folder / "tiles", ignore_errors=True)


def write_shared(store_path: str, hyperparameters: dict) -> None:
    """Keep phase 1's result, so that a resumed run uses exactly the same values."""
    _write_atomically(journal_dir(store_path) / "hyperparameters.json", hyperparameters)


def read_shared(store_path: str) -> dict | None:
    path = journal_dir(store_path) / "hyperparameters.json"
    return _read_json(path) if path.is_file() else None


def write_plan(store_path: str, plan: dict) -> None:
    _write_atomically(journal_dir(store_path) / "plan.json", plan)


def read_plan(store_path: str) -> dict:
    """The plan a store was made for ({} when it has no journal)."""
    path = journal_dir(store_path) / "plan.json"
    return _read_json(path) if path.is_file() else {}


def check_plan(store_path: str, plan: dict, made_by_gpgrid: bool) -> None:
    """Refuse to resume into a store made for another plan or from other input data,
    naming what differs. `made_by_gpgrid`: the store's own attributes say gpgrid made it."""
    path = journal_dir(store_path) / "plan.json"
    if not path.is_file():
        if made_by_gpgrid:
            raise PlanMismatchError(
                f"output {store_path!r} was made by gpgrid, but its journal {str(path)!r} is "
                "missing (deleted?), so which tiles are finished is unknown: set "
                "output.overwrite: true to compute it again, or choose another output.path"
            )
        raise PlanMismatchError(
            f"output {store_path!r} exists but was not made by a gpgrid run: choose another "
            "output.path (overwrite only ever replaces gpgrid stores)"
        )
    found = _read_json(path)
    recorded, current = found.pop("input_fingerprint", None), plan.get("input_fingerprint")
    if recorded is not None and recorded != current:
        what = "; ".join(fingerprint_changes(recorded, current or {}))
        raise PlanMismatchError(
            f"the input {plan.get('input_path')!r} changed since output {store_path!r} was "
            f"started ({what}): its finished tiles were computed from the old data, so it "
            "cannot be resumed; set output.overwrite: true to compute everything again (also "
            "when the data were only copied or rewritten unchanged), or restore the input"
        )
    differing = _differences(found, {k: v for k, v in plan.items() if k != "input_fingerprint"})
    if recorded is None:
        differing.append("input_fingerprint: store none (made by an older gpgrid), job recorded")
    if differing:
        raise PlanMismatchError(
            f"output {store_path!r} was made for another grid or spec ({'; '.join(differing)}): "
            "choose another output.path, or set output.overwrite: true to replace it"
        )


def _differences(store: object, job: object, where: str = "") -> list[str]:
    """`field: store X, job Y` for each leaf that differs between two plans."""
    if isinstance(store, dict) and isinstance(job, dict):
        return [
            line
            for key in sorted(set(store) | set(job))
            for line in _differences(store.get(key), job.get(key), f"{where}{key}.")
        ]
    if store == job:
        return []
    return [f"{where.removesuffix('.')}: store {store!r}, job {job!r}"]


def _read_json(path: Path) -> dict:
    """A journal file's JSON; a damaged one is named, with the fix."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InputError(
            f"journal file {str(path)!r} is damaged (not JSON): delete it and rerun (for a "
            "tile record, that tile is computed again), or set output.overwrite: true"
        ) from None


def record_tile(store_path: str, index: int, diagnostics: dict) -> None:
    """Mark one tile finished (after all its chunks were written), with its diagnostics."""
    _write_atomically(journal_dir(store_path) / "tiles" / f"{index:07d}.json", diagnostics)


def finished_tiles(store_path: str) -> dict[int, dict]:
    """Completion records of the tiles a store already holds: index -> diagnostics."""
    folder = journal_dir(store_path) / "tiles"
    if not folder.is_dir():
        return {}
    return {int(p.stem): _read_json(p) for p in sorted(folder.glob("[0-9]*.json"))}


# what a tile's per-variable diagnostics flag, in words
TILE_FLAGS = {
    "skipped": "had too few observations (left NaN)",
    "degenerate": "were constant (predicted as that constant)",
}


def flagged_tiles(records: dict[int, dict]) -> dict[str, dict[str, list[int]]]:
    """{variable: {"skipped" | "degenerate": tile indices}} from completion records: the
    tiles a variable could not be fitted in, or was constant in."""
    flagged: dict[str, dict[str, list[int]]] = {}
    for index, record in sorted(records.items()):
        for var, info in (record.get("variables") or {}).items():
            for flag in TILE_FLAGS:
                if isinstance(info, dict) and flag in info:
                    flagged.setdefault(var, {}).setdefault(flag, []).append(index)
    return flagged


def mark_complete(store_path: str) -> None:
    """Record that every tile of the store is written and its metadata finalised."""
    _write_atomically(journal_dir(store_path) / "complete.json", {"complete": True})


def is_complete(store_path: str) -> bool:
    """Whether a run finished this store (interrupted or running ones are not)."""
    return (journal_dir(store_path) / "complete.json").is_file()


def _kernel_names(kernels: tuple | None) -> list[str] | str:
    """The kernels as the plan records them; "chosen by the data" when the spec named none."""
    return "chosen by the data" if kernels is None else [str(k) for k in kernels]
