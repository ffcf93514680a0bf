"""``audifi-indexer query …``: the query module on the command line.

Each sub-command prints a readable table, or with ``--json`` one JSON document (UUIDs,
decimals and times as strings; integers exact). Bad arguments exit 2 with a clear message;
"not found" exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import decimal
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from indexer import query
from indexer.cli import add_config_option
from indexer.db import create_engine
from indexer.errors import IndexerError


class NotFoundError(IndexerError):
    """The thing asked for does not exist (exit code 1)."""


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def render_table(rows: Sequence[Any], columns: Sequence[str] | None = None) -> str:
    """A plain text table of dataclass rows."""
    if not rows:
        return "(none)"
    plain = [_plain(r) for r in rows]
    cols = list(columns or plain[0].keys())
    cells = [[_cell(p[c]) for c in cols] for p in plain]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _one(result: Any, what: str) -> Any:
    if result is None:
        raise NotFoundError(f"no {what} found")
    return result


Handler = Callable[[sa.Engine, argparse.Namespace], tuple[Any, str]]


def _master(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    key = a.master.strip()
    found = (
        query.master_by_contract(engine, key)
        if key.lower().startswith("0x")
        else query.master(engine, key)
    )
    m = _one(found, f"master {key}")
    return m, render_table([m])


def _known_master(engine: sa.Engine, master: str) -> None:
    """Called on an empty answer: a master that does not exist is "not found" (exit 1), not
    an empty list (exit 0) — the two must not look alike."""
    _one(query.master(engine, master), f"master {master.strip()}")


def _holders(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    page = query.holders(engine, a.master, limit=a.limit, offset=a.offset)
    if page.total == 0:
        _known_master(engine, a.master)
    footer = f"\n{len(page.items)} of {page.total} holders (offset {page.offset})"
    return page, render_table(page.items) + footer


def _shares(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    if bool(a.wallet) == bool(a.user):
        raise query.QueryError("give exactly one of --wallet or --user")
    page = (
        query.shares_of_wallet(engine, a.wallet, limit=a.limit, offset=a.offset)
        if a.wallet
        else query.shares_of_user(engine, a.user, limit=a.limit, offset=a.offset)
    )
    footer = f"\n{len(page.items)} of {page.total} shares (offset {page.offset})"
    return page, render_table(page.items) + footer


def _dividends(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    history = query.dividends(engine, a.master, limit=a.limit, offset=a.offset)
    if history.count == 0:
        _known_master(engine, a.master)
    footer = f"\n{history.count} deposits, total {history.total_wei} wei"
    return history, render_table(history.events) + footer


def _coin(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    coin = _one(query.artist_coin(engine, a.artist), f"artist coin of {a.artist}")
    return coin, render_table([coin])


def _status(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    rows = query.sync_status(engine)
    return rows, render_table(rows)


def _events(engine: sa.Engine, a: argparse.Namespace) -> tuple[Any, str]:
    rows = query.recent_events(engine, limit=a.limit, event_type=a.type, offset=a.offset)
    return rows, render_table(
        rows, ["block_number", "log_index", "event_type", "address", "args", "applied"]
    )


JSON_HELP = "print JSON instead of a table"


def add_query_parser(commands: Any) -> None:
    parser = commands.add_parser("query", help="read the synced data (tables, or --json)")
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    sub = parser.add_subparsers(dest="query", metavar="WHAT", required=True)

    def paged(p: argparse.ArgumentParser, limit: int = 100) -> None:
        p.add_argument("--limit", type=int, default=limit, help=f"page size (default {limit})")
        p.add_argument("--offset", type=int, default=0, help="rows to skip (default 0)")

    p = sub.add_parser("master", help="a master by id or by share contract address")
    p.add_argument("master", help="master UUID or 0x contract address")
    p.set_defaults(query_handler=_master)
    p = sub.add_parser("holders", help="holders of a master's shares")
    p.add_argument("master", help="master UUID")
    paged(p)
    p.set_defaults(query_handler=_holders)
    p = sub.add_parser("shares", help="shares of a wallet (--wallet) or a user (--user)")
    p.add_argument("--wallet", help="0x wallet address (any case)")
    p.add_argument("--user", help="user UUID")
    paged(p)
    p.set_defaults(query_handler=_shares)
    p = sub.add_parser("dividends", help="dividend history and total of a master")
    p.add_argument("master", help="master UUID")
    paged(p)
    p.set_defaults(query_handler=_dividends)
    p = sub.add_parser("coin", help="the artist coin of an artist")
    p.add_argument("artist", help="artist (user) UUID")
    p.set_defaults(query_handler=_coin)
    p = sub.add_parser("status", help="sync status per chain (head, indexed block, lag…)")
    p.set_defaults(query_handler=_status)
    p = sub.add_parser("events", help="the newest events of the event log")
    p.add_argument("--type", help="only this event type (e.g. Transfer)")
    paged(p, limit=20)
    p.set_defaults(query_handler=_events)
    for what in sub.choices.values():
        # `query master X --json` as well as `query --json master X`; SUPPRESS keeps an absent
        # flag from undoing one given before the sub-command.
        what.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
        add_config_option(what, after_command=True)
    parser.set_defaults(handler=run_query)


def run_query(args: argparse.Namespace) -> int:
    from indexer.cli import load_command_settings

    settings = load_command_settings(args.config, require=("database_url",))
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        handler: Handler = args.query_handler
        try:
            result, text = handler(engine, args)
        except query.QueryError as exc:
            raise IndexerError(str(exc)) from exc
        except NotFoundError as exc:
            print(f"audifi-indexer query {args.query}: {exc}", file=sys.stderr)
            return 1
    finally:
        engine.dispose()
    print(json.dumps(_plain(result), indent=2, sort_keys=True) if args.json else text)
    return 0
