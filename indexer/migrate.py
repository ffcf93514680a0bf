"""Schema migrations: alembic upgrade/downgrade driven from the package.

Guarantees:

* ``upgrade`` is idempotent: running it on an up-to-date database changes nothing.
* Concurrent ``migrate`` runs against one database are serialised by a PostgreSQL advisory
  lock held for the migration's transaction, so two starting instances cannot race.
* A whole upgrade runs in one transaction (PostgreSQL has transactional DDL): it lands
  completely or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from indexer.contracts import shipped_dir_candidates
from indexer.db import create_engine
from indexer.errors import DatabaseUnavailableError, MissingFilesError

MIGRATION_LOCK_KEY = 0x415544494649  # "AUDIFI": an advisory lock id of our own


def migrations_dir() -> Path:
    """Where the alembic scripts are: the first of
    :func:`~indexer.contracts.shipped_dir_candidates` (``AUDIFI_MIGRATIONS_DIR``, the
    project's ``migrations/``, ``./migrations``) that holds them."""
    candidates = shipped_dir_candidates("AUDIFI_MIGRATIONS_DIR", "migrations")
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise MissingFilesError(
        f"alembic migrations not found in {' or '.join(str(c) for c in candidates)}; set "
        "AUDIFI_MIGRATIONS_DIR to the project's migrations/ folder"
    )


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@dataclass(frozen=True)
class SchemaVersion:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _connect(engine: sa.Engine) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.OperationalError as exc:
        masked = engine.url.set(drivername="postgresql").render_as_string(hide_password=True)
        raise DatabaseUnavailableError.from_exception(masked, exc) from exc


def upgrade(database_url: str, revision: str = "head") -> SchemaVersion:
    """Upgrade the database to ``revision``; return the version before and the head."""
    engine = create_engine(database_url, pool_size=1)
    try:
        with _connect(engine) as conn:
            with conn.begin():
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                before = current_revision(conn)
                command.upgrade(alembic_config(conn), revision)
            return SchemaVersion(current=before, head=head_revision())
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str = "base") -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        with _connect(engine) as conn, conn.begin():
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            command.downgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()


def schema_version(database_url: str, connect_timeout: int | None = None) -> SchemaVersion:
    engine = create_engine(database_url, pool_size=1, connect_timeout=connect_timeout)
    try:
        with _connect(engine) as conn:
            return SchemaVersion(current=current_revision(conn), head=head_revision())
    finally:
        engine.dispose()
