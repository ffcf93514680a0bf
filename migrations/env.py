"""Alembic environment for the AudiFi schema.

The connection comes, in this order, from ``config.attributes["connection"]`` (set by
``audifi-indexer migrate`` and the tests), ``-x url=…``, the config's ``sqlalchemy.url`` (the
alembic Python API: ``cfg.set_main_option("sqlalchemy.url", url)``), or ``AUDIFI_DATABASE_URL``.
Partitions of ``analytics_events`` are created by the migrations and kept by the daemon; they
are not described in the metadata, so autogenerate is told to look past them.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from alembic import context

from indexer.db import sqlalchemy_url
from indexer.schema import metadata
from indexer.schema.partitions import PARENT

config = context.config


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return not (type_ == "table" and name is not None and name.startswith(f"{PARENT}_"))


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=include_name,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=False,
    )


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("AUDIFI_DATABASE_URL")
    )
    if not url:
        raise SystemExit(
            "alembic: no database URL. Set AUDIFI_DATABASE_URL=postgresql://user@host/db, "
            "pass -x url=postgresql://… or set sqlalchemy.url in the alembic config"
        )
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(_url(), poolclass=sa.NullPool)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("alembic: offline (--sql) mode is not supported; run against a database")
run_migrations_online()
