"""``audifi-indexer demo``: the indexer on an embedded default, with nothing configured.

For now (the foundation) it provides a database and the schema: when ``AUDIFI_DATABASE_URL``
is unset it starts a private PostgreSQL in ``--data-dir``, migrates it to the newest schema,
prints what the schema holds, and stops every process it started.
"""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from indexer import migrate
from indexer.config import load_settings, mask_url
from indexer.db import create_engine
from indexer.localpg import LocalPostgres, start_local_postgres
from indexer.schema.report import schema_report


def run_demo(config_path: str | None, data_dir: str) -> int:
    settings = load_settings(config_path)
    server: LocalPostgres | None = None
    try:
        url = settings.database_url
        if url is None:
            started = time.monotonic()
            server = start_local_postgres(Path(data_dir) / "pgdata")
            url = server.url
            print(
                f"started a private PostgreSQL (pid {server.pid()}) at {url} "
                f"in {time.monotonic() - started:.1f}s"
            )
        else:
            print(f"using the configured database {mask_url(url)}")
        version = migrate.upgrade(url)
        print(f"schema: {version.current or 'empty'} -> {version.head}")
        engine = create_engine(url, pool_size=1)
        try:
            with engine.connect() as conn:
                report = schema_report(conn)
                server_version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        finally:
            engine.dispose()
        print(f"PostgreSQL {server_version}")
        for line in report.lines():
            print(f"  {line}")
        return 0
    finally:
        if server is not None:
            server.stop()
            print("stopped the private PostgreSQL")
