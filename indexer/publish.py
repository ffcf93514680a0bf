"""The outbox → Redis Stream publisher (at least once, in commit order).

The engine writes one ``indexer_outbox`` row per committed event and per rollback, in the same
transaction as the data (:func:`indexer.store.write_batch`, :func:`indexer.store.rollback_to`).
This module moves those rows to the Redis Stream (default ``audifi:events``):

* :meth:`OutboxPublisher.publish_once` takes the oldest unpublished rows of the chain
  (``published_at IS NULL``, ``id`` order, ``FOR UPDATE SKIP LOCKED``), ``XADD``\\ s them in
  one pipeline (``MAXLEN ~ maxlen``), and only after Redis acknowledged every entry marks them
  published, in the same database transaction. If Redis fails mid-way nothing is marked and
  everything is sent again later: delivery is **at least once**, and consumers dedupe by the
  ``id`` field (``<block_hash>:<log_index>``, or ``rollback:<abandoned>:<ancestor>``).
* :meth:`OutboxPublisher.run_forever` is the background loop: Redis or database errors are
  logged (``redis_unavailable`` / ``outbox_database_unavailable``), counted, and retried after
  a bounded exponential backoff with jitter (≤ ``backoff_max``, 10 s by default). It never
  raises, so Redis being down never blocks indexing; the backlog simply grows in the table
  (gauge ``audifi_indexer_outbox_backlog``) and drains when Redis is back.
* Published rows older than ``retention`` are pruned, so the table stays small.

Stream entry fields (all strings; SPEC §8): ``id``, ``type``, ``chain_id``, ``block_number``,
``block_hash``, ``tx_hash``, ``log_index``, ``data`` (JSON). A ``rollback`` entry also has
``ancestor_block`` and ``ancestor_hash``; its ``tx_hash`` and ``log_index`` are empty and its
``data`` repeats the ancestor as JSON.

Intended wiring (``indexer.daemon``), only on the leader and only when ``redis_url`` is set::

    publisher = OutboxPublisher(
        settings.database_url, settings.redis_url, settings.redis_stream,
        settings.redis_stream_maxlen, chain_id, metrics=metrics,
    )
    thread = publisher.start(stop_event)          # or Thread(target=publisher.run_forever, ...)
    ...
    publisher.notify()                            # after a commit that queued messages (optional)
    ...
    stop_event.set(); thread.join(timeout=10)     # run_forever closes its connections on exit
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from indexer.backoff import Backoff
from indexer.config import mask_url
from indexer.db import libpq_url
from indexer.logs import get_logger
from indexer.observe import Metrics

__all__ = ["DEFAULT_RETENTION", "OutboxPublisher", "pending_ids", "stream_fields"]

log = get_logger("audifi.publish")

DEFAULT_RETENTION = 86_400.0
"""Seconds a published row is kept in ``indexer_outbox`` before it is pruned (one day)."""
DEFAULT_PRUNE_INTERVAL = 300.0
DEFAULT_BATCH = 1000
EVENT_FIELDS = ("id", "type", "chain_id", "block_number", "block_hash", "tx_hash", "log_index")

_SELECT = (
    "SELECT id, message_id, message_type, block_number, payload FROM indexer_outbox "
    "WHERE chain_id = %s AND published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def stream_fields(
    chain_id: int, message_id: str, message_type: str, block_number: int, payload: Mapping[str, Any]
) -> dict[str, str]:
    """The Redis stream entry of one outbox row: every value a string."""
    fields = {
        "id": message_id,
        "type": message_type,
        "chain_id": _text(payload.get("chain_id", chain_id)),
        "block_number": _text(payload.get("block_number", block_number)),
        "block_hash": _text(payload.get("block_hash")),
        "tx_hash": _text(payload.get("tx_hash")),
        "log_index": _text(payload.get("log_index")),
    }
    if message_type == "rollback":
        ancestor = {
            "ancestor_block": payload.get("ancestor_block", block_number),
            "ancestor_hash": payload.get("ancestor_hash", payload.get("block_hash")),
        }
        fields["ancestor_block"] = _text(ancestor["ancestor_block"])
        fields["ancestor_hash"] = _text(ancestor["ancestor_hash"])
        data: Any = payload.get("data", ancestor)
    else:
        data = payload.get("data", {})
    fields["data"] = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    return fields


class OutboxPublisher:
    """Publishes ``indexer_outbox`` rows of one chain to a Redis Stream.

    Not thread-safe: one publisher per thread (run it on the leader only; ``SKIP LOCKED``
    keeps a second publisher from sending the same rows twice at once, but two publishers
    would interleave the stream order).
    """

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        stream: str,
        maxlen: int,
        chain_id: int,
        metrics: Metrics | None = None,
        *,
        retention: float = DEFAULT_RETENTION,
        prune_interval: float = DEFAULT_PRUNE_INTERVAL,
        redis_timeout: float = 5.0,
        backoff_first: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.database_url = database_url
        self.stream = stream
        self.maxlen = maxlen
        self.chain_id = chain_id
        self.metrics = metrics
        self.retention = retention
        self.prune_interval = prune_interval
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._redis_url_masked = mask_url(redis_url)
        # No retries inside redis-py: a failure surfaces at once and run_forever backs off.
        self.redis: redis.Redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=redis_timeout,
            socket_connect_timeout=redis_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._conn: psycopg.Connection[Any] | None = None
        self._wake = threading.Event()
        self._last_prune = 0.0

    # ---------------------------------------------------------------- connections

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                libpq_url(self.database_url),
                autocommit=True,
                application_name="audifi-indexer-outbox",
                connect_timeout=10,
            )
        return self._conn

    def _drop_db(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the database connection and the Redis connection pool."""
        self._drop_db()
        with contextlib.suppress(redis.RedisError):
            self.redis.close()

    # ---------------------------------------------------------------- one round

    def publish_once(self, limit: int = DEFAULT_BATCH) -> int:
        """Publish up to ``limit`` of the oldest unpublished rows; return how many.

        Raises ``redis.RedisError`` (counted in ``audifi_indexer_redis_errors_total``) when
        Redis fails, and ``psycopg.Error`` when the database does: in both cases nothing is
        marked published. The backlog gauge is refreshed either way.
        """
        conn = self._db()
        published = 0
        try:
            with conn.transaction():
                rows = conn.execute(_SELECT, (self.chain_id, limit)).fetchall()
                if rows:
                    pipe = self.redis.pipeline(transaction=False)
                    for _id, message_id, message_type, block_number, payload in rows:
                        fields: dict[Any, Any] = stream_fields(
                            self.chain_id, message_id, message_type, int(block_number), payload
                        )
                        pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
                    pipe.execute()
                    ids = [int(row[0]) for row in rows]
                    conn.execute(
                        "UPDATE indexer_outbox SET published_at = now() WHERE id = ANY(%s)",
                        (ids,),
                    )
                    published = len(rows)
        except redis.RedisError:
            if self.metrics is not None:
                self.metrics.count_redis_error()
            self._refresh_backlog_quietly()
            raise
        if self.metrics is not None:
            self.metrics.count_published(published)
        if published:
            log.debug("outbox_published", count=published, stream=self.stream)
        self.refresh_backlog()
        return published

    def backlog(self) -> int:
        """Unpublished rows of this chain."""
        row = (
            self._db()
            .execute(
                "SELECT count(*) FROM indexer_outbox WHERE chain_id = %s AND published_at IS NULL",
                (self.chain_id,),
            )
            .fetchone()
        )
        return int(row[0]) if row else 0

    def refresh_backlog(self) -> int:
        """Count the backlog and set the gauge; return it."""
        count = self.backlog()
        if self.metrics is not None:
            self.metrics.set_outbox_backlog(count)
        return count

    def _refresh_backlog_quietly(self) -> None:
        try:
            self.refresh_backlog()
        except psycopg.Error as exc:
            log.warning("outbox_backlog_unknown", error=_first_line(exc))
            self._drop_db()

    def prune(self) -> int:
        """Delete published rows older than ``retention`` seconds; return how many."""
        cur = self._db().execute(
            "DELETE FROM indexer_outbox WHERE chain_id = %s AND published_at IS NOT NULL "
            "AND published_at < now() - make_interval(secs => %s)",
            (self.chain_id, float(self.retention)),
        )
        self._last_prune = time.monotonic()
        if cur.rowcount:
            log.info("outbox_pruned", count=cur.rowcount, retention_seconds=self.retention)
        return max(0, cur.rowcount)

    # ---------------------------------------------------------------- the loop

    def notify(self) -> None:
        """Wake :meth:`run_forever` now (e.g. right after a commit that queued messages)."""
        self._wake.set()

    def start(self, stop_event: threading.Event, interval: float = 0.5) -> threading.Thread:
        """Run :meth:`run_forever` on a daemon thread and return the thread."""
        thread = threading.Thread(
            target=self.run_forever,
            args=(stop_event, interval),
            name="audifi-outbox",
            daemon=True,
        )
        thread.start()
        return thread

    def _sleep(self, stop_event: threading.Event, seconds: float, *, wake: bool = True) -> bool:
        """Wait up to ``seconds`` (woken early by :meth:`notify` when ``wake``); True when
        stopping. A backoff after a failure passes ``wake=False``: commits keep notifying while
        Redis is down, and waking on each would retry at the commit rate, not the backoff's."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not wake:
                stop_event.wait(min(left, 0.1))
            elif self._wake.wait(min(left, 0.1)):
                self._wake.clear()
                return stop_event.is_set()
        return True

    def run_forever(
        self, stop_event: threading.Event, interval: float = 0.5, limit: int = DEFAULT_BATCH
    ) -> None:
        """Publish until ``stop_event`` is set; never raises. Closes the connections on exit."""
        backoff = Backoff(self.backoff_first, self.backoff_max)
        failing: str | None = None
        log.info("outbox_publisher_started", stream=self.stream, redis=self._redis_url_masked)
        try:
            while not stop_event.is_set():
                try:
                    sent = self.publish_once(limit)
                    if time.monotonic() - self._last_prune >= self.prune_interval:
                        self.prune()
                except redis.RedisError as exc:
                    failing = "redis"
                    delay = backoff.next_delay()
                    log.warning(
                        "redis_unavailable",
                        redis=self._redis_url_masked,
                        error_type=type(exc).__name__,
                        error=_first_line(exc),
                        retry_in=round(delay, 2),
                        failures=backoff.failures,
                    )
                    self._sleep(stop_event, delay, wake=False)
                    continue
                except psycopg.Error as exc:
                    failing = "database"
                    self._drop_db()
                    delay = backoff.next_delay()
                    log.warning(
                        "outbox_database_unavailable",
                        error_type=type(exc).__name__,
                        error=_first_line(exc),
                        retry_in=round(delay, 2),
                    )
                    self._sleep(stop_event, delay, wake=False)
                    continue
                except Exception as exc:  # a bug must not kill the thread or the daemon
                    failing = "error"
                    self._drop_db()
                    delay = backoff.next_delay()
                    log.error(
                        "outbox_publisher_error",
                        error_type=type(exc).__name__,
                        error=_first_line(exc),
                        retry_in=round(delay, 2),
                        exc_info=True,
                    )
                    self._sleep(stop_event, delay, wake=False)
                    continue
                if failing is not None:
                    log.info("outbox_publisher_recovered", after=failing, failures=backoff.failures)
                    failing = None
                backoff.reset()
                if sent >= limit:
                    continue  # more waiting: go on at once
                self._sleep(stop_event, interval)
        finally:
            self.close()
            log.info("outbox_publisher_stopped", stream=self.stream)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else repr(exc))[:300]


def pending_ids(conn: psycopg.Connection[Any], chain_id: int) -> Sequence[str]:
    """Message ids still waiting in the outbox, in publication order (tests, diagnostics)."""
    rows = conn.execute(
        "SELECT message_id FROM indexer_outbox WHERE chain_id = %s AND published_at IS NULL "
        "ORDER BY id",
        (chain_id,),
    ).fetchall()
    return [str(r[0]) for r in rows]
