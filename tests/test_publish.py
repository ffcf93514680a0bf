"""The outbox → Redis Stream publisher (indexer.publish) on real PostgreSQL and Redis.

Outbox rows are written by the engine's own functions (store.write_batch, store.rollback_to),
so the payloads are exactly what the daemon queues. Redis outages use a PRIVATE redis-server
on a free loopback port, stopped and restarted by its pid; the machine's Redis is only used
through per-test stream keys.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import redis
import structlog

from indexer import store
from indexer.chain.types import BlockHeader
from indexer.observe import Metrics
from indexer.publish import OutboxPublisher, pending_ids, stream_fields
from indexer.reorg import BlockRef
from indexer.sync import connect
from tests.fixtures.redis_server import PrivateRedis

CHAIN = 31337
ROOT = Path(__file__).resolve().parents[1]
EVENT_FIELDS = {"id", "type", "chain_id", "block_number", "block_hash", "tx_hash", "log_index"}


# --------------------------------------------------------------------------------- helpers


def _hash(block: int, fork: str = "a") -> str:
    return "0x" + f"{fork}{block:x}".rjust(64, "0")


def _header(block: int, fork: str = "a") -> BlockHeader:
    return BlockHeader(block, _hash(block, fork), _hash(block - 1, "a"), 1_700_000_000 + block)


class Chain:
    """Commits batches and rollbacks through the engine's store functions."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        with conn.transaction():
            store.init_state(conn, CHAIN, 0)
        self.queued: list[str] = []  # message ids in outbox order

    def commit(self, block: int, count: int, fork: str = "a") -> list[store.EventRow]:
        header = _header(block, fork)
        events = [
            store.EventRow(
                block_number=block,
                block_hash=header.hash,
                block_time=dt.datetime.fromtimestamp(header.timestamp, tz=dt.UTC),
                tx_hash="0x" + f"{fork}{block:x}t{i}".encode().hex().rjust(64, "0")[:64],
                tx_index=i,
                log_index=i * 2,
                address="0x" + "ab" * 20,
                event_type="Transfer" if i % 2 == 0 else "DividendDeposited",
                args={
                    "from": "0x" + "00" * 20,
                    "to": "0x" + f"{i:040x}",
                    "tokenId": str(2**256 - 1 - i),
                },
            )
            for i in range(count)
        ]
        with self.conn.transaction():
            store.write_batch(
                self.conn,
                CHAIN,
                store.Batch(head=header, events=events, window=[header]),
                keep_blocks=64,
                outbox=True,
            )
        self.queued += [e.message_id for e in events]
        return events

    def rollback(self, ancestor: int, abandoned_block: int) -> str:
        ref = BlockRef(ancestor, _hash(ancestor), _hash(ancestor - 1))
        with self.conn.transaction():
            store.rollback_to(
                self.conn, CHAIN, ref, abandoned_hash=_hash(abandoned_block), outbox=True
            )
        message_id = f"rollback:{_hash(abandoned_block)}:{ref.hash}"
        self.queued.append(message_id)
        return message_id


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    c = connect(database_url)
    yield c
    c.close()


@pytest.fixture
def chain(conn: psycopg.Connection[Any]) -> Chain:
    return Chain(conn)


def _entries(client: redis.Redis, key: str) -> list[dict[str, str]]:
    answer: Any = client.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _entry_id, fields in answer]


def _published_flags(conn: psycopg.Connection[Any]) -> list[tuple[str, bool]]:
    rows = conn.execute(
        "SELECT message_id, published_at IS NOT NULL FROM indexer_outbox ORDER BY id"
    ).fetchall()
    return [(str(r[0]), bool(r[1])) for r in rows]


def _gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --------------------------------------------------------------------------------- tests


def test_publishes_every_field_in_order_and_marks_rows(
    database_url: str,
    redis_url: str,
    redis_stream_key: str,
    chain: Chain,
    conn: psycopg.Connection[Any],
) -> None:
    first = chain.commit(10, 3)
    second = chain.commit(11, 2)
    rollback_id = chain.rollback(10, abandoned_block=11)
    third = chain.commit(11, 1, fork="b")
    metrics = Metrics()
    publisher = OutboxPublisher(
        database_url, redis_url, redis_stream_key, 10_000, CHAIN, metrics=metrics
    )
    client = redis.Redis.from_url(redis_url)
    try:
        assert publisher.refresh_backlog() == 7
        assert _gauge(metrics, "audifi_indexer_outbox_backlog") == 7
        assert publisher.publish_once(limit=4) == 4
        assert _gauge(metrics, "audifi_indexer_outbox_backlog") == 3
        assert publisher.publish_once() == 3
        assert publisher.publish_once() == 0  # nothing new: nothing re-sent
        entries = _entries(client, redis_stream_key)
    finally:
        publisher.close()
        client.close()

    assert [e["id"] for e in entries] == chain.queued
    assert all(flag for _, flag in _published_flags(conn))
    assert _gauge(metrics, "audifi_indexer_outbox_backlog") == 0
    assert _gauge(metrics, "audifi_indexer_outbox_published_total") == 7

    for entry, event in zip(entries[:5] + entries[6:], first + second + third, strict=True):
        assert set(entry) == EVENT_FIELDS | {"data"}
        assert entry == {
            "id": f"{event.block_hash}:{event.log_index}",
            "type": event.event_type,
            "chain_id": str(CHAIN),
            "block_number": str(event.block_number),
            "block_hash": event.block_hash,
            "tx_hash": event.tx_hash,
            "log_index": str(event.log_index),
            "data": entry["data"],
        }
        data = json.loads(entry["data"])
        # no projection ran on these rows: the message says the event is pending
        assert data.pop("effect") == {"applied": False}
        assert data == event.args  # uint256 extremes survive as strings
    rollback = entries[5]
    assert set(rollback) == EVENT_FIELDS | {"data", "ancestor_block", "ancestor_hash"}
    assert rollback["id"] == rollback_id
    assert rollback["type"] == "rollback"
    assert rollback["ancestor_block"] == rollback["block_number"] == "10"
    assert rollback["ancestor_hash"] == rollback["block_hash"] == _hash(10)
    assert json.loads(rollback["data"]) == {"ancestor_block": 10, "ancestor_hash": _hash(10)}


def test_stream_fields_are_strings() -> None:
    fields = stream_fields(
        1,
        "0xab:0",
        "Transfer",
        5,
        {"chain_id": 1, "block_number": 5, "block_hash": "0xab", "tx_hash": "0xcd",
         "log_index": 0, "data": {"b": "2", "a": "1"}},
    )  # fmt: skip
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["log_index"] == "0"
    assert fields["data"] == '{"a":"1","b":"2"}'


def test_redis_failing_midway_marks_nothing_and_resends(
    database_url: str,
    redis_url: str,
    redis_stream_key: str,
    chain: Chain,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chain.commit(20, 4)
    metrics = Metrics()
    publisher = OutboxPublisher(
        database_url, redis_url, redis_stream_key, 10_000, CHAIN, metrics=metrics
    )
    real_pipeline = publisher.redis.pipeline

    class LostAnswer:
        """Redis accepts the entries, then the connection drops before the answer."""

        def __init__(self) -> None:
            self.pipe = real_pipeline(transaction=False)

        def xadd(self, *args: Any, **kwargs: Any) -> None:
            self.pipe.xadd(*args, **kwargs)

        def execute(self) -> None:
            self.pipe.execute()
            raise redis.ConnectionError("connection lost while reading the answer")

    client = redis.Redis.from_url(redis_url)
    try:
        monkeypatch.setattr(publisher.redis, "pipeline", lambda transaction=False: LostAnswer())
        with pytest.raises(redis.ConnectionError):
            publisher.publish_once()
        assert not any(flag for _, flag in _published_flags(conn))
        assert _gauge(metrics, "audifi_indexer_redis_errors_total") == 1
        assert _gauge(metrics, "audifi_indexer_outbox_backlog") == 4
        monkeypatch.setattr(publisher.redis, "pipeline", real_pipeline)
        assert publisher.publish_once() == 4
        entries = _entries(client, redis_stream_key)
    finally:
        publisher.close()
        client.close()
    ids = [e["id"] for e in entries]
    assert ids == chain.queued + chain.queued  # at least once: re-sent, same ids
    deduped = list(dict.fromkeys(ids))
    assert deduped == chain.queued


def test_redis_down_backlog_grows_then_catches_up(
    database_url: str,
    private_redis: PrivateRedis,
    chain: Chain,
    conn: psycopg.Connection[Any],
) -> None:
    key = "audifi:events"
    metrics = Metrics()
    publisher = OutboxPublisher(
        database_url, private_redis.url, key, 10_000, CHAIN, metrics=metrics, redis_timeout=1.0
    )
    seen: list[str] = []  # what a consumer read, across the outage

    # Redis up: published and read.
    chain.commit(30, 3)
    assert publisher.publish_once() == 3
    client = private_redis.client()
    seen += [e["id"] for e in _entries(client, key)]
    client.close()
    assert seen == chain.queued

    # Redis down (our private server, by pid): attempts fail, nothing is marked.
    private_redis.stop()
    chain.commit(31, 2)
    chain.rollback(30, abandoned_block=31)
    chain.commit(31, 2, fork="b")
    for attempt in range(1, 4):
        with pytest.raises(redis.ConnectionError):
            publisher.publish_once()
        assert _gauge(metrics, "audifi_indexer_redis_errors_total") == attempt
    assert pending_ids(conn, CHAIN) == chain.queued[3:]
    assert _gauge(metrics, "audifi_indexer_outbox_backlog") == 5
    publisher.close()

    # The background loop keeps going (never raises), logs and counts, backlog keeps growing.
    loop_metrics = Metrics()
    looper = OutboxPublisher(
        database_url,
        private_redis.url,
        key,
        10_000,
        CHAIN,
        metrics=loop_metrics,
        redis_timeout=1.0,
        backoff_first=0.05,
        backoff_max=0.3,
    )
    stop = threading.Event()
    with structlog.testing.capture_logs() as logs:
        thread = looper.start(stop, interval=0.05)
        _wait_for(
            lambda: (loop_metrics.registry.get_sample_value("audifi_indexer_redis_errors_total")
                     or 0) >= 3,
            10,
            "three failed attempts of the loop",
        )  # fmt: skip
        chain.commit(32, 1)
        looper.notify()
        _wait_for(
            lambda: loop_metrics.registry.get_sample_value("audifi_indexer_outbox_backlog") == 6,
            10,
            "the backlog gauge to show 6",
        )
        assert thread.is_alive()
        assert pending_ids(conn, CHAIN) == chain.queued[3:]

        # Redis back on the same port: the loop catches up on its own.
        private_redis.start()
        _wait_for(lambda: not pending_ids(conn, CHAIN), 15, "the outbox to drain")
        _wait_for(
            lambda: loop_metrics.registry.get_sample_value("audifi_indexer_outbox_backlog") == 0,
            5,
            "the backlog gauge to reach 0",
        )
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
    events = [entry["event"] for entry in logs]
    assert "redis_unavailable" in events
    assert "outbox_publisher_recovered" in events
    unavailable = next(e for e in logs if e["event"] == "redis_unavailable")
    assert unavailable["log_level"] == "warning"
    assert unavailable["retry_in"] <= 0.3

    # A consumer group on the restarted server sees every id published after the outage.
    client = private_redis.client()
    try:
        client.xgroup_create(key, "readers", id="0")
        answer: Any = client.xreadgroup("readers", "r1", {key: ">"}, count=1000)
        group_entries = answer[0][1]
        after = [fields[b"id"].decode() for _entry_id, fields in group_entries]
        client.xack(key, "readers", *[entry_id for entry_id, _ in group_entries])
        assert client.xpending(key, "readers")["pending"] == 0
    finally:
        client.close()
    # The stream of the restarted (non-persistent) server holds only what came after; with what
    # the consumer read before the outage that is every message, each exactly once, in order.
    seen += after
    assert seen == chain.queued
    assert len(set(seen)) == len(seen) == 9
    assert all(flag for _, flag in _published_flags(conn))


def test_loop_survives_database_errors_and_stops(
    database_url: str, redis_url: str, redis_stream_key: str, chain: Chain
) -> None:
    chain.commit(40, 2)
    metrics = Metrics()
    publisher = OutboxPublisher(
        database_url.rsplit("/", 1)[0] + "/audifi_no_such_database",
        redis_url,
        redis_stream_key,
        100,
        CHAIN,
        metrics=metrics,
        backoff_first=0.05,
        backoff_max=0.1,
    )
    stop = threading.Event()
    with structlog.testing.capture_logs() as logs:
        thread = publisher.start(stop, interval=0.05)
        _wait_for(
            lambda: sum(e["event"] == "outbox_database_unavailable" for e in logs) >= 2,
            10,
            "two database failures",
        )
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert {e["event"] for e in logs} >= {"outbox_database_unavailable", "outbox_publisher_stopped"}


def test_prune_keeps_unpublished_and_recent_rows(
    database_url: str,
    redis_url: str,
    redis_stream_key: str,
    chain: Chain,
    conn: psycopg.Connection[Any],
) -> None:
    chain.commit(50, 3)
    publisher = OutboxPublisher(
        database_url, redis_url, redis_stream_key, 100, CHAIN, retention=3600.0
    )
    try:
        assert publisher.publish_once() == 3
        chain.commit(51, 2)  # unpublished: never pruned
        conn.execute(
            "UPDATE indexer_outbox SET published_at = now() - interval '2 hours' "
            "WHERE id = (SELECT min(id) FROM indexer_outbox)"
        )
        assert publisher.prune() == 1
        assert publisher.prune() == 0
    finally:
        publisher.close()
    flags = _published_flags(conn)
    assert flags == [(chain.queued[1], True), (chain.queued[2], True)] + [
        (m, False) for m in chain.queued[3:]
    ]


# --------------------------------------------------------------------------------- the example


def _example() -> ModuleType:
    path = ROOT / "examples" / "consume_events.py"
    spec = importlib.util.spec_from_file_location("consume_events_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_example_consumer_dedupes_and_rolls_back(
    database_url: str, redis_url: str, redis_stream_key: str, chain: Chain
) -> None:
    example = _example()
    kept = chain.commit(60, 2)
    chain.commit(61, 2)
    chain.rollback(60, abandoned_block=61)
    replacement = chain.commit(61, 1, fork="b")
    publisher = OutboxPublisher(database_url, redis_url, redis_stream_key, 100, CHAIN)
    client = redis.Redis.from_url(redis_url)
    try:
        publisher.publish_once()
        # a duplicate delivery of the whole sequence (at least once) changes nothing
        sent: Any = client.xrange(redis_stream_key)
        for _entry_id, fields in sent:
            client.xadd(redis_stream_key, fields)
        view = example.EventView()
        changes: list[dict[str, Any]] = []
        handled = example.consume(
            client, redis_stream_key, "example", "c1", view, once=True, on_change=changes.append
        )
        assert handled == 12
        assert list(view.events) == [e.message_id for e in kept + replacement]
        assert [c["action"] for c in changes].count("rollback") == 2
        assert client.xpending(redis_stream_key, "example")["pending"] == 0
        # a restart of the consumer finds nothing new and nothing pending
        assert example.consume(client, redis_stream_key, "example", "c1", view, once=True) == 0
    finally:
        publisher.close()
        client.close()
