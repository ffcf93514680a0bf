"""Database connection helpers: URL normalisation and the engine factory."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

_DRIVER_SCHEME = "postgresql+psycopg"


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver named, as SQLAlchemy needs it.

    ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` are accepted.
    """
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres", _DRIVER_SCHEME):
        return urlunsplit((_DRIVER_SCHEME, *parts[1:]))
    raise ValueError(f"not a PostgreSQL URL: scheme {parts.scheme!r}")


def libpq_url(url: str) -> str:
    """Return ``url`` as plain libpq understands it (``postgresql://``), for psycopg."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", *parts[1:]))


def create_engine(
    url: str, *, pool_size: int = 5, echo: bool = False, connect_timeout: int | None = None
) -> sa.Engine:
    """An engine for the indexer: psycopg 3, pre-ping on checkout, UTC sessions;
    ``connect_timeout`` (seconds) overrides the URL's / libpq's. The URL's own ``options``
    (``?options=-csearch_path%3Daudifi``) are kept, before the UTC setting: they used to be
    replaced by it, so ``migrate`` built the schema in ``public`` while the daemon's psycopg
    connections looked in the URL's schema (found by review)."""
    url_options = sa.engine.make_url(sqlalchemy_url(url)).query.get("options")
    if isinstance(url_options, tuple):
        url_options = " ".join(url_options)
    connect_args: dict[str, object] = {
        "options": " ".join(filter(None, (url_options, "-c timezone=UTC"))),
        "application_name": "audifi-indexer",
    }
    if connect_timeout is not None:
        connect_args["connect_timeout"] = connect_timeout
    return sa.create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        pool_pre_ping=True,
        echo=echo,
        connect_args=connect_args,
    )
