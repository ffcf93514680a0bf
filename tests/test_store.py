"""indexer.store on a real PostgreSQL database (the COPY text it renders for the write path)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from indexer import store


def _copy_back(database_url: str, rows: list[tuple[object, ...]], chunk: int) -> list[tuple]:
    """``rows`` through :func:`store.write_copy_lines` (plain lines as the write path renders
    them: values joined by tabs, None as an empty field) into a temp table, and back."""
    lines = ["\t".join("" if v is None else str(v) for v in row) + "\n" for row in rows]
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE t (a text NOT NULL, b text, c timestamptz, d numeric)")
        with conn.cursor().copy(f"COPY t (a, b, c, d) FROM STDIN {store.COPY_NULL_EMPTY}") as copy:
            store.write_copy_lines(copy, lines, 4, lambda i: store.escaped_line(rows[i]))
        back = conn.execute("SELECT a, b, c, d FROM t ORDER BY d").fetchall()
    return [(a, b, c, int(d)) for a, b, c, d in back]


@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_copy_text_round_trips_awkward_values(
    database_url: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write path renders COPY text itself (faster than the driver) and checks it a chunk
    at a time: values that need escaping (tabs, newlines, carriage returns, backslashes, a
    literal ``\\N``) must come back unchanged, in chunks with and without them; NULLs as
    NULLs."""
    monkeypatch.setattr(store, "COPY_CHUNK", chunk)
    time = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    rows: list[tuple[object, ...]] = [
        ("plain", "0xabc", time, 2**255),
        ("tab\there", "new\nline", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 0),
        ("back\\slash", "cr\rx\\N", None, -1),
        ("\\N", None, time, 5),
        ("also plain", "x", time, 7),
    ]
    assert _copy_back(database_url, rows, chunk) == sorted(rows, key=lambda r: int(r[3]))


def test_copy_refuses_what_it_cannot_store(database_url: str) -> None:
    """A NUL cannot be stored in a text value, and an empty text would come back as NULL:
    the escaped rendering refuses both with the driver's error; an empty field in a plain line
    is NULL, which a NOT NULL column refuses (the write path's empty-able columns are)."""
    with pytest.raises(psycopg.DataError, match="NUL"):
        store.copy_text("nul\x00")
    with pytest.raises(psycopg.DataError, match="empty"):
        store.copy_text("")
    with pytest.raises(psycopg.errors.NotNullViolation):
        _copy_back(database_url, [("", "x", None, 1)], 10)
