"""`gpgrid inspect`: what an output store holds and how it was made, on one screen."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import xarray as xr
import zarr

from pipeline.errors import InputError
from pipeline.journal import (
    TILE_FLAGS,
    finished_tiles,
    flagged_tiles,
    is_complete,
    read_plan,
    read_shared,
)
from pipeline.target import forecast_stores


def describe(path: str | Path) -> str:
    """A store's grid, variables, provenance and progress; or a forecast folder's issue times."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{str(path)!r} does not exist: give an output store or folder")
    if path.suffix != ".zarr" and not (path / "zarr.json").is_file():
        return _describe_folder(path)
    return _describe_store(path)


def _describe_folder(folder: Path) -> str:
    stores = forecast_stores(folder)
    if not stores:
        raise InputError(
            f"{str(folder)!r} is neither a zarr store nor a folder of finished forecasts: "
            "give an output store (output.path of a job)"
        )
    lines = [f"{folder}: {len(stores)} finished forecasts"]
    lines += [f"  issued {_issue_text(issue)}  {store.name}" for issue, store in stores.items()]
    lines.append(f"read them all with: pipeline.target.open_forecasts({str(folder)!r})")
    return "\n".join(lines)


def _issue_text(issue: datetime | float) -> str:
    return f"{issue:%Y-%m-%d %H:%M:%S}Z" if isinstance(issue, datetime) else repr(issue)


def _describe_store(store: Path) -> str:
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    ds = xr.open_zarr(store, consolidated=None)
    lines = [f"{store}", f"  grid       {dict(ds.sizes)}"]
    for name, var in ds.data_vars.items():
        standard = var.attrs.get("standard_name", "-")
        lines.append(
            f"  variable   {name:<16} {var.attrs.get('units', ''):<8} standard_name {standard}"
        )
    if "forecast_reference_time" in ds.coords:
        lines.append(f"  issued     {ds['forecast_reference_time'].values}")
    lines.append(f"  made by    {attrs.get('source', 'not gpgrid')}")
    if "gpgrid_model" in attrs:
        lines.append(f"  model      {attrs['gpgrid_model']}")
    lines.append(f"  progress   {_progress(store)}")
    for var, flags in flagged_tiles(finished_tiles(str(store))).items():
        for flag, indices in flags.items():
            shown = ", ".join(map(str, indices[:20])) + (" ..." if len(indices) > 20 else "")
            what = TILE_FLAGS[flag]
            lines.append(f"  {flag:<10} {var}: {len(indices)} tiles {what}: {shown}")
    shared = read_shared(str(store))
    if shared:
        for var, values in shared.items():
            lines.append(f"  shared     {var}: {json.dumps(values)[:200]}")
    if "gpgrid_input" in attrs:
        lines.append(f"  input      {attrs['gpgrid_input']}")
    spec = attrs.get("gpgrid_spec")
    if spec:
        lines.append("  spec       " + "\n             ".join(spec.strip().splitlines()))
    return "\n".join(lines)


def _progress(store: Path) -> str:
    done = len(finished_tiles(str(store)))
    if is_complete(str(store)):
        return f"complete ({done} chunks written)"
    if read_plan(str(store)):
        return f"incomplete: {done} chunks written so far; rerun the job to resume"
    return "no gpgrid journal"
