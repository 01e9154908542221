"""pipeline: tile plans, Ray tasks, and zarr output stores for gridded GP predictions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpgrid")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
