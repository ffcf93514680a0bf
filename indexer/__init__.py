"""AudiFi chain indexer: follows an EVM chain and keeps the AudiFi PostgreSQL database in sync."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("audifi-indexer")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
