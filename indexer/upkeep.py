"""Schema upkeep done by the leader: future monthly partitions of ``analytics_events`` and a
concurrent refresh of ``mv_daily_master_stats``.

Both are idempotent and safe beside readers: partitions are created with
:mod:`indexer.schema.partitions` (rows that already landed in the default partition move into
the new one in the same transaction); the view is refreshed ``CONCURRENTLY`` (readers keep
reading the old contents meanwhile), which needs its unique index and runs outside a
transaction block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from indexer.db import create_engine
from indexer.logs import get_logger
from indexer.schema.audifi import MV_DAILY_MASTER_STATS
from indexer.schema.partitions import ensure_partitions_ahead

log = get_logger("audifi.upkeep")
PARTITION_CHECK_INTERVAL = 6 * 3600.0


@dataclass
class Upkeep:
    database_url: str
    months_ahead: int = 3
    refresh_interval: float = 3600.0
    _engine: sa.Engine | None = None
    _next_partitions: float = 0.0
    _next_refresh: float = field(default=0.0)

    def _db(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url, pool_size=1)
        return self._engine

    def ensure_partitions(self) -> list[str]:
        with self._db().begin() as conn:
            created = ensure_partitions_ahead(conn, self.months_ahead)
        if created:
            log.info("partitions_created", partitions=created)
        return created

    def refresh_view(self) -> float:
        started = time.monotonic()
        with self._db().connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {MV_DAILY_MASTER_STATS}")
            )
        elapsed = time.monotonic() - started
        log.info("materialized_view_refreshed", view=MV_DAILY_MASTER_STATS, elapsed=elapsed)
        return elapsed

    def run_due(self, now: float | None = None) -> None:
        """Run whatever is due; failures are logged and retried at the next due time."""
        now = time.monotonic() if now is None else now
        if now >= self._next_partitions:
            self._next_partitions = now + PARTITION_CHECK_INTERVAL
            try:
                self.ensure_partitions()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("partitions_failed", error=str(exc).splitlines()[0])
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_interval
            try:
                self.refresh_view()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("materialized_view_refresh_failed", error=str(exc).splitlines()[0])

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
