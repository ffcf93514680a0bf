"""Metrics and health at the edges of the daemon: Prometheus metrics, ``/healthz``, ``/readyz``.

Nothing here is threaded through the engine: the daemon feeds what it already knows (a
:class:`~indexer.sync.StepResult`, leadership, halts, RPC observations) into a :class:`Metrics`
and a :class:`HealthState`, and :func:`serve_http` exposes both on one small HTTP server.

Intended wiring (``indexer.daemon``)::

    metrics = Metrics(confirmations=settings.confirmations)
    health = HealthState(
        poll_interval=settings.poll_interval,
        ready_max_lag_blocks=settings.ready_max_lag_blocks,
        confirmations=settings.confirmations,
    )
    source = HttpChainSource(settings.rpc_urls, timeout=..., observer=metrics.rpc_observer)
    server = serve_http(settings.http_host, settings.http_port, metrics, health) \\
        if settings.http_enabled else None

    # every loop iteration, including standby and backoff waits (keep waits ≤ the stale limit):
    health.beat()
    # leadership (after acquiring the advisory lock / on losing it):
    metrics.set_leader(True);  health.set_leader(True)
    # after each step (``seconds``: wall time of Syncer.step()):
    metrics.observe_step(result, seconds);  health.observe_step(result)
    # a failed step (RpcError, psycopg.Error, CursorMovedError …):
    metrics.count_step_error(type(exc).__name__)
    health.set_database(False, str(exc))        # only for psycopg.OperationalError
    # a halt found outside a step (database built for another chain):
    metrics.set_halted(True);  health.set_halted(True, reason)
    # upkeep: pending events, database writes
    metrics.set_pending(n);  metrics.observe_db_write(seconds)
    # shutdown:
    server.close()

``health.sync_from(daemon.status)`` copies leader/halt/head/indexed from a
:class:`~indexer.daemon.DaemonStatus` (any object with those attributes) and beats, for callers
that prefer one call per iteration.

Health rules:

* ``/healthz`` → 200 while the loop heartbeat is fresh: younger than
  ``max(30 s, 5 × poll_interval)`` (or ``stale_after``); else 503. A standby instance beats
  too, so it is healthy.
* ``/readyz`` → 200 when the instance is the leader, the database is reachable, indexing is
  not halted, a step has completed and ``lag - confirmations ≤ ready_max_lag_blocks``, and the
  heartbeat is fresh; else 503 with every reason in ``reasons``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from indexer import __version__
from indexer.chain.errors import mask_endpoint
from indexer.decode import EventType
from indexer.logs import get_logger
from indexer.sync import Outcome, StepResult

__all__ = [
    "REORG_DEPTH_BUCKETS",
    "HealthState",
    "Metrics",
    "MetricsServer",
    "StatusLike",
    "serve_http",
]

log = get_logger("audifi.observe")

PREFIX = "audifi_indexer_"
REORG_DEPTH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
RPC_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DB_WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MIN_STALE_AFTER = 30.0
STALE_POLL_FACTOR = 5.0


# --------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """Every ``audifi_indexer_*`` metric, on a registry of its own (several may coexist).

    All methods are thread-safe and never raise on odd input (metrics must not take the
    daemon down).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        confirmations: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._confirmations = max(0, confirmations)
        self._clock = clock
        self._lock = threading.Lock()
        self._head: int | None = None
        self._indexed: int | None = None
        self._caught_up_at = clock()
        r = self.registry

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, tuple(labels), registry=r)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(PREFIX + name, doc, tuple(labels), registry=r)

        def histogram(
            name: str, doc: str, buckets: Iterable[float], labels: Iterable[str] = ()
        ) -> Histogram:
            return Histogram(PREFIX + name, doc, tuple(labels), buckets=tuple(buckets), registry=r)

        self.head_block = gauge("head_block", "Latest block number reported by the node.")
        self.indexed_block = gauge(
            "indexed_block", "Highest block committed to the database (the cursor)."
        )
        self.lag_blocks = gauge("lag_blocks", "Blocks between the node's head and the cursor.")
        self.lag_seconds = gauge(
            "lag_seconds",
            "Seconds since the indexer was last caught up with the head (0 while caught up).",
        )
        self.events = counter(
            "events", "Accepted AudiFi events committed, by event type.", ("event",)
        )
        self.ignored_logs = counter(
            "ignored_logs", "Logs ignored: untrusted emitters or before a registration."
        )
        self.dead_letters = counter(
            "dead_letters", "Logs of trusted emitters that failed to decode (dead letters)."
        )
        self.pending_events = gauge(
            "pending_events", "Events waiting for their master or artist row to exist."
        )
        self.reorgs = counter("reorgs", "Chain reorganisations rolled back.")
        self.reorg_depth = histogram(
            "reorg_depth", "Depth in blocks of rolled-back reorganisations.", REORG_DEPTH_BUCKETS
        )
        self.rpc_requests = counter(
            "rpc_requests",
            "JSON-RPC requests by method, endpoint (credentials masked) and outcome.",
            ("method", "endpoint", "outcome"),
        )
        self.rpc_latency = histogram(
            "rpc_latency_seconds",
            "JSON-RPC request latency by method.",
            RPC_LATENCY_BUCKETS,
            ("method",),
        )
        self.batch_duration = histogram(
            "batch_duration_seconds",
            "Wall time of a step that committed a batch or rolled back a reorg.",
            BATCH_BUCKETS,
        )
        self.db_write_duration = histogram(
            "db_write_duration_seconds",
            "Wall time of database write transactions.",
            DB_WRITE_BUCKETS,
        )
        self.outbox_backlog = gauge(
            "outbox_backlog", "Outbox messages committed but not yet published to Redis."
        )
        self.outbox_published = counter(
            "outbox_published", "Outbox messages published to the Redis stream."
        )
        self.redis_errors = counter("redis_errors", "Failed attempts to publish to Redis.")
        self.halted = gauge("halted", "1 while indexing is halted (operator action needed).")
        self.leader = gauge("leader", "1 while this instance holds the single-writer lock.")
        self.step_errors = counter(
            "step_errors", "Failed loop steps (retried with backoff), by error kind.", ("kind",)
        )
        self.build_info = gauge("build_info", "Build information; always 1.", ("version",))
        self.build_info.labels(version=version).set(1)
        for event in EventType:
            self.events.labels(event=event.value)

    # ---------------------------------------------------------------- the loop

    def observe_step(self, result: StepResult, seconds: float) -> None:
        """Account for one :meth:`indexer.sync.Syncer.step` that took ``seconds``."""
        with self._lock:
            if result.head is not None:
                self._head = result.head
                self.head_block.set(result.head)
            if result.to_block is not None:
                self._indexed = result.to_block
                self.indexed_block.set(result.to_block)
            lag: int | None = None
            if self._head is not None and self._indexed is not None:
                lag = max(0, self._head - self._indexed)
                self.lag_blocks.set(lag)
            now = self._clock()
            caught_up = result.outcome is Outcome.CAUGHT_UP or (
                result.outcome is not Outcome.HALTED
                and lag is not None
                and lag <= self._confirmations
            )
            if caught_up:
                self._caught_up_at = now
                self.lag_seconds.set(0)
            else:
                self.lag_seconds.set(max(0.0, now - self._caught_up_at))
        for event, count in result.event_counts.items():
            if count > 0:
                self.events.labels(event=str(event)).inc(count)
        if result.ignored > 0:
            self.ignored_logs.inc(result.ignored)
        if result.dead_letters > 0:
            self.dead_letters.inc(result.dead_letters)
        if result.outcome is Outcome.REORG:
            self.reorgs.inc()
            self.reorg_depth.observe(max(0, result.reorg_depth))
        if result.outcome in (Outcome.PROGRESSED, Outcome.REORG):
            self.batch_duration.observe(max(0.0, seconds))
            self.db_write_duration.observe(max(0.0, result.db_seconds))
        self.halted.set(1 if result.outcome is Outcome.HALTED else 0)

    def rpc_observer(self, method: str, endpoint: str, outcome: str, seconds: float) -> None:
        """The chain client's ``observer`` hook: ``(method, endpoint, outcome, seconds)``.

        The endpoint is masked again here, so a password can never reach a label.
        """
        try:
            self.rpc_requests.labels(
                method=method, endpoint=mask_endpoint(endpoint), outcome=outcome
            ).inc()
            self.rpc_latency.labels(method=method).observe(max(0.0, seconds))
        except Exception as exc:  # the observer must not raise into the RPC client
            log.warning("metrics_error", where="rpc_observer", error=repr(exc)[:200])

    # ---------------------------------------------------------------- setters

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_halted(self, halted: bool) -> None:
        self.halted.set(1 if halted else 0)

    def set_pending(self, count: int) -> None:
        self.pending_events.set(max(0, count))

    def set_outbox_backlog(self, count: int) -> None:
        self.outbox_backlog.set(max(0, count))

    def set_lag_seconds(self, seconds: float) -> None:
        """Override the lag in seconds (e.g. wall clock minus the indexed block's time)."""
        self.lag_seconds.set(max(0.0, seconds))

    def count_step_error(self, kind: str) -> None:
        """A failed step; ``kind`` is a short stable name such as the exception class name."""
        self.step_errors.labels(kind=kind).inc()

    def observe_db_write(self, seconds: float) -> None:
        self.db_write_duration.observe(max(0.0, seconds))

    def count_published(self, count: int) -> None:
        if count > 0:
            self.outbox_published.inc(count)

    def count_redis_error(self) -> None:
        self.redis_errors.inc()

    # ---------------------------------------------------------------- exposition

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------------
# Health


class StatusLike(Protocol):
    """What :meth:`HealthState.sync_from` reads (``indexer.daemon.DaemonStatus`` fits)."""

    leader: bool
    halted: bool
    halt_reason: str | None
    head: int | None
    indexed_block: int | None
    last_step_at: float
    """Wall time of the last completed step; 0 before the first."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    status_code: int
    body: dict[str, Any]


class HealthState:
    """What ``/healthz`` and ``/readyz`` decide from; every method is thread-safe."""

    def __init__(
        self,
        *,
        poll_interval: float = 2.0,
        ready_max_lag_blocks: int = 50,
        confirmations: int = 0,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = (
            stale_after
            if stale_after is not None
            else max(MIN_STALE_AFTER, STALE_POLL_FACTOR * poll_interval)
        )
        self.ready_max_lag_blocks = ready_max_lag_blocks
        self.confirmations = max(0, confirmations)
        self._clock = clock
        self._lock = threading.Lock()
        self._heartbeat = clock()  # start-up counts as a beat: a grace period
        self._leader = False
        self._database_ok: bool | None = None
        self._database_error: str | None = None
        self._halted = False
        self._halt_reason: str | None = None
        self._head: int | None = None
        self._indexed: int | None = None
        self._stepped = False

    # ---------------------------------------------------------------- updates

    def beat(self) -> None:
        """The loop is alive (call every iteration, also while standing by or backing off)."""
        with self._lock:
            self._heartbeat = self._clock()

    def set_leader(self, leader: bool) -> None:
        with self._lock:
            self._leader = leader

    def set_database(self, reachable: bool, error: str | None = None) -> None:
        with self._lock:
            self._database_ok = reachable
            self._database_error = None if reachable else (error or "unreachable")

    def set_halted(self, halted: bool, reason: str | None = None) -> None:
        with self._lock:
            self._halted = halted
            self._halt_reason = (reason or "halted") if halted else None

    def set_chain(self, head: int | None, indexed: int | None) -> None:
        with self._lock:
            if head is not None:
                self._head = head
            if indexed is not None:
                self._indexed = indexed
            self._stepped = True

    def observe_step(self, result: StepResult) -> None:
        """A step completed: beat, the database answered, head/indexed/halt from ``result``."""
        with self._lock:
            self._heartbeat = self._clock()
            self._database_ok = True
            self._database_error = None
            if result.head is not None:
                self._head = result.head
            if result.to_block is not None:
                self._indexed = result.to_block
            self._halted = result.outcome is Outcome.HALTED
            self._halt_reason = (result.reason or "halted") if self._halted else None
            self._stepped = True

    def sync_from(self, status: StatusLike) -> None:
        """Copy leader/halt/head/indexed from a daemon status object and beat."""
        with self._lock:
            self._heartbeat = self._clock()
            self._leader = status.leader
            self._halted = status.halted
            self._halt_reason = (status.halt_reason or "halted") if status.halted else None
            if status.head is not None:
                self._head = status.head
            if status.indexed_block is not None:
                self._indexed = status.indexed_block
            if status.last_step_at > 0:
                self._stepped = True

    # ---------------------------------------------------------------- decisions

    def _age(self) -> float:
        return max(0.0, self._clock() - self._heartbeat)

    def _lag(self) -> int | None:
        if self._head is None or self._indexed is None:
            return None
        return max(0, self._head - self._indexed)

    def healthz(self) -> HealthReport:
        with self._lock:
            age = self._age()
            role = "leader" if self._leader else "standby"
        body: dict[str, Any] = {"heartbeat_age_seconds": round(age, 3), "role": role}
        if age <= self.stale_after:
            return HealthReport(200, {"status": "ok", **body})
        reason = f"loop heartbeat {age:.1f}s old (limit {self.stale_after:g}s)"
        return HealthReport(503, {"status": "unhealthy", "reasons": [reason], **body})

    def readyz(self) -> HealthReport:
        reasons: list[str] = []
        with self._lock:
            age = self._age()
            lag = self._lag()
            if age > self.stale_after:
                reasons.append(f"loop heartbeat {age:.1f}s old (limit {self.stale_after:g}s)")
            if self._database_ok is False:
                reasons.append(f"database unreachable: {self._database_error}")
                if not self._leader:
                    reasons.append("standby: the single-writer lock waits for the database")
            elif not self._leader:
                reasons.append("standby: another instance holds the single-writer lock")
            if self._halted:
                reasons.append(f"halted: {self._halt_reason}")
            if lag is None:
                if not self._halted and not self._stepped:
                    reasons.append("starting: no step completed yet")
            elif lag - self.confirmations > self.ready_max_lag_blocks:
                reasons.append(
                    f"lag {lag} blocks exceeds {self.ready_max_lag_blocks}"
                    + (f" (+{self.confirmations} confirmations)" if self.confirmations else "")
                )
            body: dict[str, Any] = {
                "role": "leader" if self._leader else "standby",
                "head_block": self._head,
                "indexed_block": self._indexed,
                "lag_blocks": lag,
                "halted": self._halted,
            }
        if reasons:
            return HealthReport(503, {"status": "unready", "reasons": reasons, **body})
        return HealthReport(200, {"status": "ready", **body})


# --------------------------------------------------------------------------------------------
# HTTP


class MetricsServer(ThreadingHTTPServer):
    """``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread; see :func:`serve_http`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: HealthState) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.health = health
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self.server_address[1])

    def close(self) -> None:
        """Stop serving, close the socket and join the thread."""
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, self.server.metrics.render(), send_body)
            elif path in ("/healthz", "/readyz"):
                health = self.server.health
                report = health.healthz() if path == "/healthz" else health.readyz()
                self._send_json(report.status_code, report.body, send_body)
            else:
                self._send_json(
                    404, {"status": "not_found", "paths": ["/metrics", "/healthz", "/readyz"]},
                    send_body,
                )  # fmt: skip
        except Exception as exc:  # never let a bug kill the server thread silently
            log.error("http_error", path=path, error=repr(exc)[:300])
            self._send_json(500, {"status": "error", "error": type(exc).__name__}, send_body)

    def _send_json(self, code: int, body: dict[str, Any], send_body: bool) -> None:
        self._send(code, "application/json", orjson.dumps(body) + b"\n", send_body)

    def _send(self, code: int, content_type: str, data: bytes, send_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (probes every few seconds would drown the log)."""


def serve_http(host: str, port: int, metrics: Metrics, health: HealthState) -> MetricsServer:
    """Start the HTTP server on a daemon thread and return it (``.port``, ``.close()``).

    ``port`` 0 binds a free port (tests); the configuration's ``http_port = 0`` means
    "disabled", which the caller handles by not calling this at all.
    """
    server = MetricsServer((host, port), metrics, health)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.25},
        name="audifi-http",
        daemon=True,
    )
    server.thread = thread
    thread.start()
    log.info("http_listening", host=host, port=server.port)
    return server
