"""Monthly range partitions of ``analytics_events``.

Guarantees:

* Every month from the first to the last requested one has its own partition
  ``analytics_events_YYYY_MM`` covering ``[YYYY-MM-01 00:00 UTC, next month)``; the DEFAULT
  partition ``analytics_events_default`` (created by the migration) catches every other
  timestamp, so an insert never fails for want of a partition.
* Creating a partition is idempotent and safe beside readers and writers: when the default
  partition already holds rows of that month, they are moved into the new partition in the
  caller's transaction before it is attached (PostgreSQL refuses the attach otherwise).
* Bounds are written with an explicit ``+00`` offset, so they do not depend on the session's
  ``TimeZone`` setting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import sqlalchemy as sa

PARENT = "analytics_events"
DEFAULT_PARTITION = "analytics_events_default"
SEED_FIRST_MONTH = dt.date(2024, 1, 1)
"""The seed's only partition is January 2024; partitions start there."""


def month_floor(day: dt.date) -> dt.date:
    return day.replace(day=1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + (month.month - 1) + count
    return dt.date(index // 12, index % 12 + 1, 1)


def iter_months(first: dt.date, last: dt.date) -> Iterator[dt.date]:
    """Yield the first day of every month from ``first``'s month to ``last``'s, inclusive."""
    month, end = month_floor(first), month_floor(last)
    while month <= end:
        yield month
        month = add_months(month, 1)


def partition_name(month: dt.date) -> str:
    return f"{PARENT}_{month.year:04d}_{month.month:02d}"


def _bound(month: dt.date) -> str:
    return f"{month.isoformat()} 00:00:00+00"


def create_default_partition(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF {PARENT} DEFAULT")
    )


def ensure_month_partition(conn: sa.Connection, month: dt.date) -> bool:
    """Make sure ``month`` has its own partition; return True when one was created now."""
    month = month_floor(month)
    name = partition_name(month)
    exists = conn.execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name})
    if exists.scalar_one():
        return False
    low, high = _bound(month), _bound(add_months(month, 1))
    bounds = f"FOR VALUES FROM ('{low}') TO ('{high}')"
    # Lock the parent so no row for this month lands in the default partition meanwhile.
    conn.execute(sa.text(f"LOCK TABLE {PARENT} IN SHARE ROW EXCLUSIVE MODE"))
    has_default = conn.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": DEFAULT_PARTITION}
    ).scalar_one()
    stray_rows = (
        has_default
        and conn.execute(
            sa.text(
                f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} "
                "WHERE created_at >= CAST(:low AS timestamptz) "
                "AND created_at < CAST(:high AS timestamptz))"
            ),
            {"low": low, "high": high},
        ).scalar_one()
    )
    if not stray_rows:
        conn.execute(sa.text(f"CREATE TABLE {name} PARTITION OF {PARENT} {bounds}"))
        return True
    conn.execute(
        sa.text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    conn.execute(
        sa.text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
            "WHERE created_at >= CAST(:low AS timestamptz) "
            "AND created_at < CAST(:high AS timestamptz) RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        ),
        {"low": low, "high": high},
    )
    conn.execute(sa.text(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} {bounds}"))
    return True


def ensure_partitions(conn: sa.Connection, first: dt.date, last: dt.date) -> list[str]:
    """Ensure a partition for every month in ``[first, last]``; return the names created."""
    return [
        partition_name(month)
        for month in iter_months(first, last)
        if ensure_month_partition(conn, month)
    ]


def ensure_partitions_ahead(
    conn: sa.Connection, months_ahead: int, today: dt.date | None = None
) -> list[str]:
    """Ensure partitions from the current month through ``months_ahead`` months later."""
    current = month_floor(today or dt.datetime.now(dt.UTC).date())
    return ensure_partitions(conn, current, add_months(current, months_ahead))
