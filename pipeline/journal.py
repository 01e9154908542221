"""A run's journal, so that a failed run loses nothing and a rerun resumes where it stopped.

It lives beside the output store, in `<store>.gpgrid/` (so zarr never sees it):

- `lock` (local disk) or `lease/` (object storage): the lock one live run holds for its
  whole duration; a crashed run never blocks its rerun, a live one is never joined
  (see pipeline/locks.py).
- `plan.json`: what the store was made for (input, grid shape, tiling, model); a rerun
  with the same plan resumes, any other is refused.
- `hyperparameters.json`: shared hyperparameters from phase 1 (when the model shares them).
- `tiles/<index>.json`: one completion record per finished tile, with its diagnostics,
  written atomically after all of the tile's chunks; one listing tells a resume which
  tiles are done.

On object storage each of these is an object, written in one PUT.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

from pipeline.config import Forecast, PipelineConfig
from pipeline.errors import InputError, PlanMismatchError
from pipeline.fingerprint import changes as fingerprint_changes
from pipeline.locks import FileLock, LeaseLock, lock_for
from pipeline.storage import Location, as_location

TILE_RECORD = re.compile(r"^(\d+)\.json$")


def journal_dir(store: str | Location) -> Location:
    """The journal folder of an output store: `<store>.gpgrid` beside it."""
    return as_location(store).with_suffix(".gpgrid")


def run_lock(store: str | Location) -> FileLock | LeaseLock:
    """The lock a run holds on `store` for its whole duration (see pipeline/locks.py)."""
    return lock_for(as_location(store), journal_dir(store))


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
    if config.output_chunks:  # absent from plans before output.chunks, which resume alike
        plan["output_chunks"] = list(config.output_chunks)
        plan["output_shards"] = list(config.output_shards)
    if config.input_sel:  # likewise absent from plans made without input.sel
        plan["input_sel"] = config.input_sel.record()
    return json.loads(json.dumps(plan))


def _write(place: Location, payload: object) -> None:
    """Write JSON so that readers see all of it or nothing (see Location.write_text)."""
    place.write_text(json.dumps(payload, default=str))


def reset(store: str | Location) -> None:
    """Forget plan, shared hyperparameters and completion records (before a new store)."""
    folder = journal_dir(store)
    for name in ("plan.json", "hyperparameters.json", "complete.json"):
        folder.child(name).remove()
    folder.child("tiles").remove_tree()


def write_shared(store: str | Location, hyperparameters: dict) -> None:
    """Keep phase 1's result, so that a resumed run uses exactly the same values."""
    _write(journal_dir(store).child("hyperparameters.json"), hyperparameters)


def read_shared(store: str | Location) -> dict | None:
    place = journal_dir(store).child("hyperparameters.json")
    return _read_json(place) if place.is_file() else None


def write_plan(store: str | Location, plan: dict) -> None:
    _write(journal_dir(store).child("plan.json"), plan)


def read_plan(store: str | Location) -> dict:
    """The plan a store was made for ({} when it has no journal)."""
    place = journal_dir(store).child("plan.json")
    return _read_json(place) if place.is_file() else {}


def check_plan(store: str | Location, plan: dict, made_by_gpgrid: bool) -> None:
    """Refuse to resume into a store made for another plan or from other input data,
    naming what differs. `made_by_gpgrid`: the store's own attributes say gpgrid made it."""
    store_path = as_location(store).url
    path = journal_dir(store).child("plan.json")
    if not path.is_file():
        if made_by_gpgrid:
            raise PlanMismatchError(
                f"output {store_path!r} was made by gpgrid, but its journal {path.url!r} is "
                "missing (deleted?), so which tiles are finished is unknown: set "
                "output.overwrite: true to compute it again, or choose another output.path"
            )
        raise PlanMismatchError(
            f"output {store_path!r} exists but was not made by a gpgrid run: choose another "
            "output.path (overwrite only ever replaces gpgrid stores)"
        )
    found = _read_json(path)
    recorded, current = found.pop("input_fingerprint", None), plan.get("input_fingerprint")
    differing = _differences(found, {k: v for k, v in plan.items() if k != "input_fingerprint"})
    if any(not line.startswith("shape:") for line in differing):  # the spec asks otherwise
        _refuse_other_plan(store_path, differing)  # (another input.sel cuts other data too)
    if recorded is not None and recorded != current:
        what = "; ".join(fingerprint_changes(recorded, current or {}))
        raise PlanMismatchError(
            f"the input {plan.get('input_path')!r} changed since output {store_path!r} was "
            f"started ({what}): its finished tiles were computed from the old data, so it "
            "cannot be resumed; set output.overwrite: true to compute everything again (also "
            "when the data were only copied or rewritten unchanged), or restore the input"
        )
    if recorded is None:
        differing.append("input_fingerprint: store none (made by an older gpgrid), job recorded")
    if differing:
        _refuse_other_plan(store_path, differing)


def _refuse_other_plan(store_path: str, differing: list[str]) -> None:
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


def _read_json(place: Location, text: str | None = None) -> dict:
    """A journal file's JSON (from `text` when already fetched); a damaged one is named,
    with the fix."""
    try:
        return json.loads(place.read_text() if text is None else text)
    except (ValueError, UnicodeDecodeError):
        raise InputError(
            f"journal file {place.url!r} is damaged (not JSON): delete it and rerun (for a "
            "tile record, that tile is computed again), or set output.overwrite: true"
        ) from None


def record_tile(store: str | Location, index: int, diagnostics: dict) -> None:
    """Mark one tile finished (after all its chunks were written), with its diagnostics."""
    _write(journal_dir(store).child("tiles").child(f"{index:07d}.json"), diagnostics)


def finished_tile_indices(store: str | Location) -> set[int]:
    """The tiles a store already holds, from one listing of its completion records."""
    return set(_record_names(journal_dir(store).child("tiles")))


def finished_tiles(store: str | Location) -> dict[int, dict]:
    """Completion records of the tiles a store already holds: index -> diagnostics."""
    folder = journal_dir(store).child("tiles")
    names = _record_names(folder)
    texts = folder.read_texts(list(names.values()))
    return {i: _read_json(folder.child(name), texts[name]) for i, name in sorted(names.items())}


def _record_names(folder: Location) -> dict[int, str]:
    """Tile index -> file name of each completion record in `folder`."""
    found = (TILE_RECORD.match(name) for name in folder.names())
    return {int(match[1]): match[0] for match in found if match}


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


def mark_complete(store: str | Location) -> None:
    """Record that every tile of the store is written and its metadata finalised."""
    _write(journal_dir(store).child("complete.json"), {"complete": True})


def is_complete(store: str | Location) -> bool:
    """Whether a run finished this store (interrupted or running ones are not)."""
    return journal_dir(store).child("complete.json").is_file()


def _kernel_names(kernels: tuple | None) -> list[str] | str:
    """The kernels as the plan records them; "chosen by the data" when the spec named none."""
    return "chosen by the data" if kernels is None else [str(k) for k in kernels]
