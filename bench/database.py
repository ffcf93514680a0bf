"""A fresh, migrated database for one benchmark run, with the backend's rows in place.

The server is, in this order: ``--admin-url`` / ``AUDIFI_BENCH_ADMIN_URL`` (a maintenance
database URL of a server where databases may be created), the local server the tests use
(``AUDIFI_TEST_ADMIN_URL`` or ``postgresql://postgres@127.0.0.1:5432/postgres``) when it
answers, else a private PostgreSQL started in ``bench/cache/pg`` (stopped afterwards).
The run's database (``audifi_bench_<pid>_<random>``) is dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from bench.chain import CACHE_DIR, ChainInfo
from indexer import migrate
from indexer.localpg import LocalPostgres, start_local_postgres

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB_PREFIX = "audifi_bench_"


@dataclass
class Server:
    admin_url: str
    private: LocalPostgres | None = None

    def url_of(self, name: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def settings(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', "
                "'fsync', 'synchronous_commit', 'shared_buffers', 'full_page_writes')"
            ).fetchall()
        return {str(k): str(v) for k, v in rows}


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def server(admin_url: str | None) -> Iterator[Server]:
    url = admin_url or os.environ.get("AUDIFI_BENCH_ADMIN_URL")
    if url:
        yield Server(url)
        return
    fallback = os.environ.get("AUDIFI_TEST_ADMIN_URL", DEFAULT_ADMIN_URL)
    if _answers(fallback):
        yield Server(fallback)
        return
    private = start_local_postgres(CACHE_DIR / "pg" / "data")
    try:
        yield Server(private.url.rsplit("/", 1)[0] + "/postgres", private)
    finally:
        private.stop()


@contextmanager
def fresh_database(srv: Server, keep: bool = False) -> Iterator[str]:
    """A new database migrated to head; dropped afterwards unless ``keep``."""
    name = f"{BENCH_DB_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(srv.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = srv.url_of(name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        if not keep:
            with psycopg.connect(srv.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_backend(url: str, info: ChainInfo) -> dict[str, int]:
    """The rows the AudiFi backend creates before the chain refers to them: artists and
    holders (users, with wallets), every master, IPO configs for a third of them. With them
    in place every event applies at once (none stays pending)."""
    holders = [(str(uuid.uuid4()), wallet) for wallet in info.holders]
    with psycopg.connect(url) as conn, conn.transaction():
        for k, artist in enumerate([*info.artists, *info.coin_artists]):
            conn.execute(
                "INSERT INTO users (id, email, display_name) VALUES (%s, %s, %s)",
                (artist, f"artist{k}@bench.example", f"Artist {k}"),
            )
        for k, (user_id, wallet) in enumerate(holders):
            # a third of the wallets typed in upper case: matching is case-insensitive
            shown = wallet.upper().replace("0X", "0x") if k % 3 == 0 else wallet
            conn.execute(
                "INSERT INTO users (id, email, display_name, wallet_address) "
                "VALUES (%s, %s, %s, %s)",
                (user_id, f"holder{k}@bench.example", f"Holder {k}", shown),
            )
        for k, master in enumerate(info.masters):
            conn.execute(
                "INSERT INTO masters (id, artist_id, title, status) VALUES (%s, %s, %s, 'MINTED')",
                (master.id, master.artist, f"Master {k}"),
            )
            if k % 3 == 0:
                conn.execute(
                    "INSERT INTO ipo_configs (master_id, initial_price, total_supply, "
                    "tier1_count, tier2_count, tier3_count) VALUES (%s, 0.05, 5000, 5, 20, 100)",
                    (master.id,),
                )
    return {
        "users": len(info.artists) + len(info.coin_artists) + len(holders),
        "masters": len(info.masters),
        "ipo_configs": (len(info.masters) + 2) // 3,
    }
