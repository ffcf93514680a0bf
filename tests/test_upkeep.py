"""Schema upkeep by the leader: future partitions ahead of time, concurrent view refresh."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa

from indexer.schema.partitions import add_months, month_floor, partition_name
from indexer.upkeep import Upkeep


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
