"""Where a store lives: a local path or an fsspec URL (s3://, gs://, az://, and https://
for reading), with the options that reach it, and the few operations the journal, the
lock and the output guard need on it.

Array data go through xarray's and zarr's own fsspec support; here only places are named
and small JSON documents moved. A location's options (endpoint, credentials) are never
part of its text, its repr or anything written, so they cannot leak into a store or a log.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec

from pipeline.errors import InputError, StorageError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
READ_ONLY_PROTOCOLS = ("http", "https")
FILESYSTEM_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(path: str) -> bool:
    """Whether `path` names a place through a protocol (s3://...) rather than a local path."""
    return bool(URL.match(path))


def protocol_of(path: str) -> str:
    """The protocol of a URL (`s3`), or `file` for a local path."""
    return path.split("://", 1)[0].lower() if is_url(path) else "file"


def check_reachable(path: str, role: str, writable: bool = False) -> None:
    """Refuse, before anything runs, a URL whose filesystem is not installed, or a read-only
    one (http) where the run must write; `role` names the field, e.g. "output.path"."""
    protocol = protocol_of(path)
    if protocol == "file":
        return
    if writable and protocol in READ_ONLY_PROTOCOLS:
        raise InputError(
            f"{role} {path!r} is read-only ({protocol} serves files but cannot take writes): "
            "write to object storage (s3://, gs://, az://) or a local path"
        )
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as err:
        package = FILESYSTEM_PACKAGES.get(protocol, f"an fsspec filesystem for {protocol}://")
        raise InputError(
            f"{role} {path!r} needs {package}, which is not installed ({err}): "
            f"pip install {package} (or gpgrid[cloud])"
        ) from None


def check_reached(place: Location, section: str) -> None:
    """Refuse, before anything runs, a URL whose storage does not answer: no credentials,
    no such endpoint, no permission. `section` is the spec's, "input" or "output"."""
    if place.is_local:
        return
    try:
        place.exists()
    except Exception as err:  # noqa: BLE001 - any failure to reach storage is its setup
        raise InputError(
            f"cannot reach {section}.path {place.url!r} ({type(err).__name__}: {err}): check "
            "the credentials (AWS_* or GOOGLE_* variables, a profile, an instance role) and "
            f"{section}.storage_options (endpoint_url, ...)"
        ) from None


@dataclass(frozen=True)
class Location:
    """A file or folder at `url` (local path or fsspec URL), reached with `options`
    (fsspec storage options; kept out of the text, the repr and equality)."""

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_local(self) -> bool:
        return not is_url(self.url)

    @cached_property
    def _fs_and_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return fsspec.core.url_to_fs(self.url, **self.options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_and_path[0]

    @property
    def path(self) -> str:
        """The location as its filesystem names it (a bucket key for s3, a path locally)."""
        return self._fs_and_path[1]

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> Location:
        return Location(f"{self.url.rstrip('/')}/{name}", self.options)

    def with_suffix(self, suffix: str) -> Location:
        """A sibling named like this one plus `suffix` (a store's `.gpgrid` journal)."""
        return Location(f"{self.url.rstrip('/')}{suffix}", self.options)

    def identity(self) -> str:
        """Text that names the same place the same way (local: the resolved path), for
        telling whether two locations are one, or one lies inside the other."""
        if self.is_local:
            return str(Path(self.url).expanduser().resolve())
        return f"{protocol_of(self.url)}://{self.url.split('://', 1)[1].rstrip('/')}"

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def read_text(self) -> str:
        return self.fs.cat_file(self.path).decode()

    def write_text(self, text: str) -> None:
        """Replace the file's content so that readers see all of it or the old one: locally
        through a temporary file and a rename, on object storage in one PUT."""
        if self.is_local:
            path = Path(self.url)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(self.path, text.encode())

    def create(self, text: str) -> bool:
        """Write the file only if it does not exist yet (one of many racing creators wins);
        False when it existed."""
        try:
            if self.is_local:
                Path(self.url).parent.mkdir(parents=True, exist_ok=True)
                with open(self.url, "x") as handle:
                    handle.write(text)
            else:
                self.fs.pipe_file(self.path, text.encode(), mode="create")
        except FileExistsError:
            return False
        except (NotImplementedError, TypeError, ValueError) as err:
            raise StorageError(
                f"{self.url!r}: this storage cannot create a file only if it is missing "
                f"({type(err).__name__}: {err}), which the run lock needs: write the output "
                "to S3 or to a local path"
            ) from None
        return True

    def names(self) -> list[str]:
        """The names directly inside this folder, as listed now (none when it is missing)."""
        self.fs.invalidate_cache(self.path)
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)

    def read_texts(self, names: list[str]) -> dict[str, str]:
        """The text of each named file in this folder, fetched together (concurrently on
        object storage)."""
        if not names:
            return {}
        paths = {f"{self.path.rstrip('/')}/{name}": name for name in names}
        found = self.fs.cat(list(paths), on_error="raise")
        return {paths[path]: data.decode() for path, data in found.items()}

    def remove(self) -> None:
        """Delete the file, if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)

    def remove_tree(self) -> None:
        """Delete the folder and everything in it, if it is there."""
        if self.exists():
            self.fs.rm(self.path, recursive=True)

    def zarr_store(self) -> str | Any:
        """What zarr and xarray open: the path itself locally, an fsspec store otherwise."""
        if self.is_local:
            return self.url
        import zarr

        return zarr.storage.FsspecStore.from_url(self.url, storage_options=dict(self.options))


def as_location(place: str | Location) -> Location:
    """A location for a plain path or URL (no options), or the location itself."""
    return place if isinstance(place, Location) else Location(place)
