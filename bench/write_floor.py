"""The **write floor**: what PostgreSQL alone needs to store the rows the backfill ended with.

The rows a backfill left in its database — the event log, the shares, the dividends, the
artist coins — are read back (``COPY … TO``), and written again into a fresh database by
``COPY … FROM``, PostgreSQL's fastest way in, in ONE transaction (SPEC §4: data and cursor
commit together, so one batch is one transaction on one backend). Nothing is decoded, no RPC
is made, no row is written twice (a transferred share is written once, with its final owner).

The foreign keys of ``nft_shares`` and ``dividend_events`` are checked as the indexer checks
them (:mod:`indexer.foreign_keys`): once for the whole write when the role may, else by
PostgreSQL's row-level triggers; ``foreign_keys_per_batch`` says which.

No backfill into this schema can be faster than this on the same server: it shows how much of
the backfill's time is the database's own work — the seed's indexes on ``nft_shares``, the
event log's keys — rather than the indexer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from bench.database import Server, fresh_database
from indexer import foreign_keys
from indexer.projections import KEYS_CHECKED_PER_BATCH

BACKEND_TABLES = ("users", "masters", "ipo_configs")
"""Copied first, untimed: the rows the backend owns, which the written rows refer to."""

WRITTEN = (
    (
        "indexer_events",
        "chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index, "
        "address, event_type, args, context, applied",
        "block_number, log_index",
    ),
    (
        "nft_shares",
        "master_id, token_id, owner_id, owner_wallet, tier, royalty_percent, minted_at, "
        "last_transfer",
        "master_id, token_id",
    ),
    (
        "dividend_events",
        "master_id, amount, contract_address, block_number, block_hash, block_time, tx_hash, "
        "log_index",
        "block_number, log_index",
    ),
    (
        "artist_coins",
        "artist_id, contract_address, name, symbol, total_supply, deployed_at",
        "artist_id",
    ),
)
"""(table, columns, order): the rows the indexer wrote, in the order it wrote them."""


@dataclass
class WriteFloor:
    rows: dict[str, int]
    seconds: float
    postgres_cpu_s: float | None
    foreign_keys_per_batch: bool

    def events_per_s(self, events: int) -> float:
        return events / self.seconds


def _read(conn: psycopg.Connection, table: str, columns: str, order: str | None) -> bytes:
    query = f"SELECT {columns} FROM {table}" + (f" ORDER BY {order}" if order else "")
    out = bytearray()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT") as copy:
        for chunk in copy:
            out += chunk
    return bytes(out)


def _write(conn: psycopg.Connection, table: str, columns: str, data: bytes) -> None:
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for start in range(0, len(data), 1 << 20):
            copy.write(data[start : start + (1 << 20)])


def measure_write_floor(
    srv: Server, backfilled_url: str, postgres_cpu: Callable[[int | None], float | None]
) -> WriteFloor:
    """Read the rows of ``backfilled_url`` and time writing them into a fresh database;
    ``postgres_cpu(pid)`` (CPU seconds of a process, when readable) gives the CPU the writing
    backend used."""
    with psycopg.connect(backfilled_url) as source:
        backend = {
            table: (columns, _read(source, table, columns, None))
            for table, columns in ((t, ", ".join(_columns(source, t))) for t in BACKEND_TABLES)
        }
        payloads = [
            (table, columns, _read(source, table, columns, order))
            for table, columns, order in WRITTEN
        ]
    # COPY text holds one line per row (newlines inside values are escaped)
    rows = {table: data.count(b"\n") for table, _, data in payloads}
    with fresh_database(srv) as url, psycopg.connect(url) as conn:
        for table, (columns, data) in backend.items():
            _write(conn, table, columns, data)
        conn.commit()
        conn.execute("ANALYZE")
        conn.commit()
        references = {
            table: [row[0] for row in conn.execute(f"SELECT id FROM {table}")]
            for table in foreign_keys.REFERENCED_TABLES
        }
        conn.commit()
        pid = conn.info.backend_pid
        cpu_before = postgres_cpu(pid)
        started = time.perf_counter()
        with foreign_keys.checked_per_batch(conn, KEYS_CHECKED_PER_BATCH, references) as per_batch:
            for table, columns, data in payloads:
                _write(conn, table, columns, data)
        conn.commit()
        seconds = time.perf_counter() - started
        cpu_after = postgres_cpu(pid)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return WriteFloor(
        rows=rows, seconds=seconds, postgres_cpu_s=cpu, foreign_keys_per_batch=per_batch
    )


def _columns(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = %s AND is_generated = 'NEVER' ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]
