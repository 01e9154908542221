"""The output zarr store: a template first (metadata, no data), then chunk-aligned tile writes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline.assembly import ChunkWrite
from pipeline.errors import InputError
from pipeline.storage import Location, as_location
from pipeline.tile_records import strict_json

CF_COPIED_ATTRS = ("units", "standard_name", "long_name")


def std_name(variable: str) -> str:
    """Name of the predictive standard deviation variable that goes with `variable`."""
    return f"{variable}_std"


def _prediction_attrs(
    source: Mapping, variable: str, includes_noise: bool = False
) -> tuple[dict, dict]:
    """CF attributes for the mean and its standard error, linked as ancillary variables."""
    base = {k: source[k] for k in CF_COPIED_ATTRS if k in source}
    long_name = base.get("long_name", variable)
    mean_attrs = {
        **base,
        "long_name": f"{long_name} (GP predictive mean)",
        "ancillary_variables": std_name(variable),
    }
    of = "of a new observation, noise included" if includes_noise else "of the field"
    std_attrs = {"long_name": f"{long_name} (GP predictive standard deviation {of})"}
    if "units" in base:
        std_attrs["units"] = base["units"]
    if "standard_name" in base:
        std_attrs["standard_name"] = f"{base['standard_name']} standard_error"
    return mean_attrs, std_attrs


def create_output_store(
    store: str | Location,
    source: xr.Dataset,
    variables: tuple[str, ...],
    dims: tuple[str, ...],
    chunks: tuple[int, ...],
    attrs: Mapping[str, str],
    extra_coords: tuple[str, ...] = (),
    inner_chunks: tuple[int, ...] | None = None,
    std_includes_noise: bool = False,
) -> None:
    """Write the output's metadata and coordinates, with every prediction chunk still empty.

    An existing path is refused (the runner removes a store it may replace first), so
    nothing is ever replaced by accident. `extra_coords` (e.g. station positions) are
    copied too. `chunks` are the units written (assembled from tiles); with `inner_chunks`
    each is a shard, stored in smaller chunks that readers can fetch one by one.
    """
    place = as_location(store)
    if place.exists():
        raise InputError(
            f"output {place.url!r} already exists: choose another output.path, or set "
            "output.overwrite: true to replace a gpgrid store"
        )
    shape = tuple(source.sizes[d] for d in dims)
    coords = {name: source[name] for name in (*dims, *extra_coords) if name in source.coords}
    data_vars = {}
    for var in variables:
        mean_attrs, std_attrs = _prediction_attrs(source[var].attrs, var, std_includes_noise)
        empty = da.full(shape, np.nan, chunks=chunks, dtype=np.float32)
        data_vars[var] = xr.Variable(dims, empty, mean_attrs)
        data_vars[std_name(var)] = xr.Variable(dims, empty, std_attrs)
    template = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))
    if inner_chunks:
        encoding = {name: {"chunks": inner_chunks, "shards": chunks} for name in data_vars}
    else:
        encoding = {name: {"chunks": chunks} for name in data_vars}
    template.to_zarr(
        place.zarr_store(),
        mode="w",
        compute=False,
        zarr_format=3,
        consolidated=False,
        encoding=encoding,
    )


class OutputWriter:
    """The output store's prediction arrays, opened once, taking whole chunks."""

    def __init__(self, store: str | Location) -> None:
        self._group = zarr.open_group(as_location(store).zarr_store(), mode="r+")
        self._arrays: dict[str, zarr.Array] = {}

    def write(self, chunk: ChunkWrite) -> None:
        """Write one assembled chunk; where this run's tiles do not cover it, the store's
        own values (of tiles an earlier run finished) are kept."""
        for name, values in chunk.values.items():
            if name not in self._arrays:
                self._arrays[name] = self._group[name]
            array = self._arrays[name]
            if chunk.covered is not None:
                values = np.where(chunk.covered, values, array[chunk.region])
            array[chunk.region] = values.astype(np.float32, copy=False)


def finalize_store(store: str | Location, attrs: Mapping[str, object]) -> None:
    """Record run-level attributes (strict JSON when not plain) and consolidate metadata."""
    zarr_store = as_location(store).zarr_store()
    group = zarr.open_group(zarr_store, mode="r+")
    group.attrs.update(
        {k: v if isinstance(v, (str, int, float)) else strict_json(v) for k, v in attrs.items()}
    )
    with consolidated_v3_allowed():
        zarr.consolidate_metadata(zarr_store)


@contextlib.contextmanager
def consolidated_v3_allowed() -> Iterator[None]:
    """Silence zarr's notice that consolidated metadata is an extension in format 3.

    We consolidate on purpose (one read opens the store); xarray and zarr-python read it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield
