"""Schema upkeep done by the leader: future monthly partitions of ``analytics_events`` and a
concurrent refresh of ``mv_daily_master_stats``.

Both are idempotent and safe beside readers: partitions are created with
:mod:`indexer.schema.partitions` (rows that already landed in the default partition move into
the new one in the same transaction); the view is refreshed ``CONCURRENTLY`` (readers keep
reading the old contents meanwhile), which needs its unique index and runs outside a
transaction block.

The daemon runs upkeep in a thread of its own (:meth:`Upkeep.run_in_background`), on its own
connection: a refresh reads every row of ``analytics_events`` (≈ 1 s per 5,000,000 rows
here), and in the main loop it held up indexing for that long at each refresh. At shutdown
the statement in flight is cancelled (:meth:`Upkeep.cancel`); what it did is rolled back
and done again at the next start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from indexer.db import create_engine
from indexer.logs import get_logger
from indexer.schema.audifi import MV_DAILY_MASTER_STATS
from indexer.schema.partitions import ensure_partitions_ahead

log = get_logger("audifi.upkeep")
PARTITION_CHECK_INTERVAL = 6 * 3600.0
UPKEEP_TICK = 1.0
"""Seconds between two looks of the upkeep thread at what is due (and at leadership)."""
UPKEEP_CONNECT_TIMEOUT = 10
"""Seconds to open the upkeep connection (a stop cannot cancel a connection being opened)."""


class UpkeepCancelled(Exception):
    """:meth:`Upkeep.cancel` came before the task's statement was sent."""


@dataclass
class Upkeep:
    database_url: str
    months_ahead: int = 3
    refresh_interval: float = 3600.0
    _engine: sa.Engine | None = None
    _next_partitions: float = 0.0
    _next_refresh: float = field(default=0.0)
    _in_flight: Any = None
    """The psycopg connection of the statement running now (for :meth:`cancel`)."""
    _cancelled: bool = False

    def _db(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(
                self.database_url, pool_size=1, connect_timeout=UPKEEP_CONNECT_TIMEOUT
            )
        return self._engine

    @contextmanager
    def _cancellable(self, conn: sa.Connection) -> Iterator[sa.Connection]:
        """Make the statements of the block cancellable by :meth:`cancel`. A cancel that came
        before this (while the connection was being opened) ends the task here; one that
        comes while the statement is being sent may find the connection idle: the stopper
        cancels again until the thread ends (``indexer/daemon.py``)."""
        self._in_flight = conn.connection.dbapi_connection
        try:
            if self._cancelled:
                raise UpkeepCancelled
            yield conn
        finally:
            self._in_flight = None

    def ensure_partitions(self) -> list[str]:
        with self._db().begin() as conn, self._cancellable(conn):
            created = ensure_partitions_ahead(conn, self.months_ahead)
        if created:
            log.info("partitions_created", partitions=created)
        return created

    def refresh_view(self) -> float:
        started = time.monotonic()
        with self._db().connect() as conn, self._cancellable(conn):
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {MV_DAILY_MASTER_STATS}")
            )
        elapsed = time.monotonic() - started
        log.info("materialized_view_refreshed", view=MV_DAILY_MASTER_STATS, elapsed=elapsed)
        return elapsed

    def run_due(self, now: float | None = None) -> None:
        """Run whatever is due; failures are logged and retried at the next due time."""
        if self._cancelled:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_partitions:
            self._next_partitions = now + PARTITION_CHECK_INTERVAL
            try:
                self.ensure_partitions()
            except (sa.exc.SQLAlchemyError, UpkeepCancelled) as exc:
                self._failed("partitions_failed", exc)
        if now >= self._next_refresh and not self._cancelled:
            self._next_refresh = now + self.refresh_interval
            try:
                self.refresh_view()
            except (sa.exc.SQLAlchemyError, UpkeepCancelled) as exc:
                self._failed("materialized_view_refresh_failed", exc)

    def _failed(self, event: str, exc: Exception) -> None:
        if self._cancelled:
            log.info("upkeep_cancelled", task=event.removesuffix("_failed"))
        else:
            log.warning(event, error=str(exc).splitlines()[0])

    def run_in_background(
        self, stop: threading.Event, leading: Callable[[], bool]
    ) -> threading.Thread:
        """Start the upkeep thread: every :data:`UPKEEP_TICK` seconds, while ``leading()``
        (only the leader keeps the schema), it runs what is due, until ``stop`` is set. Each
        task keeps its own schedule; a failure is logged and retried at its next due time."""

        def loop() -> None:
            while not stop.is_set():
                try:
                    if leading():
                        self.run_due()
                except Exception as exc:  # never end the thread silently: log, go on
                    log.error("upkeep_failed", error_type=type(exc).__name__, error=str(exc))
                stop.wait(UPKEEP_TICK)

        thread = threading.Thread(target=loop, name="audifi-upkeep", daemon=True)
        thread.start()
        return thread

    def cancel(self) -> None:
        """Cancel the statement in flight, if any (from another thread, at shutdown); no
        task starts after this."""
        self._cancelled = True
        conn = self._in_flight
        if conn is not None:
            try:
                conn.cancel_safe(timeout=1.0)
            except Exception as exc:  # the connection may be closing: nothing to cancel then
                log.warning("upkeep_cancel_failed", error=str(exc).splitlines()[0][:200])

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
