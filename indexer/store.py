"""Every SQL statement of the engine: cursor, block window, event log, contracts, dead letters,
outbox. Functions run inside the caller's transaction on a psycopg 3 connection; none commits.

Guarantees (the engine relies on them):

* :func:`write_batch` writes a batch's events, dead letters, registrations, block window and
  outbox messages *and* advances the cursor; called in one transaction, they land together or
  not at all (exactly-once).
* :func:`lock_state` takes the cursor row ``FOR UPDATE``; the engine compares it with what it
  planned from, so two writers (or a stale plan) can never both advance the same cursor.
* :func:`rollback_to` removes everything above a block — events, dead letters, registrations,
  window blocks — and moves the cursor back to it, in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import psycopg

from indexer.chain.types import BlockHeader
from indexer.reorg import BlockRef

MASTER_SHARES_KIND = "master_shares"


@dataclass(frozen=True, slots=True)
class CursorState:
    chain_id: int
    start_block: int
    indexed_block: int | None
    indexed_hash: str | None
    halted: bool
    halt_reason: str | None

    @property
    def next_block(self) -> int:
        return self.start_block if self.indexed_block is None else self.indexed_block + 1

    @property
    def head_ref(self) -> tuple[int | None, str | None]:
        return (self.indexed_block, self.indexed_hash)


@dataclass(frozen=True, slots=True)
class Registration:
    address: str
    master_id: uuid.UUID
    block_number: int
    log_index: int
    block_hash: str

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


class EventRow(NamedTuple):
    """A decoded event as stored in ``indexer_events`` (a named tuple: built once per event
    of a backfill, see :mod:`indexer.chain.types`)."""

    block_number: int
    block_hash: str
    block_time: dt.datetime
    tx_hash: str
    tx_index: int
    log_index: int
    address: str
    event_type: str
    args: dict[str, str]
    """JSON-safe decoded values (see :func:`indexer.decode.args_to_json`)."""
    context: dict[str, Any] | None = None
    """Chain reads made for this event at its block (artist coin metadata)."""
    copy_prefix: str | None = None
    """Its columns ``block_number`` … ``args`` as plain COPY text (:func:`event_copy_prefix`),
    rendered where the event was decoded — in a backfill the prefetch thread, while the
    thread that writes waits on PostgreSQL —; None: rendered when written. A copy with
    another value in one of those columns must set it to None (only ``context``, which is not
    among them, is ever replaced)."""

    @property
    def message_id(self) -> str:
        return f"{self.block_hash}:{self.log_index}"

    @property
    def position(self) -> tuple[int, int]:
        """Chain order of the event: (block number, log index)."""
        return (self.block_number, self.log_index)


new_event_row: Callable[[tuple[Any, ...]], EventRow] = functools.partial(tuple.__new__, EventRow)
"""An :class:`EventRow` from a tuple of all its eleven fields, built in C (the named tuple's
own ``__new__`` is a Python function: a backfill builds one row per event). The caller gives
every field, in order; nothing is checked."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    address: str
    topics: tuple[str, ...]
    data: str
    reason: str


@dataclass(slots=True)
class Batch:
    """What one step writes. ``head`` is the new cursor block (its header)."""

    head: BlockHeader
    events: list[EventRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    window: list[BlockHeader] = field(default_factory=list)
    applied: set[tuple[int, int]] = field(default_factory=set)
    """Positions of the events the projections applied (the others are pending)."""
    effects: dict[tuple[int, int], dict[str, str]] | None = None
    """What the projections did for an applied event (its Redis message's ``effect``); None:
    not collected (no outbox, so no message to carry it)."""
    ignored: int = 0
    """Logs from untrusted emitters or from before a registration: counted, never stored."""
    other: int = 0
    """Non-AudiFi events of trusted contracts (Approval, OwnershipTransferred…): skipped."""
    final: bool = False
    """Every block of the batch is final (a backfill range): no reorg can take it back, so
    the projections keep no before-images of the rows it changes."""


Conn = psycopg.Connection[Any]


# ------------------------------------------------------------------------------ cursor state
def _state(row: Sequence[Any]) -> CursorState:
    return CursorState(
        chain_id=int(row[0]),
        start_block=int(row[1]),
        indexed_block=None if row[2] is None else int(row[2]),
        indexed_hash=row[3],
        halted=bool(row[4]),
        halt_reason=row[5],
    )


_STATE_COLUMNS = "chain_id, start_block, indexed_block, indexed_hash, halted, halt_reason"


def load_state(conn: Conn, chain_id: int) -> CursorState | None:
    row = conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM indexer_state WHERE chain_id = %s", (chain_id,)
    ).fetchone()
    return None if row is None else _state(row)


def lock_state(conn: Conn, chain_id: int) -> CursorState | None:
    row = conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM indexer_state WHERE chain_id = %s FOR UPDATE",
        (chain_id,),
    ).fetchone()
    return None if row is None else _state(row)


def other_chains(conn: Conn, chain_id: int) -> list[int]:
    rows = conn.execute(
        "SELECT chain_id FROM indexer_state WHERE chain_id <> %s ORDER BY chain_id", (chain_id,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def foreign_chain_reason(stored_chain: int, node_chain: int) -> str:
    """Why a database that holds another chain's cursor is not indexed (a halt: SPEC §8)."""
    return (
        f"this database was built for chain {stored_chain}, the node is chain {node_chain}: "
        "point AUDIFI_DATABASE_URL at the database of this chain"
    )


def init_state(conn: Conn, chain_id: int, start_block: int) -> CursorState:
    conn.execute(
        "INSERT INTO indexer_state (chain_id, start_block) VALUES (%s, %s) "
        "ON CONFLICT (chain_id) DO NOTHING",
        (chain_id, start_block),
    )
    state = load_state(conn, chain_id)
    assert state is not None
    return state


def record_head(conn: Conn, chain_id: int, head: int) -> None:
    """Remember the node's head (for lag in status and queries); a no-op when unchanged."""
    conn.execute(
        "UPDATE indexer_state SET head_block = %s WHERE chain_id = %s "
        "AND head_block IS DISTINCT FROM %s",
        (head, chain_id, head),
    )


def set_halt(conn: Conn, chain_id: int, reason: str) -> None:
    conn.execute(
        "UPDATE indexer_state SET halted = true, halt_reason = %s, halted_at = now(), "
        "updated_at = now() WHERE chain_id = %s",
        (reason, chain_id),
    )


def clear_halt(conn: Conn, chain_id: int) -> None:
    conn.execute(
        "UPDATE indexer_state SET halted = false, halt_reason = NULL, halted_at = NULL, "
        "updated_at = now() WHERE chain_id = %s",
        (chain_id,),
    )


# ------------------------------------------------------------------------------ contracts
def load_registrations(conn: Conn, chain_id: int) -> dict[str, Registration]:
    rows = conn.execute(
        "SELECT address, master_id, registered_block, registered_log_index, "
        "registered_block_hash FROM indexer_contracts WHERE chain_id = %s AND kind = %s",
        (chain_id, MASTER_SHARES_KIND),
    ).fetchall()
    return {r[0]: Registration(r[0], r[1], int(r[2]), int(r[3]), r[4]) for r in rows}


# ------------------------------------------------------------------------------ block window
def load_window(conn: Conn, chain_id: int) -> list[BlockRef]:
    rows = conn.execute(
        "SELECT number, hash, parent_hash FROM indexer_blocks WHERE chain_id = %s "
        "ORDER BY number DESC",
        (chain_id,),
    ).fetchall()
    return [BlockRef(int(r[0]), r[1], r[2]) for r in rows]


def _block_time(header: BlockHeader) -> dt.datetime:
    return dt.datetime.fromtimestamp(header.timestamp, tz=dt.UTC)


# ------------------------------------------------------------------------------ writes
def write_batch(
    conn: Conn,
    chain_id: int,
    batch: Batch,
    *,
    keep_blocks: int,
    outbox: bool,
) -> None:
    """Write ``batch`` and advance the cursor to ``batch.head`` (caller's transaction).

    ``keep_blocks``: window blocks more than this many below the new head are pruned (the
    cursor block itself is always kept). ``outbox``: also queue one message per event.
    """
    if batch.events:
        with conn.cursor().copy(
            f"COPY indexer_events ({_EVENT_COLUMNS}) FROM STDIN {COPY_NULL_EMPTY}"
        ) as copy:
            _copy_events(copy, chain_id, batch.events, batch.applied)
    if batch.dead_letters:
        conn.cursor().executemany(
            "INSERT INTO indexer_dead_letters (chain_id, block_number, block_hash, tx_hash, "
            "log_index, address, topics, data, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (chain_id, d.block_number, d.block_hash, d.tx_hash, d.log_index, d.address,
                 list(d.topics), d.data, d.reason)
                for d in batch.dead_letters
            ],
        )  # fmt: skip
    if batch.registrations:
        conn.cursor().executemany(
            "INSERT INTO indexer_contracts (chain_id, address, kind, master_id, registered_block,"
            " registered_log_index, registered_block_hash) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                (chain_id, r.address, MASTER_SHARES_KIND, r.master_id, r.block_number,
                 r.log_index, r.block_hash)
                for r in batch.registrations
            ],
        )  # fmt: skip
    if outbox and batch.events:
        with conn.cursor().copy(
            "COPY indexer_outbox (chain_id, message_id, message_type, block_number, payload) "
            "FROM STDIN"
        ) as copy:
            for e in batch.events:
                copy.write_row(
                    (chain_id, e.message_id, e.event_type, e.block_number,
                     orjson.dumps(event_message(chain_id, e, _effect(batch, e))).decode())
                )  # fmt: skip
    window = {h.number: h for h in batch.window}
    window[batch.head.number] = batch.head
    conn.cursor().executemany(
        "INSERT INTO indexer_blocks (chain_id, number, hash, parent_hash, block_time) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (chain_id, number) DO UPDATE SET "
        "hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash, block_time = "
        "EXCLUDED.block_time",
        [
            (chain_id, h.number, h.hash, h.parent_hash, _block_time(h))
            for h in sorted(window.values(), key=lambda h: h.number)
        ],
    )
    conn.execute(
        "DELETE FROM indexer_blocks WHERE chain_id = %s AND number < %s",
        (chain_id, batch.head.number - keep_blocks),
    )
    # The shares' before-images serve rollbacks inside the window only (a rollback below it
    # re-derives the shares from the event log); those of backend rows are kept.
    conn.execute(
        "DELETE FROM indexer_snapshots WHERE chain_id = %s AND table_name = 'nft_shares' "
        "AND block_number < %s",
        (chain_id, batch.head.number - keep_blocks),
    )
    conn.execute(
        "UPDATE indexer_state SET indexed_block = %s, indexed_hash = %s, "
        "ignored_logs = ignored_logs + %s, updated_at = now() WHERE chain_id = %s",
        (batch.head.number, batch.head.hash, batch.ignored, chain_id),
    )


# ------------------------------------------------------------------------------ COPY text
# Rows of the large tables are rendered to COPY's text format here rather than value by value
# by the driver (about twice as fast), as plain f-strings, and checked a chunk at a time:
#
# * The COPYs say ``WITH (NULL '')``: an empty field is NULL, so a plain line never needs a
#   backslash (``\N``) — and an empty text value cannot be written (``copy_text`` refuses it).
# * A chunk of n lines of c columns is sent as rendered only when it holds exactly n newlines
#   and n·(c-1) tabs (the templates hold exactly those; a value can only add some) and no
#   backslash, carriage return or NUL at all. Otherwise every line of the chunk is rendered
#   again from its values with each value escaped (:func:`copy_text`).
#
# So whatever a value holds (an RPC's strings included), it is stored as it is or refused:
# an empty string rendered plainly is NULL, and every column these COPYs fill with text from
# outside (hashes, addresses) is NOT NULL — the nullable ones (``context``, owners, transfer
# times) are None or never empty (JSON, validated hex, times).

COPY_NULL_EMPTY = "WITH (NULL '')"
"""Options of every COPY fed by :func:`write_copy_lines`."""
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
COPY_CHUNK = 2000
"""Lines per write: the server ingests a chunk while the next one is rendered."""


def copy_text(value: object) -> str:
    """One value in COPY text format (``NULL ''``): empty for None, ``t``/``f``, ISO times,
    escaped text. A NUL character cannot be stored in a PostgreSQL text value, and an empty
    text would read back as NULL: both raise :class:`psycopg.DataError`."""
    if value is None:
        return ""
    if value is True or value is False:
        return "t" if value else "f"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    if "\x00" in text:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    if not text:
        raise psycopg.DataError(
            "an empty text value cannot be written by this COPY (an empty field is NULL)"
        )
    return text.translate(_COPY_ESCAPES)


def escaped_line(values: Iterable[object]) -> str:
    """One COPY line (newline included) with every value escaped by :func:`copy_text`."""
    return "\t".join(map(copy_text, values)) + "\n"


def write_copy_lines(
    copy: Any, lines: Iterable[str], columns: int, escaped: Callable[[int], str]
) -> None:
    """Send plain COPY text ``lines`` (``columns`` values each, newline included) in checked
    chunks; a chunk that fails the check (see above) is sent as ``escaped(i)`` of each of its
    lines instead (``i``: the line's index in ``lines``)."""
    chunk: list[str] = []
    sent = 0
    for line in lines:
        chunk.append(line)
        if len(chunk) >= COPY_CHUNK:
            copy.write(_checked_chunk(chunk, sent, columns, escaped))
            sent += len(chunk)
            chunk.clear()
    if chunk:
        copy.write(_checked_chunk(chunk, sent, columns, escaped))


def _checked_chunk(
    chunk: list[str], first: int, columns: int, escaped: Callable[[int], str]
) -> str:
    text = "".join(chunk)
    count = len(chunk)
    if (
        text.count("\n") == count
        and text.count("\t") == count * (columns - 1)
        and "\\" not in text  # three substring scans: ~10x faster than one regex search
        and "\r" not in text
        and "\x00" not in text
    ):
        return text
    return "".join(escaped(i) for i in range(first, first + count))


_EVENT_COLUMNS = (
    "chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index, address, "
    "event_type, args, context, applied"
)


def event_copy_prefix(
    block_number: int,
    block_hash: str,
    time_text: str,
    tx_hash: str,
    tx_index: int,
    log_index: int,
    address: str,
    event_type: str,
    args: dict[str, str],
) -> str:
    """Columns ``block_number`` … ``args`` of an event's plain COPY line
    (:data:`_EVENT_COLUMNS`), each followed by a tab; ``time_text``: the block time's
    ``isoformat()``. Plain text is checked per chunk when sent (:func:`write_copy_lines`)."""
    return (
        f"{block_number}\t{block_hash}\t{time_text}\t{tx_hash}\t{tx_index}\t{log_index}\t"
        f"{address}\t{event_type}\t{orjson.dumps(args).decode()}\t"
    )


def _copy_events(
    copy: Any, chain_id: int, events: Sequence[EventRow], applied: set[tuple[int, int]]
) -> None:
    """COPY ``events`` into ``indexer_events`` (:data:`_EVENT_COLUMNS`), each line from its
    :attr:`EventRow.copy_prefix` when it has one."""
    dumps = orjson.dumps

    def values(i: int) -> tuple[object, ...]:
        e = events[i]
        context = None if e.context is None else dumps(e.context).decode()
        return (chain_id, e.block_number, e.block_hash, e.block_time, e.tx_hash, e.tx_index,
                e.log_index, e.address, e.event_type, dumps(e.args).decode(), context,
                e.position in applied)  # fmt: skip

    def plain() -> Iterator[str]:
        times: dict[dt.datetime, str] = {}
        head = f"{chain_id}\t"
        for e in events:
            prefix = e.copy_prefix
            if prefix is None:
                time = times.get(e.block_time)
                if time is None:
                    time = times[e.block_time] = e.block_time.isoformat()
                prefix = event_copy_prefix(e.block_number, e.block_hash, time, e.tx_hash,
                                           e.tx_index, e.log_index, e.address, e.event_type,
                                           e.args)  # fmt: skip
            context = "" if e.context is None else dumps(e.context).decode()
            flag = "t" if (e.block_number, e.log_index) in applied else "f"
            yield f"{head}{prefix}{context}\t{flag}\n"

    write_copy_lines(copy, plain(), 12, lambda i: escaped_line(values(i)))


def _effect(batch: Batch, event: EventRow) -> dict[str, Any]:
    position = event.position
    if position not in batch.applied:
        return {"applied": False}  # pending: applied when its master / artist row exists
    return {"applied": True, **(batch.effects or {}).get(position, {})}


def event_message(
    chain_id: int, event: EventRow, effect: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Redis stream message of an event (SPEC §8: fields of ``audifi:events``). ``data``:
    the decoded values (with the coin's chain reads), and under ``effect`` what the event did
    to the AudiFi tables when it was committed (see docs/operations.md)."""
    data: dict[str, Any] = event.args if event.context is None else {**event.args, **event.context}
    if effect is not None:
        data = {**data, "effect": effect}
    return {
        "id": event.message_id,
        "type": event.event_type,
        "chain_id": chain_id,
        "block_number": event.block_number,
        "block_hash": event.block_hash,
        "tx_hash": event.tx_hash,
        "log_index": event.log_index,
        "data": data,
    }


def rollback_to(
    conn: Conn, chain_id: int, ancestor: BlockRef, *, abandoned_hash: str, outbox: bool
) -> dict[str, int]:
    """Remove everything above ``ancestor`` and move the cursor to it; return deleted counts."""
    counts: dict[str, int] = {}
    for table, column in (
        ("indexer_events", "block_number"),
        ("indexer_dead_letters", "block_number"),
        ("indexer_contracts", "registered_block"),
        ("indexer_blocks", "number"),
    ):
        cur = conn.execute(
            f"DELETE FROM {table} WHERE chain_id = %s AND {column} > %s",
            (chain_id, ancestor.number),
        )
        counts[table] = cur.rowcount
    if outbox:
        message = {
            "id": f"rollback:{abandoned_hash}:{ancestor.hash}",
            "type": "rollback",
            "chain_id": chain_id,
            "block_number": ancestor.number,
            "block_hash": ancestor.hash,
            "ancestor_block": ancestor.number,
            "ancestor_hash": ancestor.hash,
        }
        conn.execute(
            "INSERT INTO indexer_outbox (chain_id, message_id, message_type, block_number, "
            "payload) VALUES (%s, %s, 'rollback', %s, %s)",
            (chain_id, message["id"], ancestor.number, orjson.dumps(message).decode()),
        )
    conn.execute(
        "UPDATE indexer_state SET indexed_block = %s, indexed_hash = %s, updated_at = now() "
        "WHERE chain_id = %s",
        (ancestor.number, ancestor.hash, chain_id),
    )
    return counts


def rewind_to_block(
    conn: Conn, chain_id: int, block: int, start_block: int, *, outbox: bool = False
) -> dict[str, int]:
    """Operator rewind: drop everything above ``block`` and re-index from ``block + 1``.

    The cursor hash is taken from the stored window when the block is there; otherwise it is
    cleared (NULL) and the next step does not check the parent link of ``block + 1``. A block
    below ``start_block`` resets the cursor entirely (re-index from the start block).
    """
    row = conn.execute(
        "SELECT hash, parent_hash FROM indexer_blocks WHERE chain_id = %s AND number = %s",
        (chain_id, block),
    ).fetchone()
    ref = BlockRef(block, row[0] if row else "", row[1] if row else "")
    current = load_state(conn, chain_id)
    abandoned = f"rewind:{current.indexed_hash if current else ''}"
    counts = rollback_to(conn, chain_id, ref, abandoned_hash=abandoned, outbox=outbox)
    if row is None:
        conn.execute(
            "UPDATE indexer_state SET indexed_hash = NULL WHERE chain_id = %s", (chain_id,)
        )
    if block < start_block:
        conn.execute(
            "UPDATE indexer_state SET indexed_block = NULL, indexed_hash = NULL "
            "WHERE chain_id = %s",
            (chain_id,),
        )
    return counts


# ------------------------------------------------------------------------------ reads
def counts(conn: Conn, chain_id: int) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM indexer_events WHERE chain_id = %(c)s), "
        "(SELECT count(*) FROM indexer_dead_letters WHERE chain_id = %(c)s), "
        "(SELECT count(*) FROM indexer_contracts WHERE chain_id = %(c)s), "
        "(SELECT count(*) FROM indexer_blocks WHERE chain_id = %(c)s), "
        "(SELECT count(*) FROM indexer_outbox WHERE chain_id = %(c)s AND published_at IS NULL)",
        {"c": chain_id},
    ).fetchone()
    assert row is not None
    keys = ("events", "dead_letters", "contracts", "window_blocks", "outbox_backlog")
    return dict(zip(keys, (int(v) for v in row), strict=True))


def event_log(conn: Conn, chain_id: int) -> list[tuple[Any, ...]]:
    """The whole event log in chain order (tests, rebuilds)."""
    return conn.execute(
        "SELECT block_number, block_hash, tx_hash, log_index, address, event_type, args "
        "FROM indexer_events WHERE chain_id = %s ORDER BY block_number, log_index",
        (chain_id,),
    ).fetchall()


def block_time(header: BlockHeader) -> dt.datetime:
    return _block_time(header)


def registrations_in(batch_regs: Iterable[Registration]) -> dict[str, Registration]:
    return {r.address: r for r in batch_regs}
