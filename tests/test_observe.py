"""Metrics and health endpoints (indexer.observe): promtool-clean exposition, pinned names,
/healthz and /readyz in every state over real HTTP, and the RPC observer on a real client."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from indexer.chain.errors import TransientRpcError
from indexer.chain.rpc import JsonRpcClient
from indexer.observe import HealthState, Metrics, MetricsServer, serve_http
from indexer.sync import Outcome, StepResult
from tests.fixtures.rpc_proxy import RpcProxy

PINNED_SAMPLES = {
    "audifi_indexer_head_block",
    "audifi_indexer_indexed_block",
    "audifi_indexer_lag_blocks",
    "audifi_indexer_lag_seconds",
    "audifi_indexer_events_total",
    "audifi_indexer_ignored_logs_total",
    "audifi_indexer_dead_letters_total",
    "audifi_indexer_pending_events",
    "audifi_indexer_reorgs_total",
    "audifi_indexer_reorg_depth_bucket",
    "audifi_indexer_reorg_depth_count",
    "audifi_indexer_rpc_requests_total",
    "audifi_indexer_rpc_latency_seconds_bucket",
    "audifi_indexer_batch_duration_seconds_bucket",
    "audifi_indexer_db_write_duration_seconds_bucket",
    "audifi_indexer_outbox_backlog",
    "audifi_indexer_outbox_published_total",
    "audifi_indexer_redis_errors_total",
    "audifi_indexer_halted",
    "audifi_indexer_leader",
    "audifi_indexer_step_errors_total",
    "audifi_indexer_build_info",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progressed(head: int, to_block: int, **kw: Any) -> StepResult:
    return StepResult(
        Outcome.PROGRESSED, head=head, from_block=max(0, to_block - 9), to_block=to_block, **kw
    )


def _busy_metrics() -> Metrics:
    """Metrics with every family carrying data."""
    m = Metrics(version="1.2.3")
    m.observe_step(
        _progressed(
            120,
            100,
            events=5,
            event_counts={"Transfer": 3, "MasterRegistered": 2},
            ignored=4,
            dead_letters=1,
        ),
        0.3,
    )
    m.observe_step(
        StepResult(Outcome.REORG, head=120, reorg_depth=5, ancestor=95, to_block=95), 0.05
    )
    m.rpc_observer("eth_getLogs", "http://127.0.0.1:8545", "ok", 0.02)
    m.rpc_observer("eth_blockNumber", "http://127.0.0.1:8545", "timeout", 10.0)
    m.set_leader(True)
    m.set_pending(3)
    m.set_outbox_backlog(7)
    m.count_published(11)
    m.count_redis_error()
    m.count_step_error("TransientRpcError")
    m.observe_db_write(0.004)
    return m


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(m: Metrics, name: str, **labels: str) -> float:
    return _samples(m)[(name, tuple(sorted(labels.items())))]


# --------------------------------------------------------------------------------- metrics


def test_metrics_pass_promtool_check() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: it checks the metrics exposition (SPEC §5). "
            "Install it with `apt-get install -y prometheus` (Debian/Ubuntu)."
        )
    for metrics in (Metrics(), _busy_metrics()):
        done = subprocess.run(
            [promtool, "check", "metrics"],
            input=metrics.render(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (done.stdout + done.stderr).decode()
        assert not (done.stdout + done.stderr).strip(), (done.stdout + done.stderr).decode()


def test_metric_names_are_pinned() -> None:
    names = {name for name, _ in _samples(_busy_metrics())}
    missing = PINNED_SAMPLES - names
    assert not missing, f"missing metrics: {sorted(missing)}"
    assert all(n.startswith("audifi_indexer_") for n in names)
    reorg_buckets = {
        dict(labels)["le"]
        for name, labels in _samples(_busy_metrics())
        if name == "audifi_indexer_reorg_depth_bucket"
    }
    assert reorg_buckets == {"1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "+Inf"}


def test_several_registries_coexist() -> None:
    a, b = Metrics(), Metrics()
    a.set_leader(True)
    assert _value(a, "audifi_indexer_leader") == 1
    assert _value(b, "audifi_indexer_leader") == 0


def test_observe_step_updates_chain_metrics() -> None:
    clock = FakeClock()
    m = Metrics(version="9.9.9", clock=clock)
    assert _value(m, "audifi_indexer_build_info", version="9.9.9") == 1
    assert _value(m, "audifi_indexer_events_total", event="DividendDeposited") == 0

    clock.now += 5
    m.observe_step(
        _progressed(150, 100, events=4, event_counts={"Transfer": 4}, ignored=2, dead_letters=1),
        0.25,
    )
    assert _value(m, "audifi_indexer_head_block") == 150
    assert _value(m, "audifi_indexer_indexed_block") == 100
    assert _value(m, "audifi_indexer_lag_blocks") == 50
    assert _value(m, "audifi_indexer_lag_seconds") == 5
    assert _value(m, "audifi_indexer_events_total", event="Transfer") == 4
    assert _value(m, "audifi_indexer_ignored_logs_total") == 2
    assert _value(m, "audifi_indexer_dead_letters_total") == 1
    assert _value(m, "audifi_indexer_batch_duration_seconds_count") == 1

    m.observe_step(
        StepResult(Outcome.REORG, head=150, reorg_depth=3, ancestor=97, to_block=97), 0.1
    )
    assert _value(m, "audifi_indexer_reorgs_total") == 1
    assert _value(m, "audifi_indexer_reorg_depth_bucket", le="2.0") == 0
    assert _value(m, "audifi_indexer_reorg_depth_bucket", le="4.0") == 1
    assert _value(m, "audifi_indexer_indexed_block") == 97

    m.observe_step(StepResult(Outcome.PROGRESSED, head=150, to_block=150), 0.1)
    m.observe_step(StepResult(Outcome.CAUGHT_UP, head=150, to_block=150), 0.01)
    assert _value(m, "audifi_indexer_lag_blocks") == 0
    assert _value(m, "audifi_indexer_lag_seconds") == 0
    assert _value(m, "audifi_indexer_batch_duration_seconds_count") == 3  # not CAUGHT_UP
    assert _value(m, "audifi_indexer_db_write_duration_seconds_count") == 3

    m.observe_step(StepResult(Outcome.HALTED, reason="reorg deeper than the window"), 0.0)
    assert _value(m, "audifi_indexer_halted") == 1
    m.observe_step(StepResult(Outcome.CAUGHT_UP, head=151, to_block=150), 0.0)
    assert _value(m, "audifi_indexer_halted") == 0
    m.set_halted(True)
    assert _value(m, "audifi_indexer_halted") == 1


# --------------------------------------------------------------------------------- health


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthState:
    return HealthState(poll_interval=2.0, ready_max_lag_blocks=10, clock=clock)


@pytest.fixture
def server(health: HealthState) -> Iterator[MetricsServer]:
    srv = serve_http("127.0.0.1", 0, Metrics(), health)
    yield srv
    srv.close()


def _get(server: MetricsServer, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _json(server: MetricsServer, path: str) -> tuple[int, dict[str, Any]]:
    status, ctype, body = _get(server, path)
    assert ctype == "application/json"
    data = json.loads(body)
    assert isinstance(data, dict)
    return status, data


def _ready_leader(health: HealthState, head: int = 100, indexed: int = 100) -> None:
    health.set_leader(True)
    health.observe_step(StepResult(Outcome.CAUGHT_UP, head=head, to_block=indexed))


def test_server_binds_free_port_and_serves_metrics(server: MetricsServer) -> None:
    assert server.port > 0
    status, ctype, body = _get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert b"audifi_indexer_build_info" in body
    assert _get(server, "/nope")[0] == 404


def test_health_fresh_leader_is_healthy_and_ready(
    server: MetricsServer, health: HealthState
) -> None:
    _ready_leader(health)
    status, body = _json(server, "/healthz")
    assert (status, body["status"], body["role"]) == (200, "ok", "leader")
    status, body = _json(server, "/readyz")
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["lag_blocks"] == 0


def test_health_starting_is_healthy_not_ready(server: MetricsServer, health: HealthState) -> None:
    health.set_leader(True)
    assert _json(server, "/healthz")[0] == 200
    status, body = _json(server, "/readyz")
    assert status == 503
    assert body["reasons"] == ["starting: no step completed yet"]


def test_health_stale_heartbeat(
    server: MetricsServer, health: HealthState, clock: FakeClock
) -> None:
    _ready_leader(health)
    assert health.stale_after == 30.0  # max(30 s, 5 × 2 s)
    clock.now += 29
    assert _json(server, "/healthz")[0] == 200
    clock.now += 2
    status, body = _json(server, "/healthz")
    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["reasons"][0].startswith("loop heartbeat 31.0s old")
    status, body = _json(server, "/readyz")
    assert status == 503
    assert any(r.startswith("loop heartbeat") for r in body["reasons"])
    health.beat()
    assert _json(server, "/healthz")[0] == 200
    assert _json(server, "/readyz")[0] == 200


def test_stale_limit_follows_poll_interval(clock: FakeClock) -> None:
    slow = HealthState(poll_interval=20.0, clock=clock)
    assert slow.stale_after == 100.0
    clock.now += 99
    assert slow.healthz().status_code == 200
    clock.now += 2
    assert slow.healthz().status_code == 503


def test_health_halted(server: MetricsServer, health: HealthState) -> None:
    _ready_leader(health)
    health.observe_step(StepResult(Outcome.HALTED, reason="reorg deeper than the window"))
    assert _json(server, "/healthz")[0] == 200  # up, but not ready
    status, body = _json(server, "/readyz")
    assert status == 503
    assert body == {
        "status": "unready",
        "reasons": ["halted: reorg deeper than the window"],
        "role": "leader",
        "head_block": 100,
        "indexed_block": 100,
        "lag_blocks": 0,
        "halted": True,
    }
    # a halt found outside a step (database built for another chain)
    fresh = HealthState(ready_max_lag_blocks=10)
    fresh.set_leader(True)
    fresh.set_halted(True, "this database was built for chain 1")
    report = fresh.readyz()
    assert report.status_code == 503
    assert report.body["reasons"] == ["halted: this database was built for chain 1"]


def test_health_lag_too_high(server: MetricsServer, health: HealthState) -> None:
    _ready_leader(health, head=110, indexed=100)
    assert _json(server, "/readyz")[0] == 200  # lag 10 == limit
    health.observe_step(_progressed(111, 100))
    status, body = _json(server, "/readyz")
    assert status == 503
    assert body["reasons"] == ["lag 11 blocks exceeds 10"]
    assert body["lag_blocks"] == 11
    assert _json(server, "/healthz")[0] == 200


def test_confirmations_are_not_lag(clock: FakeClock) -> None:
    health = HealthState(ready_max_lag_blocks=10, confirmations=12, clock=clock)
    health.set_leader(True)
    health.observe_step(StepResult(Outcome.CAUGHT_UP, head=122, to_block=100))
    assert health.readyz().status_code == 200
    health.observe_step(StepResult(Outcome.CAUGHT_UP, head=123, to_block=100))
    assert health.readyz().body["reasons"] == ["lag 23 blocks exceeds 10 (+12 confirmations)"]


def test_health_standby_is_healthy_not_ready(server: MetricsServer, health: HealthState) -> None:
    health.set_leader(False)
    health.beat()
    status, body = _json(server, "/healthz")
    assert (status, body["role"]) == (200, "standby")
    status, body = _json(server, "/readyz")
    assert status == 503
    assert body["reasons"][0] == "standby: another instance holds the single-writer lock"
    assert body["role"] == "standby"


def test_standby_for_a_lost_database_does_not_blame_another_instance(
    server: MetricsServer, health: HealthState
) -> None:
    """Found by QA: with the database down the lock is lost and cannot be taken again, and
    /readyz said another instance held it while none ran."""
    health.set_leader(False)
    health.set_database(False, "connection refused")
    health.beat()
    status, body = _json(server, "/readyz")
    assert status == 503
    assert body["reasons"] == [
        "database unreachable: connection refused",
        "standby: the single-writer lock waits for the database",
        "starting: no step completed yet",
    ]


def test_health_database_unreachable(server: MetricsServer, health: HealthState) -> None:
    _ready_leader(health)
    health.set_database(False, "connection refused")
    assert _json(server, "/healthz")[0] == 200
    status, body = _json(server, "/readyz")
    assert status == 503
    assert body["reasons"] == ["database unreachable: connection refused"]
    health.set_database(True)
    assert _json(server, "/readyz")[0] == 200


def test_head_request(server: MetricsServer, health: HealthState) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
        assert answer.read() == b""


def test_sync_from_daemon_status(clock: FakeClock) -> None:
    from indexer.daemon import DaemonStatus

    health = HealthState(ready_max_lag_blocks=5, clock=clock)
    status = DaemonStatus(chain_id=1, leader=True, head=10, indexed_block=8)
    clock.now += 100
    health.sync_from(status)
    assert health.healthz().status_code == 200
    assert health.readyz().status_code == 200
    status.halted, status.halt_reason = True, "deep reorg"
    health.sync_from(status)
    assert health.readyz().body["reasons"] == ["halted: deep reorg"]


# --------------------------------------------------------------------------------- RPC


def test_rpc_observer_counts_by_method_endpoint_outcome(rpc_proxy: RpcProxy) -> None:
    metrics = Metrics()
    secret = "s3cretPassw0rd"
    url = rpc_proxy.url.replace("http://", f"http://indexer:{secret}@") + "/"
    client = JsonRpcClient(url, timeout=5, observer=metrics.rpc_observer)
    try:
        client.call("eth_chainId", [])
        client.call("eth_blockNumber", [])
        client.call("eth_blockNumber", [])
        rpc_proxy.fail_next(1, status=503)
        with pytest.raises(TransientRpcError):
            client.call("eth_blockNumber", [])
        rpc_proxy.rate_limit_next(1, retry_after=1)
        with pytest.raises(TransientRpcError):
            client.call("eth_chainId", [])
    finally:
        client.close()
    # a caller that hands over an unmasked URL still gets a masked label
    metrics.rpc_observer(
        "eth_call", f"https://user:{secret}@node.example/v3/abcdef0123456789", "ok", 0.1
    )

    text = metrics.render().decode()
    assert secret not in text
    assert "abcdef0123456789" not in text
    endpoint = client.endpoint
    assert "***" in endpoint

    def requests(method: str, outcome: str) -> float:
        return _value(
            metrics,
            "audifi_indexer_rpc_requests_total",
            method=method,
            endpoint=endpoint,
            outcome=outcome,
        )

    assert requests("eth_chainId", "ok") == 1
    assert requests("eth_blockNumber", "ok") == 2
    assert requests("eth_blockNumber", "http_error") == 1
    assert requests("eth_chainId", "rate_limited") == 1
    assert (
        _value(metrics, "audifi_indexer_rpc_latency_seconds_count", method="eth_blockNumber") == 3
    )
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for value in sample.labels.values():
                assert secret not in value
