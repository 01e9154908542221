"""What identifies an input's content, cheaply, so a resume can tell that the data changed.

A run records the fingerprint in its plan; a rerun computes it again and refuses to
resume when it differs, since finished tiles were computed from the old data. It reads
no data: shapes, dtypes and chunk layout from the metadata, coordinate values (small),
and for the variables' bytes the size and modification time of every file that holds
them (a zarr variable's folder, the netCDF file, or every file a pattern matches, so a
file added or removed shows too), so rewriting any chunk shows; so does copying the
store without its times, which is safe but refused too. On object
storage, the size and version tag (ETag or its like) of every object, from one listing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.multifile import is_pattern, pattern_files
from pipeline.storage import Location, as_location

# the keys under which filesystems name an object's version, most specific first
VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "mtime")


def input_fingerprint(source: str | Location, ds: xr.Dataset, variables: tuple[str, ...]) -> dict:
    """{name: {shape, dtype, chunks, files}} for each variable, and a digest of coordinates."""
    place = as_location(source)
    if place.is_local and is_pattern(place.url):
        matched = _files_list_digest([Path(f) for f in pattern_files(place.url)])

        def files(name: str) -> str:
            return matched
    elif place.is_local:
        root = Path(place.url)
        single_file = root.is_file()

        def files(name: str) -> str:
            return _files_digest(root if single_file else root / name)
    else:

        def files(name: str) -> str:
            return _objects_digest(place.child(name))

    fingerprint: dict = {"coordinates": _coordinates_digest(ds)}
    for name in variables:
        var = ds[name]
        chunks = var.encoding.get("chunks") or var.encoding.get("chunksizes")
        fingerprint[name] = {
            "shape": list(var.shape),
            "dtype": var.dtype.str,
            "chunks": list(chunks) if chunks else None,
            "files": files(name),
        }
    return fingerprint


def values_fingerprint(ds: xr.Dataset, variables: tuple[str, ...]) -> dict:
    """Like input_fingerprint, from the values themselves: for a slice that is read whole
    anyway (a forecast's history), so data appended after it change nothing."""
    fingerprint: dict = {"coordinates": _coordinates_digest(ds)}
    for name in variables:
        var = ds[name]
        fingerprint[name] = {
            "shape": list(var.shape),
            "dtype": var.dtype.str,
            "chunks": None,
            "files": _digest([np.ascontiguousarray(var.values).tobytes()]),
        }
    return fingerprint


def changes(recorded: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, in words (empty when they agree)."""
    found = []
    if recorded.get("coordinates") != current.get("coordinates"):
        found.append("its coordinates changed")
    for name in sorted((set(recorded) | set(current)) - {"coordinates"}):
        old, new = recorded.get(name), current.get(name)
        if old is None or new is None:
            found.append(f"variable {name!r} is new or gone")
            continue
        for key, what in (("shape", "shape"), ("dtype", "dtype"), ("chunks", "chunk layout")):
            if old[key] != new[key]:
                found.append(f"{name!r} {what} {old[key]} -> {new[key]}")
        if old["files"] != new["files"]:
            found.append(f"{name!r} data were rewritten (file sizes, times or values)")
    return found


def _files_digest(path: Path) -> str:
    """A digest of (relative name, size, mtime) of `path` (a file) or every file under it."""
    if path.is_file():
        stat = path.stat()
        return _digest([repr((path.name, stat.st_size, stat.st_mtime_ns))])
    entries = []
    for folder, _, files in os.walk(path):
        for file in files:
            stat = os.stat(os.path.join(folder, file))
            name = os.path.relpath(os.path.join(folder, file), path)
            entries.append(repr((name, stat.st_size, stat.st_mtime_ns)))
    return _digest(sorted(entries))


def _files_list_digest(paths: list[Path]) -> str:
    """A digest of (path, size, mtime) of each of `paths` (a multi-file input's files)."""
    entries = []
    for path in paths:
        stat = path.stat()
        entries.append(repr((str(path), stat.st_size, stat.st_mtime_ns)))
    return _digest(entries)


def _objects_digest(folder: Location) -> str:
    """A digest of (relative name, size, version tag) of every object under `folder`."""
    prefix = folder.path.rstrip("/") + "/"
    found = folder.fs.find(folder.path, detail=True)
    entries = []
    for name, info in found.items():
        version = next((info[k] for k in VERSION_KEYS if info.get(k) is not None), None)
        entries.append(repr((name.removeprefix(prefix), info.get("size"), str(version))))
    return _digest(sorted(entries))


def _coordinates_digest(ds: xr.Dataset) -> str:
    return _digest(_coordinate_bytes(ds[name]) for name in sorted(map(str, ds.coords)))


def _coordinate_bytes(coord: xr.DataArray) -> bytes:
    """A coordinate's name, dtype and values as bytes (cftime objects by their text)."""
    values = coord.values
    if values.dtype == object:
        data = "|".join(map(str, values.ravel())).encode()
    else:
        data = values.tobytes()
    return f"{coord.name}:{values.dtype.str}:".encode() + data


def _digest(parts: Iterable[str | bytes]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
    return sha.hexdigest()
