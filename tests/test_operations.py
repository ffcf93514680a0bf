"""Operations: the real daemon (``python -m indexer run``) as a subprocess, under the faults an
operator meets — Redis and PostgreSQL going away, dropped connections, two instances, a flaky
RPC endpoint, SIGTERM — and its HTTP surface (``/metrics`` through ``promtool``, ``/healthz``,
``/readyz``, a stored halt).

Every test drives a private anvil, a fresh database and its own daemon processes. After the
run the stored event log must equal the oracle's (tests/fixtures/truth.py) and the domain
tables must hold every share and dividend exactly once. Servers that a test stops are private
ones on free loopback ports (redis-server, a localpg PostgreSQL), stopped by their PID; the
machine's shared PostgreSQL and Redis are never stopped. Every process started here is killed
by its PID in a ``finally`` (fixture teardown).

Figures worth reporting (outage lengths, backlog, catch-up and take-over times) are printed
with an ``[ops]`` prefix: run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from indexer import store
from indexer.localpg import LocalPostgres, free_port, start_local_postgres
from indexer.projections import pending_count
from indexer.upkeep import UPKEEP_TICK
from tests.fixtures.chains import AnvilNode, AudifiContracts, deploy_audifi, send_tx
from tests.fixtures.daemon import daemon_env, environ_without_audifi
from tests.fixtures.db import ADMIN_URL
from tests.fixtures.redis_server import PrivateRedis
from tests.fixtures.rpc_proxy import RpcProxy
from tests.fixtures.truth import TrustedSet, canonical_event_log

pytestmark = pytest.mark.anvil

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL = "/usr/bin/promtool"
STREAM = "audifi:events"
STREAM_FIELDS = {"id", "type", "chain_id", "block_number", "block_hash", "tx_hash", "log_index"}
EVENT_TYPES = ("MasterRegistered", "Transfer", "DividendDeposited", "ArtistCoinDeployed")
PINNED_SAMPLES = {  # SPEC §8 metric names, as exposition samples
    "audifi_indexer_head_block",
    "audifi_indexer_indexed_block",
    "audifi_indexer_lag_blocks",
    "audifi_indexer_reorgs_total",
    "audifi_indexer_reorg_depth_bucket",
    "audifi_indexer_reorg_depth_count",
    "audifi_indexer_reorg_depth_sum",
    "audifi_indexer_events_total",
    "audifi_indexer_ignored_logs_total",
    "audifi_indexer_dead_letters_total",
    "audifi_indexer_pending_events",
    "audifi_indexer_outbox_backlog",
    "audifi_indexer_rpc_requests_total",
    "audifi_indexer_rpc_latency_seconds_bucket",
    "audifi_indexer_halted",
    "audifi_indexer_leader",
}
APP_NAME = "audifi-indexer"  # application_name of the daemon's engine and lock connections

T = TypeVar("T")


def report(text: str) -> None:
    """A figure for the test report (visible with ``pytest -s``)."""
    print(f"\n[ops] {text}", flush=True)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """One ``python -m indexer run`` subprocess with JSON logs in a file and its HTTP port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "indexer", "run"],
            env={**env, "AUDIFI_HTTP_PORT": str(self.port)},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------ logs

    def log_lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == event]

    def tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- daemon pid {self.pid} log tail ---\n" + "\n".join(text)

    def wait_logged(self, event: str, timeout: float) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            self.check_alive()
            found = self.logged(event)
            return found[0] if found else None

        return wait_for(seen, timeout, f"log event {event!r}", context=self.tail)

    # ------------------------------------------------------------ HTTP

    def http(self, path: str) -> tuple[int, Any]:
        """(status, parsed JSON or text) of GET ``path``; (0, None) when nothing answers."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None
        text = body.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metrics_text(self) -> str:
        status, body = self.http("/metrics")
        assert status == 200, f"/metrics answered {status}: {body!r}"
        return str(body)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.http("/metrics")
        if status != 200:
            return {}
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(str(body)):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels``."""
        total = 0.0
        for (sample, sample_labels), value in self.samples().items():
            if sample == name and set(labels.items()) <= set(sample_labels):
                total += value
        return total

    # ------------------------------------------------------------ lifecycle

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"the daemon exited with code {code}\n{self.tail()}")

    def wait_indexed(self, block: int, timeout: float) -> float:
        """Wait until the daemon reports ``block`` as indexed; return the seconds it took."""
        started = time.monotonic()

        def reached() -> bool:
            self.check_alive()
            value = self.metric("audifi_indexer_indexed_block")
            return value is not None and value >= block

        wait_for(reached, timeout, f"indexed block {block}", interval=0.1, context=self.tail)
        return time.monotonic() - started

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL by PID if still running, reap, close the log file (idempotent)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self._log.close()


StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[StartDaemon]:
    """``daemons(env, name)`` starts a daemon; every one is killed by PID at teardown."""
    started: list[DaemonProcess] = []

    def start(env: dict[str, str], name: str = "daemon") -> DaemonProcess:
        daemon = DaemonProcess(env, tmp_path / f"{name}-{len(started)}.log")
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.kill()


# --------------------------------------------------------------------------------- the world


@dataclass
class World:
    """A private anvil with the AudiFi contracts, a database, and the activity made so far.

    The backend's rows (an artist user and every master) are inserted before the chain
    activity that refers to them, so every share and dividend lands in the domain tables.
    """

    node: AnvilNode
    contracts: AudifiContracts
    database_url: str
    artist: uuid.UUID = field(default_factory=uuid.uuid4)
    masters: list[uuid.UUID] = field(default_factory=list)
    mints: int = 0
    dividends: int = 0
    dividend_total: int = 0

    def __post_init__(self) -> None:
        self.chain_id = int(self.node.w3.eth.chain_id)
        with self.db() as conn:
            conn.execute(
                "INSERT INTO users (id, email, display_name) VALUES (%s, %s, 'Artist')",
                (self.artist, f"{self.artist}@example.org"),
            )

    @property
    def w3(self) -> Any:
        return self.node.w3

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)

    def env(self, rpc_url: str | None = None, **extra: Any) -> dict[str, str]:
        """The daemon's environment: only AUDIFI_* variables of this world (no config file);
        ``extra`` as for :func:`daemon_env` (``redis_url=…``, ``max_block_range=3``)."""
        settings = {"max_block_range": 5, "http_host": "127.0.0.1", **extra}
        return daemon_env(self.database_url, rpc_url or self.node.url, self.contracts, **settings)

    # ------------------------------------------------------------ activity

    def activity(
        self, masters: int = 2, mints: int = 15, dividends: int = 4, empty: int = 0
    ) -> None:
        """``masters`` new masters with ``mints`` shares each (one tx, one block each),
        ``dividends`` deposits spread over the masters, then ``empty`` empty blocks."""
        registry = self.contracts.registry
        holder = self.node.accounts[1]
        for _ in range(masters):
            master = uuid.uuid4()
            with self.db() as conn:
                conn.execute(
                    "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Song')",
                    (master, self.artist),
                )
            fn = registry.functions.deployMasterAndMint(master.bytes, "M", "M", holder, 1, mints)
            send_tx(self.w3, fn)
            self.masters.append(master)
            self.mints += mints
        for i in range(dividends):
            master = self.masters[(self.dividends + i) % len(self.masters)]
            amount = 10**18 + 7 * (self.dividends + i)
            send_tx(self.w3, self.contracts.distributor.functions.record(master.bytes, amount))
            self.dividend_total += amount
        self.dividends += dividends
        if empty:
            self.node.mine(empty)

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    # ------------------------------------------------------------ truth and checks

    @property
    def trusted(self) -> TrustedSet:
        c = self.contracts
        return TrustedSet(c.registry.address, (c.distributor.address,), c.factory.address)

    def expected(self, last: int) -> list[tuple[Any, ...]]:
        return canonical_event_log(self.w3, self.trusted, 0, last)

    def stored(self) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return [tuple(row) for row in store.event_log(conn, self.chain_id)]

    def cursor(self) -> tuple[int | None, str | None]:
        with self.db() as conn:
            state = store.load_state(conn, self.chain_id)
        assert state is not None, "the daemon never created its cursor"
        return state.indexed_block, state.indexed_hash

    def assert_event_log(self, last: int) -> list[tuple[Any, ...]]:
        """The stored event log equals the oracle's up to ``last``: no gap, no duplicate."""
        stored, expected = self.stored(), self.expected(last)
        if stored != expected:
            keys = lambda rows: [(r[0], r[3]) for r in rows]  # noqa: E731
            s, e = keys(stored), keys(expected)
            missing = sorted(set(e) - set(s))
            extra = sorted(set(s) - set(e))
            duplicates = len(s) - len(set(s))
            raise AssertionError(
                f"event log differs from the oracle up to block {last}: {len(stored)} stored, "
                f"{len(expected)} expected; missing {missing[:10]}, extra {extra[:10]}, "
                f"{duplicates} duplicate(s)"
            )
        return stored

    def assert_complete(self) -> list[tuple[Any, ...]]:
        """Caught up with the head; event log = oracle; every share/dividend exactly once."""
        head = self.head()
        block, block_hash = self.cursor()
        assert block == head, f"cursor at {block}, head at {head}"
        assert block_hash == self.w3.eth.get_block(head)["hash"].to_0x_hex()
        stored = self.assert_event_log(head)
        assert sum(1 for r in stored if r[5] == "Transfer") == self.mints
        assert sum(1 for r in stored if r[5] == "DividendDeposited") == self.dividends
        with self.db() as conn:
            shares = conn.execute(
                "SELECT count(*), count(DISTINCT (master_id, token_id)) FROM nft_shares"
            ).fetchone()
            dividends = conn.execute(
                "SELECT count(*), count(DISTINCT (tx_hash, log_index)), coalesce(sum(amount), 0) "
                "FROM dividend_events"
            ).fetchone()
            masters = conn.execute(
                "SELECT count(*) FROM masters WHERE contract_address IS NOT NULL"
            ).fetchone()
            pending = pending_count(conn, self.chain_id)
        assert shares == (self.mints, self.mints)
        assert dividends == (self.dividends, self.dividends, self.dividend_total)
        assert masters == (len(self.masters),)
        assert pending == 0
        return stored


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world(anvil_factory: Callable[..., AnvilNode]) -> MakeWorld:
    """``make_world(database_url)``: a private anvil with the AudiFi contracts deployed."""

    def make(database_url: str) -> World:
        node = anvil_factory()
        return World(node, deploy_audifi(node.w3), database_url)

    return make


@pytest.fixture
def world(make_world: MakeWorld, database_url: str) -> World:
    return make_world(database_url)


# --------------------------------------------------------------------------------- private servers


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A private PostgreSQL (indexer.localpg), migrated to head with ``audifi-indexer migrate``.

    As root the server runs as the ``postgres`` user, which cannot enter pytest's private tmp
    folders: its data lives under a world-traversable temp folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="audifi-ops-pg-"))
    folder.chmod(0o755)
    server: LocalPostgres | None = None
    try:
        server = start_local_postgres(folder / "data")
        env = environ_without_audifi()
        cli = Path(sys.executable).with_name("audifi-indexer")
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "indexer"]
        done = subprocess.run(
            [*command, "migrate"],
            env={**env, "AUDIFI_DATABASE_URL": server.url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def stream_entries(client: redis.Redis, key: str = STREAM) -> list[dict[str, str]]:
    answer: Any = client.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _entry_id, fields in answer]


def terminate_daemon_backends(database: str) -> int:
    """pg_terminate_backend every connection of the daemon (by application_name) to
    ``database`` on the shared server; return how many were terminated."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = %s AND pid <> pg_backend_pid()",
            (APP_NAME, database),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


# --------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_redis_outage_never_blocks_indexing_and_loses_no_message(
    world: World, persistent_redis: PrivateRedis, daemons: StartDaemon
) -> None:
    world.activity(masters=2, mints=15, dividends=4)
    daemon = daemons(world.env(redis_url=persistent_redis.url), "redis")
    daemon.wait_indexed(world.head(), timeout=20)
    wait_for(
        lambda: (
            daemon.metric("audifi_indexer_outbox_backlog") == 0
            and (daemon.metric("audifi_indexer_outbox_published_total") or 0) > 0
        ),
        10,
        "the first events on the stream",
        context=daemon.tail,
    )
    before = len(world.stored())

    persistent_redis.stop()
    down_at = time.monotonic()
    world.activity(masters=2, mints=15, dividends=4)
    while time.monotonic() - down_at < 3.0:  # a live chain: a block (and a commit) per poll
        world.node.mine(1)
        time.sleep(0.15)
    head = world.head()
    backlog_max = 0.0

    def indexed_while_down() -> bool:
        nonlocal backlog_max
        daemon.check_alive()
        backlog_max = max(backlog_max, daemon.metric("audifi_indexer_outbox_backlog") or 0)
        return (daemon.metric("audifi_indexer_indexed_block") or 0) >= head

    wait_for(indexed_while_down, 20, "indexing while Redis is down", 0.1, daemon.tail)
    indexed_in = time.monotonic() - down_at
    assert persistent_redis.proc is not None and persistent_redis.proc.poll() is not None
    queued = len(world.stored()) - before
    assert queued > 0

    def backlog_seen() -> bool:
        nonlocal backlog_max
        backlog_max = max(backlog_max, daemon.metric("audifi_indexer_outbox_backlog") or 0)
        return backlog_max >= queued

    wait_for(backlog_seen, 15, f"outbox_backlog >= {queued}", 0.1, daemon.tail)
    assert (daemon.metric("audifi_indexer_redis_errors_total") or 0) > 0
    daemon.wait_logged("redis_unavailable", timeout=5)

    persistent_redis.start()
    up_at = time.monotonic()
    outage = up_at - down_at
    wait_for(
        lambda: daemon.metric("audifi_indexer_outbox_backlog") == 0,
        25,
        "the outbox backlog to drain after Redis came back",
        0.1,
        daemon.tail,
    )
    catch_up = time.monotonic() - up_at
    daemon.wait_logged("outbox_publisher_recovered", timeout=5)
    # While Redis was down the publisher retried on its backoff, not on every commit.
    commits = failures = 0
    events = [line["event"] for line in daemon.log_lines()]
    for event in events[events.index("redis_unavailable") :]:
        if event == "outbox_publisher_recovered":
            break
        commits += event == "batch_committed"
        failures += event == "redis_unavailable"
    assert commits >= 8, f"only {commits} commits during the outage"
    assert failures <= 6, f"{failures} Redis attempts for {commits} commits in {outage:.1f}s"
    report(
        f"redis outage {outage:.1f}s: cursor reached the head {indexed_in:.1f}s after the stop "
        f"(Redis still down); backlog max {backlog_max:.0f} (= {queued} events committed "
        f"meanwhile); {failures} publish attempts failed during {commits} commits; drained "
        f"{catch_up:.1f}s after the restart"
    )

    stored = world.assert_complete()
    with world.db() as conn:
        assert conn.execute(
            "SELECT count(*) FROM indexer_outbox WHERE published_at IS NULL"
        ).fetchone() == (0,)
    client = persistent_redis.client()
    try:
        entries = stream_entries(client)
    finally:
        client.close()
    first_seen: dict[str, dict[str, str]] = {}
    for entry in entries:
        first_seen.setdefault(entry["id"], entry)
    expected_ids = [f"{r[1]}:{r[3]}" for r in stored]
    missing = [i for i in expected_ids if i not in first_seen]
    assert not missing, f"{len(missing)} committed events never reached the stream: {missing[:5]}"
    assert list(first_seen) == expected_ids, "stream order (first copies) != commit order"
    for row in stored:
        entry = first_seen[f"{row[1]}:{row[3]}"]
        assert set(entry) == STREAM_FIELDS | {"data"}, entry
        assert entry["type"] == row[5]
        assert entry["chain_id"] == str(world.chain_id)
        assert entry["block_number"] == str(row[0])
        assert entry["block_hash"] == row[1]
        assert entry["tx_hash"] == row[2]
        assert entry["log_index"] == str(row[3])
        data = json.loads(entry["data"])
        assert {k: data.get(k) for k in row[6]} == row[6], (entry, row)
        effect = data["effect"]  # what the event did to the AudiFi tables when committed
        if effect["applied"] and row[5] == "Transfer":
            assert effect["token_id"] == data["tokenId"], entry
            assert effect["share"] in ("minted", "transferred", "burned"), entry
            if effect["share"] == "minted":
                assert effect["tier"] in ("1", "2", "3", "4"), entry
        elif effect["applied"] and row[5] == "DividendDeposited":
            assert effect["amount_wei"] == data["amount"], entry
        else:
            assert effect["applied"] in (True, False), entry
    report(f"stream: {len(entries)} entries, {len(first_seen)} distinct ids, all {len(stored)} "
           f"committed events present with the SPEC §8 fields")  # fmt: skip


@pytest.mark.slow
def test_killed_postgres_connections_mid_backfill(
    world: World,
    database_url: str,
    rpc_proxy_factory: Callable[..., RpcProxy],
    daemons: StartDaemon,
) -> None:
    world.activity(masters=3, mints=12, dividends=6, empty=200)
    head = world.head()
    proxy = rpc_proxy_factory(world.node.url).delay(0.01)  # a backfill of a few seconds
    daemon = daemons(world.env(rpc_url=proxy.url, max_block_range=5), "pgkill")
    database = database_url.rsplit("/", 1)[1]
    daemon.wait_indexed(20, timeout=15)

    rounds: list[tuple[float, int]] = []  # (indexed block at the kill, backends terminated)
    started = last_kill = time.monotonic()
    while time.monotonic() - started < 12 and len(rounds) < 6:
        daemon.check_alive()
        indexed = daemon.metric("audifi_indexer_indexed_block") or 0
        if indexed >= head - 20:
            break
        killed = terminate_daemon_backends(database)
        if killed:
            rounds.append((indexed, killed))
            last_kill = time.monotonic()
        time.sleep(0.6)
    assert len(rounds) >= 3, f"only {len(rounds)} kill rounds landed mid-backfill: {rounds}"

    proxy.clear()
    daemon.wait_indexed(head, timeout=30)
    took = time.monotonic() - last_kill
    failed = daemon.logged("step_failed")
    lost = daemon.logged("leadership_lost")
    assert failed, "the killed engine connection went unnoticed: no step_failed logged"
    assert lost, "the killed lock connection went unnoticed: no leadership_lost logged"
    assert len(daemon.logged("leader_acquired")) == len(lost) + 1
    assert daemon.metric("audifi_indexer_leader") == 1
    wait_for(lambda: daemon.http("/readyz")[0] == 200, 10, "/readyz 200", 0.1, daemon.tail)
    world.assert_complete()
    report(
        f"pg_terminate_backend: {len(rounds)} rounds ({sum(k for _, k in rounds)} backends) at "
        f"blocks {[int(b) for b, _ in rounds]} of {head}; {len(failed)} step_failed, "
        f"{len(lost)} leadership losses, each re-acquired; head reached {took:.1f}s after the "
        "last kill"
    )


@pytest.mark.slow
def test_postgres_restart_mid_backfill(
    make_world: MakeWorld,
    private_postgres: LocalPostgres,
    rpc_proxy_factory: Callable[..., RpcProxy],
    daemons: StartDaemon,
) -> None:
    world = make_world(private_postgres.url)
    world.activity(masters=2, mints=12, dividends=4, empty=150)
    head = world.head()
    proxy = rpc_proxy_factory(world.node.url).delay(0.01)
    daemon = daemons(world.env(rpc_url=proxy.url, max_block_range=5), "pgrestart")
    daemon.wait_indexed(30, timeout=15)
    at_stop = daemon.metric("audifi_indexer_indexed_block") or 0
    assert at_stop < head - 20, "the backfill finished before the restart: make it longer"

    private_postgres.stop()
    down_at = time.monotonic()
    unready: dict[str, Any] = {}

    def unready_seen() -> bool:
        daemon.check_alive()
        status, body = daemon.http("/readyz")
        if status == 503 and any("database unreachable" in r for r in body.get("reasons", [])):
            unready.update(body)
            return True
        return False

    wait_for(unready_seen, 10, "/readyz 503 'database unreachable'", 0.1, daemon.tail)
    unready_after = time.monotonic() - down_at
    daemon.wait_logged("database_unavailable", timeout=10)
    assert daemon.http("/healthz")[0] == 200, "liveness must hold while the database is down"
    time.sleep(max(0.0, 2.5 - (time.monotonic() - down_at)))
    stalled = daemon.metric("audifi_indexer_indexed_block") or 0
    assert stalled < head

    private_postgres.start()
    up_at = time.monotonic()
    downtime = up_at - down_at
    resumed = wait_for(
        lambda: (daemon.metric("audifi_indexer_indexed_block") or 0) > stalled,
        20,
        "progress after PostgreSQL came back",
        0.1,
        daemon.tail,
    )
    assert resumed
    resumed_after = time.monotonic() - up_at
    proxy.clear()
    daemon.wait_indexed(head, timeout=30)
    wait_for(lambda: daemon.http("/readyz")[0] == 200, 10, "/readyz 200 again", 0.1, daemon.tail)
    world.assert_complete()
    report(
        f"private PostgreSQL down {downtime:.1f}s at block {int(at_stop)}/{head}: /readyz 503 "
        f"after {unready_after:.2f}s ({unready['reasons'][0][:60]}…), "
        f"{len(daemon.logged('database_unavailable'))} database_unavailable lines; progress "
        f"{resumed_after:.1f}s after the restart"
    )


@pytest.mark.slow
def test_daemon_started_before_postgres_waits_for_it(
    make_world: MakeWorld, private_postgres: LocalPostgres, daemons: StartDaemon
) -> None:
    """PostgreSQL down when the daemon starts: it stays up, unready, and indexes once the
    server answers (SPEC §4.5); a wrong database name is a clear error instead (test_cli)."""
    world = make_world(private_postgres.url)
    world.activity(masters=2, mints=6, dividends=2)
    private_postgres.stop()
    daemon = daemons(world.env(), "pgfirst")
    daemon.wait_logged("database_unavailable", timeout=15)
    status, body = daemon.http("/readyz")
    assert status == 503, body
    assert daemon.http("/healthz")[0] == 200, "liveness must hold while the database is down"
    time.sleep(1.0)
    daemon.check_alive()
    private_postgres.start()
    daemon.wait_indexed(world.head(), timeout=30)
    wait_for(lambda: daemon.http("/readyz")[0] == 200, 10, "/readyz 200", 0.1, daemon.tail)
    world.assert_complete()


def test_failover_from_an_inconsistent_endpoint(
    world: World, rpc_proxy_factory: Callable[..., RpcProxy], daemons: StartDaemon
) -> None:
    """AUDIFI_RPC_URL lists two endpoints; the first answers every eth_getLogs with block
    hashes that differ from its headers. The daemon moves to the second and completes."""
    world.activity(masters=2, mints=8, dividends=3)
    liar = rpc_proxy_factory(world.node.url).rewrite_log_block_hash(once=False)
    honest = rpc_proxy_factory(world.node.url)
    daemon = daemons(world.env(rpc_url=f"{liar.url},{honest.url}"), "failover")
    daemon.wait_indexed(world.head(), timeout=30)
    world.assert_complete()
    assert daemon.logged("rpc_endpoint_avoided"), "no switch away from the lying endpoint"


def test_pending_gauge_follows_a_backfill(
    world: World, rpc_proxy_factory: Callable[..., RpcProxy], daemons: StartDaemon
) -> None:
    """An event waiting for its master's row shows in audifi_indexer_pending_events while the
    daemon is still catching up, not only once it reached the head (SPEC §3)."""
    world.activity(masters=1, mints=3, dividends=0)
    unknown = uuid.uuid4()  # no masters row: the deposit waits
    send_tx(world.w3, world.contracts.distributor.functions.record(unknown.bytes, 5))
    world.node.mine(150)
    head = world.head()
    proxy = rpc_proxy_factory(world.node.url).delay(0.02)
    daemon = daemons(world.env(rpc_url=proxy.url, max_block_range=3), "pending")
    seen: list[tuple[float, float]] = []

    def pending_seen_mid_backfill() -> bool:
        daemon.check_alive()
        indexed = daemon.metric("audifi_indexer_indexed_block") or 0
        pending = daemon.metric("audifi_indexer_pending_events") or 0
        if indexed >= head:
            raise AssertionError(f"caught up before the gauge moved: {seen[-5:]}")
        seen.append((indexed, pending))
        return pending == 1

    wait_for(pending_seen_mid_backfill, 30, "pending gauge at 1 mid-backfill", 0.05, daemon.tail)
    proxy.clear()
    daemon.wait_indexed(head, timeout=30)
    with world.db() as conn:
        conn.execute(
            "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Late')",
            (unknown, world.artist),
        )
    wait_for(
        lambda: daemon.metric("audifi_indexer_pending_events") == 0,
        10, "pending gauge back at 0 once the row exists", 0.1, daemon.tail,
    )  # fmt: skip


def test_hot_standby_takes_over_after_kill_9(world: World, daemons: StartDaemon) -> None:
    world.activity(masters=2, mints=10, dividends=3)
    a = daemons(world.env(), "leader")
    a.wait_indexed(world.head(), timeout=20)
    wait_for(lambda: a.http("/readyz")[0] == 200, 10, "A ready", 0.1, a.tail)

    b = daemons(world.env(), "standby")
    b.wait_logged("standby", timeout=15)
    status, body = b.http("/readyz")
    assert status == 503, body
    assert any(r.startswith("standby") for r in body["reasons"]), body
    assert body["role"] == "standby"
    assert b.http("/healthz")[0] == 200, "a standby is alive"
    assert b.metric("audifi_indexer_leader") == 0
    assert a.metric("audifi_indexer_leader") == 1
    assert not b.logged("leader_acquired")

    world.activity(masters=1, mints=8, dividends=2)  # A indexes this, B keeps waiting
    a.wait_indexed(world.head(), timeout=20)
    assert not b.logged("leader_acquired")
    assert not b.logged("batch_committed")

    a.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.wait_exit(timeout=10)
    wait_for(lambda: b.metric("audifi_indexer_leader") == 1, 10, "B to lead", 0.02, b.tail)
    takeover = time.monotonic() - killed_at
    b.wait_logged("leader_acquired", timeout=2)
    assert takeover < 5, f"take-over took {takeover:.1f}s"

    world.activity(masters=1, mints=8, dividends=2, empty=5)
    b.wait_indexed(world.head(), timeout=20)
    wait_for(lambda: b.http("/readyz")[0] == 200, 10, "B ready", 0.1, b.tail)
    assert b.logged("batch_committed"), "B never wrote after taking over"
    world.assert_complete()
    report(f"fail-over: standby B led {takeover:.2f}s after kill -9 of leader A")


@pytest.mark.slow
def test_rpc_faults_through_the_proxy(
    world: World, rpc_proxy_factory: Callable[..., RpcProxy], daemons: StartDaemon
) -> None:
    world.activity(masters=2, mints=12, dividends=4, empty=60)
    proxy = rpc_proxy_factory(world.node.url)
    # At start-up: a burst of 429s (Retry-After 1 s), then of 503s, and two answers slower than
    # the client's timeout.
    proxy.rate_limit_next(3, retry_after=1).fail_next(4, status=503).delay(2.0, n=2)
    daemon = daemons(world.env(rpc_url=proxy.url, rpc_timeout=1, max_block_range=4), "rpc")
    started = time.monotonic()
    daemon.wait_indexed(20, timeout=30)

    # Mid-backfill: more of each, and a JSON-RPC internal error.
    proxy.rate_limit_next(2, retry_after=1).fail_next(3, status=502).delay(2.0, n=1)
    proxy.error_next(2, -32603, "internal error (injected)")
    world.activity(masters=1, mints=10, dividends=2, empty=10)
    took = daemon.wait_indexed(world.head(), timeout=40)
    elapsed = time.monotonic() - started

    outcomes: dict[str, float] = {}
    for (name, labels), value in daemon.samples().items():
        if name == "audifi_indexer_rpc_requests_total":
            outcome = dict(labels)["outcome"]
            outcomes[outcome] = outcomes.get(outcome, 0) + value
    for outcome in ("rate_limited", "http_error", "timeout"):
        assert outcomes.get(outcome, 0) > 0, f"no {outcome!r} outcome counted: {outcomes}"
    assert outcomes.get("ok", 0) > 0
    assert daemon.logged("rpc_retry"), "retries are logged"
    assert all("endpoint" in line for line in daemon.logged("rpc_retry"))
    world.assert_complete()
    non_ok = {k: int(v) for k, v in sorted(outcomes.items()) if k != "ok"}
    report(
        f"RPC faults: outcomes {non_ok} beside {int(outcomes['ok'])} ok; "
        f"{len(daemon.logged('rpc_retry'))} rpc_retry, {len(daemon.logged('step_failed'))} "
        f"step_failed lines; caught up {elapsed:.1f}s after start ({took:.1f}s after the "
        "mid-run faults)"
    )


def test_sigterm_mid_backfill_exits_cleanly_and_resumes(
    world: World, rpc_proxy_factory: Callable[..., RpcProxy], daemons: StartDaemon
) -> None:
    world.activity(masters=3, mints=10, dividends=5, empty=200)
    head = world.head()
    proxy = rpc_proxy_factory(world.node.url).delay(0.01)
    first = daemons(world.env(rpc_url=proxy.url, max_block_range=3), "first")
    first.wait_indexed(25, timeout=15)

    first.signal(signal.SIGTERM)
    sent = time.monotonic()
    code = first.wait_exit(timeout=10)
    exit_seconds = time.monotonic() - sent
    assert code == 0, first.tail()
    assert exit_seconds < 5, f"SIGTERM took {exit_seconds:.1f}s"
    assert first.logged("shutdown_requested") and first.logged("stopped")
    block, block_hash = world.cursor()
    assert block is not None and block < head - 10, "stopped too late to be mid-backfill"
    assert block_hash == world.w3.eth.get_block(block)["hash"].to_0x_hex()
    at_stop = world.assert_event_log(block)  # exactly what was committed, nothing partial

    second = daemons(world.env(max_block_range=3), "second")
    took = second.wait_indexed(head, timeout=30)
    resumed_from = second.logged("batch_committed")[0]["from_block"]
    assert resumed_from == block + 1, f"resumed at {resumed_from}, cursor was {block}"
    stored = world.assert_complete()
    assert stored[: len(at_stop)] == at_stop
    report(
        f"SIGTERM at block {block}/{head}: exit 0 in {exit_seconds:.2f}s with "
        f"{len(at_stop)} events committed; restart resumed at {resumed_from} and caught up in "
        f"{took:.1f}s"
    )


def test_metrics_health_and_stored_halt(world: World, daemons: StartDaemon) -> None:
    if not Path(PROMTOOL).exists() and shutil.which("promtool") is None:
        pytest.fail(
            f"promtool is not installed ({PROMTOOL}): it checks the metrics exposition (SPEC §5). "
            "Install it with `apt-get install -y prometheus` (Debian/Ubuntu)."
        )
    promtool = PROMTOOL if Path(PROMTOOL).exists() else str(shutil.which("promtool"))
    world.activity(masters=1, mints=5, dividends=2)
    daemon = daemons(world.env(), "metrics")
    daemon.wait_indexed(world.head(), timeout=20)
    wait_for(lambda: daemon.http("/readyz")[0] == 200, 10, "/readyz 200", 0.1, daemon.tail)

    status, body = daemon.http("/healthz")
    assert status == 200 and body["status"] == "ok", body
    status, body = daemon.http("/readyz")
    assert status == 200 and body["status"] == "ready" and body["lag_blocks"] == 0, body

    text = daemon.metrics_text()
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (done.stdout + done.stderr).decode().strip()
    assert done.returncode == 0 and not problems, f"promtool check metrics:\n{problems}"
    samples = daemon.samples()
    names = {name for name, _ in samples}
    assert not PINNED_SAMPLES - names, f"missing metrics: {sorted(PINNED_SAMPLES - names)}"
    assert "# TYPE audifi_indexer_reorg_depth histogram" in text
    assert all(n.startswith("audifi_indexer_") for n in names)
    events = {dict(labels)["event"]: v for (n, labels), v in samples.items()
              if n == "audifi_indexer_events_total"}  # fmt: skip
    assert set(events) == set(EVENT_TYPES)
    assert events["Transfer"] == world.mints
    assert events["DividendDeposited"] == world.dividends
    assert events["MasterRegistered"] == len(world.masters)
    assert daemon.metric("audifi_indexer_indexed_block") == world.head()
    assert daemon.metric("audifi_indexer_halted") == 0
    assert daemon.metric("audifi_indexer_leader") == 1
    # every committed batch is timed twice: the whole step and its write transaction
    batches = daemon.metric("audifi_indexer_batch_duration_seconds_count") or 0
    assert batches > 0
    assert daemon.metric("audifi_indexer_db_write_duration_seconds_count") == batches
    assert (
        0
        < (daemon.metric("audifi_indexer_db_write_duration_seconds_sum") or 0)
        <= (daemon.metric("audifi_indexer_batch_duration_seconds_sum") or 0)
    )
    rpc = [dict(labels) for n, labels in samples if n == "audifi_indexer_rpc_requests_total"]
    assert rpc and all({"method", "endpoint", "outcome"} <= set(r) for r in rpc)

    reason = "operator test halt"
    with world.db() as conn:
        conn.execute(
            "UPDATE indexer_state SET halted = true, halt_reason = %s, halted_at = now() "
            "WHERE chain_id = %s",
            (reason, world.chain_id),
        )
    halted_at = time.monotonic()
    seen: dict[str, Any] = {}

    def unready() -> bool:
        status, body = daemon.http("/readyz")
        if status == 503:
            seen.update(body)
        return status == 503

    wait_for(unready, 5, "/readyz 503 after the halt", 0.02, daemon.tail)
    latency = time.monotonic() - halted_at
    assert seen["halted"] is True and seen["status"] == "unready", seen
    assert f"halted: {reason}" in seen["reasons"], seen
    wait_for(lambda: daemon.metric("audifi_indexer_halted") == 1, 5, "halted gauge 1")
    assert daemon.http("/healthz")[0] == 200, "a halted daemon is alive (restarting won't help)"
    assert latency < 2.0, f"/readyz noticed the halt after {latency:.2f}s"

    cli = [sys.executable, "-m", "indexer"]
    env = world.env()
    status_json = subprocess.run(
        [*cli, "status", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert status_json.returncode == 0, status_json.stderr
    assert json.loads(status_json.stdout)["halted"] is True

    # Restarted while halted, it stays halted and still says where its cursor stands.
    block, _ = world.cursor()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=15) == 0
    daemon = daemons(env, "metrics-restarted")
    wait_for(lambda: daemon.metric("audifi_indexer_halted") == 1, 10, "halted gauge 1", 0.05)
    status, body = daemon.http("/readyz")
    assert status == 503 and body["halted"] is True, body
    assert body["indexed_block"] == block, body
    assert daemon.metric("audifi_indexer_indexed_block") == block
    time.sleep(2.5 * UPKEEP_TICK)  # a halted process writes nothing: no schema upkeep either
    assert not daemon.logged("materialized_view_refreshed"), daemon.tail()

    # The documented recovery (docs/operations.md): rewind clears the stored halt.
    block, _ = world.cursor()
    rewind = subprocess.run(
        [*cli, "rewind", "--to-block", str(block)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rewind.returncode == 0, rewind.stdout + rewind.stderr
    wait_for(lambda: daemon.http("/readyz")[0] == 200, 5, "/readyz 200 after rewind", 0.05)
    assert daemon.metric("audifi_indexer_halted") == 0
    wait_for(lambda: daemon.logged("materialized_view_refreshed"), 10, "upkeep after the halt")
    world.assert_complete()
    report(f"halt: /readyz 503 {latency:.2f}s after the stored halt; /metrics passes promtool "
           f"with {len(samples)} samples")  # fmt: skip


def test_blocked_upkeep_holds_up_no_block_and_a_stop_cancels_it(
    world: World, daemons: StartDaemon
) -> None:
    """Schema upkeep runs beside the indexing loop: while it waits (here on a lock another
    session holds on ``analytics_events``; in production, a refresh's long read of it), new
    blocks are still indexed, and SIGTERM cancels the statement and exits 0 at once."""
    world.activity(masters=1, mints=3)
    with world.db() as blocker, blocker.transaction():
        blocker.execute("LOCK TABLE analytics_events IN ACCESS EXCLUSIVE MODE")
        daemon = daemons(world.env(), "upkeep")
        daemon.wait_indexed(world.head(), timeout=20)

        def upkeep_waiting() -> bool:
            with world.db() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND backend_type = 'client backend' AND query NOT ILIKE 'LOCK TABLE%%'"
                ).fetchone()
            return row is not None and row[0] > 0

        wait_for(upkeep_waiting, 20, "upkeep waiting on the lock", 0.1, daemon.tail)
        world.activity(masters=1, mints=4, dividends=1)
        daemon.wait_indexed(world.head(), timeout=20)  # not held up by the waiting refresh

        daemon.signal(signal.SIGTERM)
        sent = time.monotonic()
        assert daemon.wait_exit(timeout=15) == 0, daemon.tail()
        assert time.monotonic() - sent < 5, daemon.tail()
    assert daemon.logged("upkeep_cancelled"), daemon.tail()
    assert not upkeep_waiting()
    world.assert_complete()


def test_failed_steps_do_not_make_the_next_poll_relink_every_share(
    world: World, rpc_proxy_factory: Callable[..., RpcProxy], daemons: StartDaemon
) -> None:
    """A failed step keeps the projector's re-link bookkeeping: on a flaky node, each fault
    must not cost a re-link of every share (seconds per million shares) — only the daemon's
    start does. Owners still follow a wallet linked after the faults."""
    world.activity(masters=1, mints=6)
    proxy = rpc_proxy_factory(world.node.url)
    daemon = daemons(world.env(rpc_url=proxy.url), "flaky")
    daemon.wait_indexed(world.head(), timeout=20)
    for _ in range(3):
        failed = len(daemon.logged("step_failed"))
        proxy.rewrite_log_block_hash(once=True)
        world.activity(masters=1, mints=2)
        wait_for(lambda n=failed: len(daemon.logged("step_failed")) > n, 20, "a failed step",
                 0.1, daemon.tail)  # fmt: skip
        daemon.wait_indexed(world.head(), timeout=20)
    holder = world.node.accounts[1]
    with world.db() as conn:
        user = uuid.uuid4()
        conn.execute(
            "INSERT INTO users (id, email, wallet_address) VALUES (%s, %s, %s)",
            (user, f"{user}@example.org", holder),
        )

        def linked() -> bool:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE owner_id = %s), count(*) FROM nft_shares",
                (user,),
            ).fetchone()
            return row is not None and row[0] == row[1] == world.mints

        wait_for(linked, 10, "the holder's shares linked", 0.1, daemon.tail)
    relinked_all = daemon.logged("owners_relinked_all")
    assert [line["reason"] for line in relinked_all] == ["unknown_state"], relinked_all
    world.assert_complete()
