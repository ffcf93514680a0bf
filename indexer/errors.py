"""The indexer's own exceptions.

Driver, HTTP and parsing errors are turned into these at the module boundaries, so callers
(the CLI, the daemon loop) decide what to do by exception class, not by message text.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DatabaseUnavailableError", "IndexerError", "MissingFilesError"]


class IndexerError(Exception):
    """Base class of every error the indexer raises on purpose."""


class ConfigError(IndexerError):
    """The configuration (TOML file or ``AUDIFI_*`` environment) is missing or invalid.

    The message says what is wrong, where (``file:key`` or the environment variable), the
    offending value (URL passwords masked as ``***``) and what is expected instead.
    """


class DatabaseUnavailableError(IndexerError):
    """PostgreSQL cannot be reached or refuses the connection.

    The message names the URL (password masked), the driver's reason and what to check.
    """

    @classmethod
    def from_exception(cls, masked_url: str, exc: BaseException) -> DatabaseUnavailableError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = reason[0] if reason else type(exc).__name__
        return cls(
            f"cannot connect to PostgreSQL at {masked_url}: {first}. "
            "Check that the server is running and reachable from here, and that the URL "
            "(AUDIFI_DATABASE_URL or database_url in the config file) names the right host, "
            "port, user and database."
        )


class MissingFilesError(IndexerError, FileNotFoundError):
    """Files the indexer ships with (alembic migrations, ABIs) are not where it looks.

    The message lists the places tried and the variable that points at the right one.
    """
