"""The daemon: start-up checks, the single-writer lock, the step loop, signals and backoff.

Loop contract (:meth:`Daemon.run`):

* Start-up: read the node's chain id (the configured ``chain_id`` must match), check that the
  schema is at head, refuse a database that holds another chain (stored halt; the process
  stays up and writes nothing), then take the per-chain PostgreSQL advisory lock. A second
  instance waits for that lock as a hot standby and takes over when the holder dies.
* Each iteration runs one :meth:`indexer.sync.Syncer.step`. ``PROGRESSED``/``REORG`` → step
  again at once; ``CAUGHT_UP``/``NODE_BEHIND``/``HALTED`` → wait one poll interval.
* Transient failures (RPC timeouts, 429, 5xx, inconsistent answers, PostgreSQL connection
  loss, serialization failures, a moved cursor) are logged, counted and retried after a
  bounded exponential backoff with jitter; the step's transaction was rolled back, so nothing
  partial was written. Fatal RPC errors stop the daemon with a clear message (exit 1).
* SIGTERM/SIGINT set a flag: the step in hand finishes (commits or rolls back) and the daemon
  exits 0. Waiting (poll interval, backoff, standby) is interrupted at once.
"""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg

from indexer import migrate, store
from indexer.chain.errors import FatalRpcError, RangeTooLargeError, RpcError
from indexer.chain.http_source import HttpChainSource
from indexer.chain.source import ChainSource
from indexer.config import Settings, mask_url
from indexer.errors import IndexerError
from indexer.logs import get_logger
from indexer.sync import CursorMovedError, Outcome, StepResult, Syncer, SyncOptions, Trust, connect

log = get_logger("audifi.daemon")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


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
class Backoff:
    """Bounded exponential backoff with full jitter."""

    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_MAX
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.first * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class DaemonStatus:
    """What the loop last saw; read by health endpoints and metrics."""

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
    ) -> None:
        if not settings.rpc_urls and source is None:
            raise StartupError("no RPC endpoint configured: set AUDIFI_RPC_URL (or rpc_url)")
        self.settings = settings
        self.source: ChainSource = source or HttpChainSource(
            settings.rpc_urls, timeout=settings.rpc_timeout
        )
        self.stop_event = threading.Event()
        self.status = DaemonStatus()
        self.on_step = on_step
        self._lock_conn: psycopg.Connection[Any] | None = None

    # -- signals -----------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was requested."""
        return self.stop_event.wait(max(0.0, seconds))

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
        url = self.settings.database_url
        assert url is not None
        backoff = Backoff()
        while True:
            try:
                return connect(url)
            except psycopg.OperationalError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "database_unavailable",
                    url=mask_url(url),
                    error=str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                    retry_in=round(delay, 2),
                )
                if self._wait(delay):
                    raise KeyboardInterrupt from exc

    def _check_schema(self) -> None:
        url = self.settings.database_url
        assert url is not None
        version = migrate.schema_version(url)
        if not version.up_to_date:
            raise StartupError(
                f"the database schema is at {version.current or 'nothing'}, the indexer needs "
                f"{version.head}: run `audifi-indexer migrate` first"
            )

    def _acquire_leadership(self, chain_id: int) -> bool:
        """Block until this process holds the chain's advisory lock (False: stop requested)."""
        key = leader_lock_key(chain_id)
        announced = False
        while not self.stop_event.is_set():
            try:
                if self._lock_conn is None or self._lock_conn.closed:
                    self._lock_conn = self._connect()
                row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if row and row[0]:
                    self.status.leader = True
                    log.info("leader_acquired", chain_id=chain_id)
                    return True
            except psycopg.OperationalError as exc:
                log.warning("leader_lock_error", error=str(exc).strip()[:200])
                self._lock_conn = None
            if not announced:
                log.info("standby", chain_id=chain_id, reason="another instance holds the lock")
                announced = True
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

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; return the exit code."""
        settings = self.settings
        try:
            chain_id = self._chain_id()
        except KeyboardInterrupt:
            return 0
        self.status.chain_id = chain_id
        self._check_schema()
        log.info(
            "starting",
            chain_id=chain_id,
            rpc=[mask_url(u) for u in settings.rpc_urls],
            start_block=settings.start_block,
            confirmations=settings.confirmations,
            finality_depth=settings.finality_depth,
        )
        try:
            if not self._acquire_leadership(chain_id):
                return 0
            conn = self._connect()
        except KeyboardInterrupt:
            return 0
        other = store.other_chains(conn, chain_id)
        if other:
            reason = (
                f"this database was built for chain {other[0]}, the node is chain {chain_id}: "
                "point AUDIFI_DATABASE_URL at the database of this chain"
            )
            return self._halted_forever(reason)
        syncer = Syncer(self.source, conn, chain_id, trust_from(settings), options_from(settings))
        backoff = Backoff()
        try:
            while not self.stop_event.is_set():
                if not self._still_leader():
                    log.error("leadership_lost", chain_id=chain_id)
                    self.status.leader = False
                    syncer.conn.close()
                    if not self._acquire_leadership(chain_id):
                        break
                    syncer.conn = self._connect()
                    syncer.forget_cache()
                try:
                    result = syncer.step()
                except FatalRpcError as exc:
                    log.error("rpc_fatal", error=str(exc))
                    return 1
                except (RpcError, CursorMovedError, psycopg.Error) as exc:
                    syncer.forget_cache()
                    self.status.last_error = str(exc)
                    delay = backoff.next_delay()
                    log.warning(
                        "step_failed",
                        error_type=type(exc).__name__,
                        error=str(exc)[:500],
                        retry_in=round(delay, 2),
                        single_block=isinstance(exc, RangeTooLargeError),
                    )
                    if isinstance(exc, psycopg.OperationalError) or syncer.conn.closed:
                        syncer.conn.close()
                        try:
                            syncer.conn = self._connect()
                        except KeyboardInterrupt:
                            break
                    self._wait(delay)
                    continue
                backoff.reset()
                self._record(result)
                if result.outcome in (Outcome.PROGRESSED, Outcome.REORG):
                    continue
                if result.outcome is not Outcome.HALTED:
                    self._reconcile(syncer)
                self._wait(settings.poll_interval)
        finally:
            syncer.conn.close()
            if self._lock_conn is not None:
                self._lock_conn.close()
        log.info("stopped", chain_id=chain_id, indexed_block=self.status.indexed_block)
        return 0

    def _reconcile(self, syncer: Syncer) -> None:
        """Pending events whose rows appeared, and owners of newly linked wallets: applied
        once per poll, so within one poll interval even when no block arrives."""
        try:
            applied = syncer.reconcile()
        except psycopg.Error as exc:
            log.warning("reconcile_failed", error=str(exc)[:300])
            return
        if applied:
            log.info("pending_applied", events=applied)

    def _halted_forever(self, reason: str) -> int:
        self.status.halted = True
        self.status.halt_reason = reason
        log.error("halted", reason=reason)
        while not self._wait(self.settings.poll_interval):
            pass
        return 0

    def _record(self, result: StepResult) -> None:
        status = self.status
        status.last_step_at = time.time()
        status.head = result.head if result.head is not None else status.head
        status.halted = result.outcome is Outcome.HALTED
        status.halt_reason = result.reason if status.halted else None
        if result.to_block is not None:
            status.indexed_block = result.to_block
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
            )
        elif result.outcome is Outcome.REORG:
            log.warning(
                "reorg", depth=result.reorg_depth, ancestor=result.ancestor, hash=result.to_hash
            )
        elif result.outcome is Outcome.HALTED:
            log.error("halted", reason=result.reason)
        elif result.outcome is Outcome.NODE_BEHIND:
            log.warning("node_behind", reason=result.reason, head=result.head)
        if self.on_step is not None:
            self.on_step(result)
