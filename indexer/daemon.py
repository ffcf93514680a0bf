"""The daemon: start-up checks, the single-writer lock, the step loop, signals and backoff;
metrics, health, the Redis publisher and schema upkeep attached at the edges.

Loop contract (:meth:`Daemon.run`):

* Start-up: serve ``/metrics``, ``/healthz``, ``/readyz`` (when ``http_port`` ≠ 0); read the
  node's chain id (the configured ``chain_id`` must match); check that the schema is at head;
  take the per-chain PostgreSQL advisory lock — a second instance waits for it as a hot
  standby (healthy, not ready) and takes over within about a second of the holder's death.
  A database that holds another chain halts: the process stays up, writes nothing, and
  reports it (``/readyz`` 503, ``audifi_indexer_halted`` 1).
* Each iteration runs one :meth:`indexer.sync.Syncer.step`. ``PROGRESSED``/``REORG`` → step
  again at once; ``CAUGHT_UP``/``NODE_BEHIND`` → apply pending events and re-link owners
  (:meth:`Syncer.reconcile`), wait one poll interval; ``HALTED`` → wait.
* Schema upkeep (partitions ahead, the view's refresh) runs in a thread of its own while this
  process leads and is not halted (:meth:`indexer.upkeep.Upkeep.run_in_background`): a long
  refresh never holds up indexing, and a stop cancels it.
* Transient failures (RPC timeouts, 429, 5xx, inconsistent answers, PostgreSQL connection
  loss, serialization failures and deadlocks, a moved cursor) are logged, counted and retried
  after a bounded exponential backoff with jitter; the step's transaction was rolled back, so
  nothing partial was written. Fatal RPC errors stop the daemon with a clear message (exit 1).
* SIGTERM/SIGINT set a flag: the step in hand finishes (commits or rolls back) and the daemon
  exits 0. Every wait is sliced so the flag is seen within ~0.2 s and health keeps beating.
"""

from __future__ import annotations

import functools
import hashlib
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog

from indexer import foreign_keys, migrate, store
from indexer.backoff import Backoff
from indexer.chain.errors import FatalRpcError, RangeTooLargeError, RpcError, mask_endpoint
from indexer.chain.http_source import HttpChainSource
from indexer.chain.source import ChainSource
from indexer.config import Settings, mask_url
from indexer.errors import DatabaseUnavailableError, IndexerError
from indexer.logs import get_logger
from indexer.observe import HealthState, Metrics, MetricsServer, serve_http
from indexer.projections import KEYS_CHECKED_PER_BATCH, pending_count
from indexer.publish import OutboxPublisher
from indexer.sync import CursorMovedError, Outcome, StepResult, Syncer, SyncOptions, Trust, connect
from indexer.upkeep import Upkeep

log = get_logger("audifi.daemon")

WAIT_SLICE = 0.2
READER_CONNECT_TIMEOUT = 10
"""Seconds the engine's reader connection (backfill batches planned ahead) may take to open;
a failure only costs that batch's plan."""
CONNECT_TIMEOUT = 10
"""Seconds any other connection attempt may take (libpq's default waits about two minutes on a
host that drops packets, during which the loop would not beat /healthz)."""


# Connection errors that are configuration mistakes, not outages: at start-up the daemon stops
# with a clear error instead of waiting. libpq gives no SQLSTATE for a refused connection, so
# the server's (English) FATAL message is matched; any other text counts as an outage.
CONFIGURATION_FAILURES = re.compile(
    r'FATAL:\s+(database "[^"]*" does not exist|role "[^"]*" does not exist|'
    r"password authentication failed|no pg_hba\.conf entry)"
)


PENDING_REFRESH = 1.0  # seconds between pending-gauge refreshes while catching up
UPKEEP_STOP_WAIT = 3.0  # seconds a stop waits for the upkeep thread, cancelling its statement


class StartupError(IndexerError):
    """The daemon cannot start: wrong chain, schema not migrated, and similar."""


def leader_lock_key(chain_id: int) -> int:
    """A stable 63-bit advisory-lock key per chain."""
    digest = hashlib.sha256(f"audifi-indexer:{chain_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def trust_from(settings: Settings) -> Trust:
    return Trust(
        registry=settings.master_registry,
        dividends=frozenset(settings.dividend_contracts),
        coin_factory=settings.coin_factory,
        count_spoofed_transfers=settings.count_spoofed_transfers,
    )


def options_from(settings: Settings) -> SyncOptions:
    return SyncOptions(
        start_block=settings.start_block,
        confirmations=settings.confirmations,
        finality_depth=settings.finality_depth,
        max_block_range=settings.max_block_range,
        outbox=settings.redis_url is not None,
    )


@dataclass
class DaemonStatus:
    """What the loop last saw (for callers embedding the daemon, such as the demo)."""

    chain_id: int | None = None
    leader: bool = False
    halted: bool = False
    halt_reason: str | None = None
    head: int | None = None
    indexed_block: int | None = None
    last_step_at: float = 0.0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        source: ChainSource | None = None,
        on_step: Callable[[StepResult], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not settings.rpc_urls and source is None:
            raise StartupError("no RPC endpoint configured: set AUDIFI_RPC_URL (or rpc_url)")
        if settings.database_url is None:
            raise StartupError("no database configured: set AUDIFI_DATABASE_URL")
        self.settings = settings
        self.metrics = metrics or Metrics(confirmations=settings.confirmations)
        self.health = HealthState(
            poll_interval=settings.poll_interval,
            ready_max_lag_blocks=settings.ready_max_lag_blocks,
            confirmations=settings.confirmations,
        )
        self.source: ChainSource = source or HttpChainSource(
            settings.rpc_urls,
            timeout=settings.rpc_timeout,
            observer=self.metrics.rpc_observer,
            expected_chain_id=settings.chain_id,
        )
        self.stop_event = threading.Event()
        self._stop_signal: int | None = None
        """The signal that asked for a stop, until the main thread acts on it."""
        self.status = DaemonStatus()
        self.on_step = on_step
        self.server: MetricsServer | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._pending_refreshed = 0.0  # monotonic time of the last pending-gauge refresh
        self._publisher: OutboxPublisher | None = None
        self._publisher_thread: threading.Thread | None = None
        self._upkeep_thread: threading.Thread | None = None
        self._stepped_as_leader = False
        self._upkeep = Upkeep(
            settings.database_url,
            months_ahead=settings.partitions_ahead_months,
            refresh_interval=settings.mv_refresh_interval,
        )

    @property
    def database_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    # -- signals and waiting -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT ask the loop to stop after the batch in hand.

        The handler only stores the signal's number: Python runs it in the main thread
        between two bytecodes — possibly while that thread holds a lock the handler would
        take (the log's writer lock, the stop event's condition), which deadlocked the daemon
        when a signal arrived as it finished writing a log line (seen: no
        ``shutdown_requested``, no progress, killed 15 s later). The main thread turns it
        into ``stop_event`` and the log line at its next check (:meth:`_stop_requested`:
        every loop turn and every :data:`WAIT_SLICE` of a wait)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self._stop_signal = signum  # one attribute store: no lock, no I/O

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _stop_requested(self) -> bool:
        """True once a stop was asked for (a signal, or ``stop_event`` set by another thread);
        the first time after a signal, logs it and sets ``stop_event`` for the other threads."""
        signum = self._stop_signal
        if signum is not None and not self.stop_event.is_set():
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stop_event.set()
        return self.stop_event.is_set()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` in short slices (health keeps beating); True on stop."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            self.health.beat()
            if self._stop_requested():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.stop_event.wait(min(WAIT_SLICE, left)):
                return True

    # -- start-up ----------------------------------------------------------------------
    def _chain_id(self) -> int:
        backoff = Backoff()
        while True:
            try:
                chain_id = self.source.chain_id()
                break
            except FatalRpcError:
                raise
            except RpcError as exc:
                delay = backoff.next_delay()
                log.warning("rpc_unavailable", error=str(exc), retry_in=round(delay, 2))
                if self._wait(delay):
                    raise KeyboardInterrupt from exc
        expected = self.settings.chain_id
        if expected is not None and chain_id != expected:
            raise StartupError(
                f"the node reports chain id {chain_id}, but chain_id (AUDIFI_CHAIN_ID) is "
                f"{expected}: check AUDIFI_RPC_URL points at the right network"
            )
        return chain_id

    def _connect(self) -> psycopg.Connection[Any]:
        """A new engine connection; waits (backing off) while PostgreSQL cannot be reached.
        Raises KeyboardInterrupt when a stop is requested meanwhile."""
        backoff = Backoff()
        while True:
            try:
                conn = connect(self.database_url, connect_timeout=CONNECT_TIMEOUT)
                self.health.set_database(True)
                return conn
            except psycopg.OperationalError as exc:
                self._database_unavailable(exc, backoff)

    def _database_unavailable(self, exc: Exception, backoff: Backoff) -> None:
        """Report PostgreSQL as unreachable (readiness, metric, log) and wait the next backoff
        delay; KeyboardInterrupt when a stop is requested meanwhile."""
        delay = backoff.next_delay()
        cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
        first = str(cause or exc).strip().splitlines()
        self.health.set_database(False, first[0] if first else repr(exc))
        self.metrics.count_step_error("database_unavailable")
        log.warning(
            "database_unavailable",
            url=mask_url(self.database_url),
            error=first[0] if first else repr(exc),
            retry_in=round(delay, 2),
        )
        if self._wait(delay):
            raise KeyboardInterrupt from exc

    def _check_schema(self) -> None:
        """The schema must be at head. A database that cannot be reached yet is waited for
        (SPEC §4.5: indexing resumes on its own), so the daemon may start before PostgreSQL."""
        backoff = Backoff()
        while True:
            try:
                version = migrate.schema_version(self.database_url, CONNECT_TIMEOUT)
                break
            except DatabaseUnavailableError as exc:
                if CONFIGURATION_FAILURES.search(str(exc.__cause__ or exc)):
                    raise  # wrong database, role or password: waiting will not fix it
                self._database_unavailable(exc, backoff)
            except sa.exc.OperationalError as exc:  # connected, then the server went away
                self._database_unavailable(exc, backoff)
        self.health.set_database(True)
        if not version.up_to_date:
            raise StartupError(
                f"the database schema is at {version.current or 'nothing'}, the indexer needs "
                f"{version.head}: run `audifi-indexer migrate` first"
            )

    def _open_engine_connection(self, chain_id: int) -> tuple[psycopg.Connection[Any], list[int]]:
        """The engine's connection, the chains other than ``chain_id`` the database holds, and
        the foreign-key mode logged; retried while PostgreSQL drops the connection."""
        backoff = Backoff()
        while True:
            conn = self._connect()
            try:
                other = store.other_chains(conn, chain_id)
                if not other:
                    self._log_key_checks(conn)
                return conn, other
            except psycopg.OperationalError as exc:
                conn.close()
                self._database_unavailable(exc, backoff)

    def _set_leader(self, leader: bool) -> None:
        self._stepped_as_leader = False  # a new term: upkeep waits for its first step
        self.status.leader = leader
        self.metrics.set_leader(leader)
        self.health.set_leader(leader)

    def _acquire_leadership(self, chain_id: int) -> bool:
        """Block until this process holds the chain's advisory lock (False: stop requested)."""
        key = leader_lock_key(chain_id)
        announced = False
        while not self._stop_requested():
            try:
                if self._lock_conn is None or self._lock_conn.closed:
                    self._lock_conn = self._connect()
                row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if row and row[0]:
                    self._set_leader(True)
                    log.info("leader_acquired", chain_id=chain_id)
                    return True
                if not announced:  # refused: another instance holds it (not a lost database)
                    log.info("standby", chain_id=chain_id, reason="another instance holds the lock")
                    announced = True
            except psycopg.OperationalError as exc:
                log.warning("leader_lock_error", error=str(exc).strip()[:200])
                self._lock_conn = None
            except KeyboardInterrupt:
                return False
            self._wait(1.0)
        return False

    def _still_leader(self) -> bool:
        conn = self._lock_conn
        if conn is None or conn.closed:
            return False
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    # -- attachments -----------------------------------------------------------------------
    def _start_publisher(self, chain_id: int) -> None:
        settings = self.settings
        if settings.redis_url is None or self._publisher is not None:
            return
        self._publisher = OutboxPublisher(
            self.database_url,
            settings.redis_url,
            settings.redis_stream,
            settings.redis_stream_maxlen,
            chain_id,
            metrics=self.metrics,
        )
        self._publisher_thread = self._publisher.start(self.stop_event)

    def _may_keep_the_schema(self) -> bool:
        """Upkeep runs while this process leads, after the first step of its term as leader
        (which reads a stored halt: another instance may have stored one meanwhile), and not
        while halted: a halted process writes nothing (SPEC §8)."""
        status = self.status
        return status.leader and self._stepped_as_leader and not status.halted

    def _stop_attachments(self) -> None:
        self.stop_event.set()  # the loop has ended, whatever ended it: so do the threads
        upkeep = self._upkeep_thread
        deadline = time.monotonic() + UPKEEP_STOP_WAIT
        while upkeep is not None and upkeep.is_alive() and time.monotonic() < deadline:
            self._upkeep.cancel()  # again: a statement sent just after a cancel escapes it
            upkeep.join(timeout=0.2)
        if self._publisher_thread is not None:
            self._publisher_thread.join(timeout=5)
        if self._publisher is not None:
            self._publisher.close()
        self._upkeep.close()
        if self.server is not None:
            self.server.close()
        if self._lock_conn is not None:
            self._lock_conn.close()

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; return the exit code."""
        settings = self.settings
        if settings.http_enabled:
            self.server = serve_http(
                settings.http_host, settings.http_port, self.metrics, self.health
            )
        try:
            return self._run()
        finally:
            self._stop_attachments()

    @staticmethod
    def _log_key_checks(conn: store.Conn) -> None:
        """Say once whether bulk writes check their foreign keys per batch (the fast way) or
        row by row, and how to allow the fast way (``indexer/foreign_keys.py``)."""
        per_batch = foreign_keys.fast_path_allowed(
            conn, KEYS_CHECKED_PER_BATCH, foreign_keys.REFERENCED_TABLES
        )
        conn.rollback()
        if per_batch:
            log.info("foreign_keys_checked_per_batch", tables=list(KEYS_CHECKED_PER_BATCH))
        else:
            log.info(
                "foreign_keys_checked_per_row",
                tables=list(KEYS_CHECKED_PER_BATCH),
                hint="a backfill is faster when the role may set session_replication_role and "
                "lock masters/users rows; see docs/operations.md",
            )

    def _run(self) -> int:
        settings = self.settings
        try:
            chain_id = self._chain_id()
        except KeyboardInterrupt:
            return 0
        self.status.chain_id = chain_id
        structlog.contextvars.bind_contextvars(chain_id=chain_id)  # on every log line from here
        try:
            self._check_schema()
        except KeyboardInterrupt:
            return 0
        log.info(
            "starting",
            chain_id=chain_id,
            rpc=[mask_endpoint(u) for u in settings.rpc_urls],
            start_block=settings.start_block,
            confirmations=settings.confirmations,
            finality_depth=settings.finality_depth,
            count_spoofed_transfers=settings.count_spoofed_transfers,
        )
        if not self._acquire_leadership(chain_id):
            return 0
        try:
            conn, other = self._open_engine_connection(chain_id)
        except KeyboardInterrupt:
            return 0
        if other:
            conn.close()
            return self._halted_forever(store.foreign_chain_reason(other[0], chain_id))
        self._start_publisher(chain_id)
        self._upkeep_thread = self._upkeep.run_in_background(
            self.stop_event, self._may_keep_the_schema
        )
        syncer = Syncer(
            self.source,
            conn,
            chain_id,
            trust_from(settings),
            options_from(settings),
            reader=functools.partial(
                connect, self.database_url, connect_timeout=READER_CONNECT_TIMEOUT
            ),
        )
        backoff = Backoff()
        try:
            while not self._stop_requested():
                self.health.beat()
                if not self._still_leader():
                    log.error("leadership_lost", chain_id=chain_id)
                    self._set_leader(False)
                    syncer.conn.close()
                    syncer.forget_cache()  # and its reader connection, while on standby
                    if not self._acquire_leadership(chain_id):
                        break
                    syncer.conn = self._connect()
                    syncer.forget_cache()
                started = time.monotonic()
                try:
                    result = syncer.step()
                except FatalRpcError as exc:
                    log.error("rpc_fatal", error=str(exc))
                    return 1
                except (RpcError, CursorMovedError, psycopg.Error) as exc:
                    if not self._recover(syncer, exc, backoff):
                        break
                    continue
                backoff.reset()
                self.health.set_database(True)
                self._record(result, time.monotonic() - started)
                if result.outcome in (Outcome.PROGRESSED, Outcome.REORG):
                    if self._publisher is not None:
                        self._publisher.notify()
                    self._refresh_pending(syncer)
                    continue
                if result.outcome is not Outcome.HALTED:
                    self._reconcile(syncer)
                self._wait(settings.poll_interval)
        finally:
            syncer.close()
        log.info("stopped", chain_id=chain_id, indexed_block=self.status.indexed_block)
        return 0

    def _recover(self, syncer: Syncer, exc: Exception, backoff: Backoff) -> bool:
        """Log and count a failed step, reconnect if needed, back off. False: stop now.
        The projector keeps what its next reconcile must cover (the shares written since the
        last re-link): a flaky node must not cost a re-link of every share per fault."""
        syncer.forget_cache(links=False)
        self.status.last_error = str(exc)
        self.metrics.count_step_error(type(exc).__name__)
        delay = backoff.next_delay()
        log.warning(
            "step_failed",
            error_type=type(exc).__name__,
            error=str(exc)[:500],
            retry_in=round(delay, 2),
            single_block=isinstance(exc, RangeTooLargeError),
        )
        if isinstance(exc, psycopg.OperationalError) or syncer.conn.closed:
            self.health.set_database(False, str(exc).strip()[:200])
            syncer.conn.close()
            try:
                syncer.conn = self._connect()
            except KeyboardInterrupt:
                return False
        return not self._wait(delay)

    def _refresh_pending(self, syncer: Syncer) -> None:
        """While catching up, the pending-events gauge follows the event log too (at most once
        per PENDING_REFRESH seconds: one indexed count between two steps)."""
        now = time.monotonic()
        if now - self._pending_refreshed < PENDING_REFRESH:
            return
        self._pending_refreshed = now
        try:
            self.metrics.set_pending(pending_count(syncer.conn, syncer.chain_id))
        except psycopg.Error as exc:  # the next step finds and recovers a broken connection
            log.warning("pending_count_failed", error=str(exc)[:300])

    def _reconcile(self, syncer: Syncer) -> None:
        """Pending events whose rows appeared, and owners of newly linked wallets: applied
        once per poll, so within one poll interval even when no block arrives."""
        try:
            applied = syncer.reconcile()
            self.metrics.set_pending(pending_count(syncer.conn, syncer.chain_id))
        except psycopg.Error as exc:
            log.warning("reconcile_failed", error=str(exc)[:300])
            return
        if applied:
            log.info("pending_applied", events=applied)

    def _halted_forever(self, reason: str) -> int:
        self.status.halted = True
        self.status.halt_reason = reason
        self.metrics.set_halted(True)
        self.health.set_halted(True, reason)
        log.error("halted", reason=reason)
        while not self._wait(self.settings.poll_interval):
            pass
        return 0

    def _record(self, result: StepResult, seconds: float) -> None:
        status = self.status
        self._stepped_as_leader = True
        was_halted = status.halted
        status.last_step_at = time.time()
        status.head = result.head if result.head is not None else status.head
        status.halted = result.outcome is Outcome.HALTED
        status.halt_reason = result.reason if status.halted else None
        if result.to_block is not None:
            status.indexed_block = result.to_block
        self.metrics.observe_step(result, seconds)
        self.health.observe_step(result)
        if result.outcome is Outcome.PROGRESSED:
            log.info(
                "batch_committed",
                from_block=result.from_block,
                to_block=result.to_block,
                hash=result.to_hash,
                events=result.events,
                dead_letters=result.dead_letters,
                ignored=result.ignored,
                head=result.head,
                elapsed=round(seconds, 4),
            )
        elif result.outcome is Outcome.REORG:
            log.warning(
                "reorg", depth=result.reorg_depth, ancestor=result.ancestor, hash=result.to_hash
            )
        elif result.outcome is Outcome.HALTED and not was_halted:  # once, not every poll
            log.error("halted", reason=result.reason)
        elif result.outcome is Outcome.NODE_BEHIND:
            log.warning("node_behind", reason=result.reason, head=result.head)
        if self.on_step is not None:
            self.on_step(result)
