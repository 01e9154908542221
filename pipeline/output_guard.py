"""Where a run may write, and what `output.overwrite` may remove.

A run never writes into, over or around its input, nor over the folder a spec lives in,
and overwrite only ever removes a store that gpgrid made: one whose root metadata or
journal says so. Everything here runs before anything is written, on local paths and
object storage alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import InputError
from pipeline.journal import journal_dir
from pipeline.storage import Location, as_location


def check_output_location(output: str | Location, protected: Mapping[str, str]) -> None:
    """Refuse an output that is, lies inside, or contains a `protected` path (path -> what
    it is, e.g. "the input", "the spec file")."""
    named = as_location(output).url
    target = as_location(output).identity()
    for path, role in protected.items():
        kept = Location(path).identity()
        if target == kept:
            raise InputError(
                f"output.path {named!r} is {role} ({path!r}): writing there would destroy "
                "it; choose another output.path"
            )
        if target.startswith(kept.rstrip("/") + "/"):
            raise InputError(
                f"output.path {named!r} lies inside {role} ({path!r}): writing there would "
                "change it; choose an output.path outside it"
            )
        if kept.startswith(target.rstrip("/") + "/"):
            raise InputError(
                f"output.path {named!r} contains {role} ({path!r}): replacing it would "
                "delete that; choose an output.path that holds nothing of yours"
            )


def is_gpgrid_store(store: str | Location) -> bool:
    """Whether `store` is a store that gpgrid made: its root attributes say so, or its
    journal holds the plan it was made for; anything else is the user's, never removed."""
    if journal_dir(store).child("plan.json").is_file():
        return True
    try:
        meta = json.loads(as_location(store).child("zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return "gpgrid_version" in meta.get("attributes", {})


def check_replaceable(store: str | Location) -> None:
    """Refuse to overwrite an existing `store` that is not a gpgrid store."""
    place = as_location(store)
    path = place.url
    if place.is_local and Path(path).is_symlink():
        raise InputError(
            f"output.path {path!r} is a link: overwrite never removes through links; give "
            "the store's real path, or another output.path"
        )
    if not place.exists():
        return
    if place.is_file():
        raise InputError(
            f"output.path {path!r} is a file, not a gpgrid store: overwrite never removes "
            "your files; choose another output.path"
        )
    if not is_gpgrid_store(place):
        raise InputError(
            f"output.path {path!r} holds something gpgrid did not make (no gpgrid store "
            "metadata there): overwrite only replaces gpgrid stores; choose another "
            "output.path, or move that folder away yourself"
        )


def remove_store(store: str | Location) -> None:
    """Delete a gpgrid store (checked first), e.g. before overwriting it or after a run
    that failed before writing anything."""
    check_replaceable(store)
    as_location(store).remove_tree()
