"""Read-only query API over the synced AudiFi data, for services and operators.

Every function takes a SQLAlchemy ``Engine`` or ``Connection`` and returns frozen
dataclasses; nothing here writes. Amounts and token ids are exact Python ``int`` (uint256),
royalties and coin supplies :class:`~decimal.Decimal`, times timezone-aware UTC datetimes,
addresses lowercase ``0x`` hex. Lookups by wallet are case-insensitive.

    from indexer.db import create_engine
    from indexer import query

    engine = create_engine("postgresql://…")
    master = query.master(engine, master_id)                 # by id (UUID or str) …
    master = query.master_by_contract(engine, "0xAbC…")      # … or by share contract
    page = query.holders(engine, master.id, limit=50, offset=0)
    mine = query.shares_of_wallet(engine, "0x…")             # or query.shares_of_user(engine, uid)
    history = query.dividends(engine, master.id)             # .events and .total_wei
    coin = query.artist_coin(engine, artist_id)
    status = query.sync_status(engine)
    latest = query.recent_events(engine, limit=20)

The same views are on the command line: ``audifi-indexer query …`` (``--json`` for machines).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

Bind = sa.Engine | sa.Connection
MAX_PAGE = 1000


class QueryError(ValueError):
    """Bad arguments to a query (an id that is not a UUID, a negative page…)."""


@contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


Row = tuple[Any, ...]


def _rows(bind: Bind, sql: str, params: Mapping[str, Any]) -> list[Row]:
    with _connection(bind) as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), dict(params))]


def as_uuid(value: uuid.UUID | str, what: str = "id") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise QueryError(f"{what} {value!r} is not a UUID") from exc


def as_address(value: str, what: str = "address") -> str:
    text = value.strip().lower()
    if (
        len(text) != 42
        or not text.startswith("0x")
        or any(c not in "0123456789abcdef" for c in text[2:])
    ):
        raise QueryError(f"{what} {value!r} is not a 0x-prefixed 20-byte hex address")
    return text


def _page(limit: int, offset: int) -> dict[str, int]:
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise QueryError(f"offset must be >= 0, got {offset}")
    return {"limit": limit, "offset": offset}


# ------------------------------------------------------------------------------- masters
@dataclass(frozen=True)
class Master:
    id: uuid.UUID
    artist_id: uuid.UUID
    title: str
    status: str
    contract_address: str | None
    shares_minted: int
    shares_held: int
    holders: int
    dividends_total_wei: int


_MASTER_SQL = """
SELECT m.id, m.artist_id, m.title, m.status::text, m.contract_address,
       (SELECT count(*) FROM nft_shares s WHERE s.master_id = m.id),
       (SELECT count(*) FROM nft_shares s WHERE s.master_id = m.id AND s.owner_wallet IS NOT NULL),
       (SELECT count(DISTINCT s.owner_wallet) FROM nft_shares s WHERE s.master_id = m.id),
       (SELECT coalesce(sum(d.amount), 0) FROM dividend_events d WHERE d.master_id = m.id)
FROM masters m
"""


def _master(row: Row | None) -> Master | None:
    if row is None:
        return None
    return Master(row[0], row[1], row[2], row[3], row[4], int(row[5]), int(row[6]), int(row[7]),
                  int(row[8]))  # fmt: skip


def master(bind: Bind, master_id: uuid.UUID | str) -> Master | None:
    rows = _rows(bind, _MASTER_SQL + " WHERE m.id = :id", {"id": as_uuid(master_id, "master")})
    return _master(rows[0] if rows else None)


def master_by_contract(bind: Bind, contract_address: str) -> Master | None:
    rows = _rows(
        bind,
        _MASTER_SQL + " WHERE m.contract_address = :a ORDER BY m.created_at LIMIT 1",
        {"a": as_address(contract_address, "contract")},
    )
    return _master(rows[0] if rows else None)


# ------------------------------------------------------------------------------- shares
@dataclass(frozen=True)
class Share:
    master_id: uuid.UUID
    token_id: int
    owner_wallet: str | None
    owner_id: uuid.UUID | None
    tier: int
    royalty_percent: Decimal
    minted_at: dt.datetime | None
    last_transfer: dt.datetime | None


@dataclass(frozen=True)
class Holder:
    wallet: str
    user_id: uuid.UUID | None
    token_ids: tuple[int, ...]
    tiers: tuple[int, ...]
    royalty_percent: Decimal
    """Sum of the royalties of the holder's shares."""


@dataclass(frozen=True)
class Page:
    items: tuple[Any, ...]
    total: int
    limit: int
    offset: int


_SHARE_COLUMNS = (
    "master_id, token_id, owner_wallet, owner_id, tier, royalty_percent, minted_at, last_transfer"
)


def _share(row: Row) -> Share:
    return Share(row[0], int(row[1]), row[2], row[3], int(row[4]), row[5], row[6], row[7])


def holders(bind: Bind, master_id: uuid.UUID | str, limit: int = 100, offset: int = 0) -> Page:
    """Current holders of a master's shares (burned shares have none), largest first."""
    master_uuid = as_uuid(master_id, "master")
    params: dict[str, Any] = {"m": master_uuid, **_page(limit, offset)}
    rows = _rows(
        bind,
        "SELECT owner_wallet, (array_agg(owner_id))[1], array_agg(token_id ORDER BY token_id), "
        "array_agg(tier ORDER BY token_id), sum(royalty_percent), count(*) OVER () "
        "FROM nft_shares WHERE master_id = :m AND owner_wallet IS NOT NULL "
        "GROUP BY owner_wallet ORDER BY count(*) DESC, owner_wallet LIMIT :limit OFFSET :offset",
        params,
    )
    items = tuple(
        Holder(r[0], r[1], tuple(int(t) for t in r[2]), tuple(int(t) for t in r[3]), r[4])
        for r in rows
    )
    total = int(rows[0][5]) if rows else _count_holders(bind, master_uuid)
    return Page(items, total, limit, offset)


def _count_holders(bind: Bind, master_id: uuid.UUID) -> int:
    rows = _rows(
        bind,
        "SELECT count(DISTINCT owner_wallet) FROM nft_shares WHERE master_id = :m",
        {"m": master_id},
    )
    return int(rows[0][0])


def _shares_page(bind: Bind, where: str, params: dict[str, Any]) -> Page:
    """A page of shares matching ``where`` (a condition on ``nft_shares``), in a stable order."""
    rows = _rows(
        bind,
        f"SELECT {_SHARE_COLUMNS}, count(*) OVER () FROM nft_shares WHERE {where} "
        "ORDER BY master_id, token_id LIMIT :limit OFFSET :offset",
        params,
    )
    total = int(rows[0][8]) if rows else 0
    return Page(tuple(_share(r) for r in rows), total, params["limit"], params["offset"])


def shares_of_wallet(bind: Bind, wallet: str, limit: int = 100, offset: int = 0) -> Page:
    params = {"w": as_address(wallet, "wallet"), **_page(limit, offset)}
    return _shares_page(bind, "owner_wallet = :w", params)


def shares_of_user(bind: Bind, user_id: uuid.UUID | str, limit: int = 100, offset: int = 0) -> Page:
    params = {"u": as_uuid(user_id, "user"), **_page(limit, offset)}
    return _shares_page(bind, "owner_id = :u", params)


# ------------------------------------------------------------------------------- dividends
@dataclass(frozen=True)
class Dividend:
    amount_wei: int
    contract_address: str
    block_number: int
    block_hash: str
    block_time: dt.datetime
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class DividendHistory:
    master_id: uuid.UUID
    events: tuple[Dividend, ...]
    total_wei: int
    count: int


def dividends(
    bind: Bind, master_id: uuid.UUID | str, limit: int = 100, offset: int = 0
) -> DividendHistory:
    """A master's dividend deposits, newest first; ``total_wei``/``count`` over all of them."""
    master_uuid = as_uuid(master_id, "master")
    params: dict[str, Any] = {"m": master_uuid, **_page(limit, offset)}
    rows = _rows(
        bind,
        "SELECT amount, contract_address, block_number, block_hash, block_time, tx_hash, "
        "log_index FROM dividend_events WHERE master_id = :m "
        "ORDER BY block_number DESC, log_index DESC LIMIT :limit OFFSET :offset",
        params,
    )
    totals = _rows(
        bind,
        "SELECT coalesce(sum(amount), 0), count(*) FROM dividend_events WHERE master_id = :m",
        params,
    )[0]
    return DividendHistory(
        master_uuid,
        tuple(Dividend(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], int(r[6])) for r in rows),
        int(totals[0]),
        int(totals[1]),
    )


# ------------------------------------------------------------------------------- coins
@dataclass(frozen=True)
class ArtistCoin:
    id: uuid.UUID
    artist_id: uuid.UUID
    name: str
    symbol: str
    contract_address: str | None
    total_supply: Decimal
    deployed_at: dt.datetime | None


def artist_coin(bind: Bind, artist_id: uuid.UUID | str) -> ArtistCoin | None:
    rows = _rows(
        bind,
        "SELECT id, artist_id, name, symbol, contract_address, total_supply, deployed_at "
        "FROM artist_coins WHERE artist_id = :a",
        {"a": as_uuid(artist_id, "artist")},
    )
    return ArtistCoin(*rows[0]) if rows else None


# ------------------------------------------------------------------------------- status
@dataclass(frozen=True)
class SyncStatus:
    chain_id: int
    head_block: int | None
    indexed_block: int | None
    indexed_hash: str | None
    lag_blocks: int | None
    halted: bool
    halt_reason: str | None
    pending: int
    dead_letters: int
    events: int
    updated_at: dt.datetime | None


def sync_status(bind: Bind) -> list[SyncStatus]:
    """One entry per chain indexed into this database (normally one)."""
    rows = _rows(
        bind,
        "SELECT s.chain_id, s.head_block, s.indexed_block, s.indexed_hash, s.halted, "
        "s.halt_reason, s.updated_at, "
        "(SELECT count(*) FROM indexer_events e WHERE e.chain_id = s.chain_id AND NOT e.applied),"
        "(SELECT count(*) FROM indexer_dead_letters d WHERE d.chain_id = s.chain_id), "
        "(SELECT count(*) FROM indexer_events e WHERE e.chain_id = s.chain_id) "
        "FROM indexer_state s ORDER BY s.chain_id",
        {},
    )
    out = []
    for r in rows:
        head, indexed = r[1], r[2]
        lag = head - indexed if head is not None and indexed is not None else None
        out.append(
            SyncStatus(int(r[0]), head, indexed, r[3], lag, bool(r[4]), r[5], int(r[7]),
                       int(r[8]), int(r[9]), r[6])
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    chain_id: int
    block_number: int
    block_hash: str
    block_time: dt.datetime
    tx_hash: str
    log_index: int
    address: str
    event_type: str
    args: dict[str, Any]
    applied: bool


def recent_events(
    bind: Bind, limit: int = 20, event_type: str | None = None, offset: int = 0
) -> list[Event]:
    """The newest events of the event log (optionally one type), newest first."""
    params: dict[str, Any] = {**_page(limit, offset), "t": event_type}
    rows = _rows(
        bind,
        "SELECT chain_id, block_number, block_hash, block_time, tx_hash, log_index, address, "
        "event_type, args, applied FROM indexer_events "
        "WHERE (CAST(:t AS text) IS NULL OR event_type = :t) "
        "ORDER BY block_number DESC, log_index DESC LIMIT :limit OFFSET :offset",
        params,
    )
    return [Event(int(r[0]), int(r[1]), r[2], r[3], r[4], int(r[5]), r[6], r[7], r[8], r[9])
            for r in rows]  # fmt: skip
