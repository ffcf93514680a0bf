"""indexer.store on a real PostgreSQL database (the COPY text it renders for the write path)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from indexer import projections, store
from indexer.chain.types import BlockHeader


def _copy_back(database_url: str, rows: list[tuple[object, ...]]) -> list[tuple]:
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
    assert _copy_back(database_url, rows) == sorted(rows, key=lambda r: int(r[3]))


def test_copy_refuses_what_it_cannot_store(database_url: str) -> None:
    """A NUL cannot be stored in a text value, and an empty text would come back as NULL:
    the escaped rendering refuses both with the driver's error; an empty field in a plain line
    is NULL, which a NOT NULL column refuses (the write path's empty-able columns are)."""
    with pytest.raises(psycopg.DataError, match="NUL"):
        store.copy_text("nul\x00")
    with pytest.raises(psycopg.DataError, match="empty"):
        store.copy_text("")
    with pytest.raises(psycopg.errors.NotNullViolation):
        _copy_back(database_url, [("", "x", None, 1)])


def _event(i: int, tx_hash: str, context: dict[str, str] | None = None) -> store.EventRow:
    return store.EventRow(
        block_number=1,
        block_hash="0x" + "11" * 32,
        block_time=dt.datetime(2024, 5, 6, 7, 8, i, tzinfo=dt.UTC),
        tx_hash=tx_hash,
        tx_index=i,
        log_index=i,
        address="0x" + "ab" * 20,
        event_type="Transfer",
        args={"from": "0x" + "00" * 20, "to": "0x" + f"{i:040x}", "tokenId": str(2**256 - i)},
        context=context,
    )


def _prerendered(e: store.EventRow) -> store.EventRow:
    """``e`` with the COPY prefix decoding renders (see ``sync.process_logs``)."""
    prefix = store.event_copy_prefix(e.block_number, e.block_hash, e.block_time.isoformat(),
                                     e.tx_hash, e.tx_index, e.log_index, e.address,
                                     e.event_type, e.args)  # fmt: skip
    return e._replace(copy_prefix=prefix)


@pytest.mark.parametrize("prerendered", [False, True])
@pytest.mark.parametrize("chunk", [2, 3, 2000])
def test_event_log_copy_stores_every_value_as_it_is(
    database_url: str, chunk: int, prerendered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event log's own renderer (``write_batch``), with awkward values in a later chunk
    than the first (so a re-rendered chunk must start at the right event): every column comes
    back as it went in, plain chunks and escaped ones alike — and the same when the events
    carry the COPY prefix rendered at decoding (a prefix with a stray tab fails its chunk's
    check like any plain line)."""
    monkeypatch.setattr(store, "COPY_CHUNK", chunk)
    events = [
        _event(0, "0x" + "22" * 32),
        _event(1, "0x" + "33" * 32, context={"coin": "plain"}),
        _event(2, "0x" + "44" * 32),
        _event(3, "tab\there back\\slash \\N", context={"coin": 'quote " and \\ and \n'}),
        _event(4, "0x" + "55" * 32),
    ]
    if prerendered:
        events = [_prerendered(e) for e in events]
        assert all(e.copy_prefix for e in events)
    header = BlockHeader(1, "0x" + "11" * 32, "0x" + "00" * 32, 1_700_000_000)
    batch = store.Batch(head=header, events=events, window=[header])
    batch.applied.update(e.position for e in events[1:])
    with psycopg.connect(database_url, autocommit=True) as conn:
        with conn.transaction():
            store.init_state(conn, 1, 0)
            store.write_batch(conn, 1, batch, keep_blocks=64, outbox=False)
        back = conn.execute(
            "SELECT chain_id, block_number, block_hash, block_time, tx_hash, tx_index, "
            "log_index, address, event_type, args, context, applied FROM indexer_events "
            "ORDER BY log_index"
        ).fetchall()
    assert back == [
        (1, e.block_number, e.block_hash, e.block_time, e.tx_hash, e.tx_index, e.log_index,
         e.address, e.event_type, e.args, e.context, e.position in batch.applied)
        for e in events
    ]  # fmt: skip


def test_share_rows_copy_stores_every_value_as_it_is(database_url: str) -> None:
    """The shares' renderer: NULL owners stay NULL, an owner wallet that would break a plain
    line (in the second chunk) comes back unchanged."""
    time = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    rows = [
        ("m", 1, None, None, None),
        ("m", 2, None, "0x" + "ab" * 20, time),
        ("m", 3, None, "tab\tand\\N", time),
    ]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "CREATE TEMP TABLE t (master_id text, token_id numeric, owner_id uuid, "
            "owner_wallet text, last_transfer timestamptz)"
        )
        with (
            conn.cursor().copy(f"COPY t FROM STDIN {store.COPY_NULL_EMPTY}") as copy,
            pytest.MonkeyPatch.context() as patch,
        ):
            patch.setattr(store, "COPY_CHUNK", 2)
            projections._copy_rows(copy, rows, projections._moved_line)
        back = conn.execute("SELECT * FROM t ORDER BY token_id").fetchall()
    assert [(m, int(t), o, w, lt) for m, t, o, w, lt in back] == rows
