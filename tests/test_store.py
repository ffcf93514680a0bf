"""indexer.store on a real PostgreSQL database (the COPY text it renders for the write path)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from indexer import store


def test_copy_text_round_trips_awkward_values(database_url: str) -> None:
    """The write path renders COPY text itself (faster than the driver): values that need
    escaping (tabs, newlines, backslashes) must come back unchanged, NULLs as NULLs."""
    rows = [
        ("plain", "0xabc", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC), 2**255),
        ("tab\there", "new\nline", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 0),
        ("back\\slash", "cr\rx\\N", None, -1),
    ]
    lines = []
    for text, other, time, number in rows:
        line = store.copy_line(f"{text}\t{other}", 1, (text, other))
        lines.append(f"{line}\t{store.copy_text(time)}\t{number}\n")
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE t (a text, b text, c timestamptz, d numeric)")
        with conn.cursor().copy("COPY t (a, b, c, d) FROM STDIN") as copy:
            store.write_copy_lines(copy, lines)
        back = conn.execute("SELECT a, b, c, d FROM t").fetchall()
    assert [(a, b, c, int(d)) for a, b, c, d in back] == rows
    with pytest.raises(psycopg.DataError):
        store.copy_text("nul\x00")
