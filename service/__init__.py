"""process-status: tells API gateways and clients whether an event-driven read model has
caught up with a write."""

from importlib import metadata

try:
    __version__ = metadata.version("process-status")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
