"""Schema upkeep by the leader: future partitions ahead of time, concurrent view refresh."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from indexer.schema.partitions import add_months, month_floor, partition_name
from indexer.upkeep import UPKEEP_TICK, Upkeep


def test_partitions_ahead_and_concurrent_refresh(engine: sa.Engine, database_url: str) -> None:
    upkeep = Upkeep(database_url, months_ahead=8, refresh_interval=3600)
    this_month = month_floor(dt.datetime.now(dt.UTC).date())
    far = add_months(this_month, 8)
    with engine.begin() as conn:  # rows of a future month land in the default partition first
        conn.execute(
            sa.text(
                "INSERT INTO analytics_events (event_type, master_id, created_at) "
                "VALUES ('play', :m, CAST(:t AS timestamptz))"
            ),
            {"m": uuid.uuid4(), "t": f"{far.isoformat()} 12:00:00+00"},
        )
    try:
        upkeep.run_due(now=0.0)
        with engine.connect() as conn:
            where = conn.execute(
                sa.text("SELECT tableoid::regclass::text FROM analytics_events")
            ).scalar_one()
            plays = conn.execute(sa.text("SELECT sum(plays) FROM mv_daily_master_stats")).scalar()
        assert where == partition_name(far)  # moved out of the default partition
        assert plays == 1  # the view was refreshed
        assert upkeep.ensure_partitions() == []  # idempotent
        upkeep.run_due(now=1.0)  # nothing due: no error, nothing done
    finally:
        upkeep.close()


def test_the_upkeep_thread_runs_only_while_leading_and_a_cancel_ends_a_waiting_task(
    engine: sa.Engine, database_url: str
) -> None:
    upkeep = Upkeep(database_url, months_ahead=1, refresh_interval=3600)
    stop, leading = threading.Event(), threading.Event()
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO analytics_events (event_type, master_id) VALUES ('play', :m)"),
            {"m": uuid.uuid4()},
        )

    def plays() -> int | None:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT sum(plays) FROM mv_daily_master_stats")).scalar()

    thread = upkeep.run_in_background(stop, leading.is_set)
    try:
        time.sleep(2.5 * UPKEEP_TICK)
        assert plays() is None  # a standby keeps nothing
        with engine.connect() as blocker, blocker.begin():
            blocker.execute(sa.text("LOCK TABLE analytics_events IN ACCESS EXCLUSIVE MODE"))
            leading.set()  # now the upkeep starts, and waits on the lock
            deadline = time.monotonic() + 10
            while upkeep._in_flight is None or not waiting_on_lock(engine):
                assert time.monotonic() < deadline, "the upkeep never started"
                time.sleep(0.05)
            upkeep.cancel()
            stop.set()
            thread.join(timeout=5)
            assert not thread.is_alive()  # the lock is still held: the cancel ended it
        assert plays() is None  # rolled back
        upkeep.run_due()  # cancelled for good: nothing starts again
        assert plays() is None
    finally:
        stop.set()
        upkeep.close()


def waiting_on_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND backend_type = 'client backend' AND query NOT ILIKE 'LOCK TABLE%'"
            )
        ).scalar()
    return bool(waiting)


def test_a_cancel_while_the_connection_opens_ends_the_task_before_its_statement(
    engine: sa.Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a cancel that came while the task was still opening its connection
    found nothing to cancel, and the statement then ran (here: waited on a lock) regardless."""
    upkeep = Upkeep(database_url, months_ahead=1, refresh_interval=3600)
    opened = upkeep._db()
    opening = threading.Event()

    def slow_db() -> sa.Engine:
        opening.set()
        time.sleep(1.0)
        return opened

    monkeypatch.setattr(upkeep, "_db", slow_db)
    upkeep._next_partitions = float("inf")  # the refresh is the task: it needs the locked table
    stop = threading.Event()
    try:
        with engine.connect() as blocker, blocker.begin():
            blocker.execute(sa.text("LOCK TABLE analytics_events IN ACCESS EXCLUSIVE MODE"))
            thread = upkeep.run_in_background(stop, lambda: True)
            assert opening.wait(5)
            upkeep.cancel()  # nothing in flight yet
            stop.set()
            thread.join(timeout=5)
            assert not thread.is_alive()
            assert not waiting_on_lock(engine)
    finally:
        stop.set()
        upkeep.close()
