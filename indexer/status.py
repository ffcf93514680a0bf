"""``audifi-indexer status``: one read-only snapshot of sync progress."""

from __future__ import annotations

from typing import Any

from indexer import migrate, store
from indexer.chain.errors import RpcError
from indexer.chain.http_source import HttpChainSource
from indexer.config import Settings
from indexer.errors import IndexerError
from indexer.projections import pending_count
from indexer.sync import connect


def pick_chain_id(conn: store.Conn, preferred: int | None) -> int | None:
    if preferred is not None:
        return preferred
    rows = conn.execute("SELECT chain_id FROM indexer_state ORDER BY chain_id").fetchall()
    if len(rows) > 1:
        raise IndexerError(
            f"this database holds several chains ({', '.join(str(r[0]) for r in rows)}); "
            "pass --chain-id"
        )
    return int(rows[0][0]) if rows else None


def collect_status(settings: Settings, chain_id: int | None = None) -> dict[str, Any]:
    """Status as a JSON-safe dict (keys pinned by SPEC §8 plus details)."""
    url = settings.database_url
    assert url is not None
    version = migrate.schema_version(url)
    head: int | None = None
    node_chain: int | None = None
    rpc_error: str | None = None
    if settings.rpc_urls:
        source = HttpChainSource(
            settings.rpc_urls,
            timeout=settings.rpc_timeout,
            max_attempts=2,
            expected_chain_id=settings.chain_id,
        )
        try:
            node_chain = source.chain_id()
            head = source.head()
        except RpcError as exc:
            rpc_error = str(exc)
        finally:
            source.close()
    with connect(url) as conn:
        chain = pick_chain_id(conn, chain_id or node_chain or settings.chain_id)
        state = store.load_state(conn, chain) if chain is not None else None
        counts = store.counts(conn, chain) if chain is not None else {}
        window = (
            conn.execute(
                "SELECT min(number), max(number) FROM indexer_blocks WHERE chain_id = %s",
                (chain,),
            ).fetchone()
            if chain is not None
            else None
        )
        # The daemon halts (writing nothing) on a database that holds only another chain's
        # cursor; status derives the same halt from the same rows, so it survives restarts.
        others = store.other_chains(conn, chain) if chain is not None and state is None else []
        pending = pending_count(conn, chain) if chain is not None else 0
        stored_row = (
            conn.execute(
                "SELECT ignored_logs, head_block FROM indexer_state WHERE chain_id = %s", (chain,)
            ).fetchone()
            if chain is not None
            else None
        )
    indexed = state.indexed_block if state else None
    # The node's head when it answers; otherwise the head the daemon saw last (it stores it on
    # every poll), so `status` without AUDIFI_RPC_URL still reports head and lag.
    head_source = "node" if head is not None else None
    if head is None and stored_row is not None and stored_row[1] is not None:
        head, head_source = int(stored_row[1]), "stored"
    return {
        "chain_id": chain,
        "head_block": head,
        "head_source": head_source,
        "indexed_block": indexed,
        "indexed_hash": state.indexed_hash if state else None,
        "lag_blocks": _lag(head, indexed, head_source),
        "halted": bool(state.halted) if state else bool(others),
        "halt_reason": state.halt_reason
        if state
        else (store.foreign_chain_reason(others[0], chain) if others and chain else None),
        "pending": pending,
        "dead_letters": counts.get("dead_letters", 0),
        "ignored_logs": int(stored_row[0]) if stored_row else 0,
        "events": counts.get("events", 0),
        "registered_contracts": counts.get("contracts", 0),
        "window": {
            "blocks": counts.get("window_blocks", 0),
            "from": window[0] if window else None,
            "to": window[1] if window else None,
        },
        "outbox_backlog": counts.get("outbox_backlog", 0),
        "start_block": state.start_block if state else settings.start_block,
        "schema": {"current": version.current, "head": version.head},
        "rpc_error": rpc_error,
    }


def _lag(head: int | None, indexed: int | None, head_source: str | None) -> int | None:
    """Blocks the index is behind; from a stored head never below 0 (the daemon may have
    stored a lagging node's head before finding it behind)."""
    if head is None or indexed is None:
        return None
    return max(0, head - indexed) if head_source == "stored" else head - indexed


def _show(value: object) -> str:
    return "-" if value is None else str(value)


def render_status(status: dict[str, Any]) -> str:
    window = status["window"]
    lines = [
        f"chain id         {_show(status['chain_id'])}",
        f"node head        {_show(status['head_block'])}"
        + ("  (last seen by the daemon)" if status["head_source"] == "stored" else "")
        + (f"  (RPC error: {status['rpc_error']})" if status["rpc_error"] else ""),
        f"indexed block    {_show(status['indexed_block'])}  {status['indexed_hash'] or ''}",
        f"lag              {_show(status['lag_blocks'])} blocks",
        f"halted           {'YES: ' + str(status['halt_reason']) if status['halted'] else 'no'}",
        f"reorg window     {window['blocks']} blocks"
        + (f" ({window['from']}..{window['to']})" if window["blocks"] else ""),
        f"events           {status['events']}",
        f"contracts        {status['registered_contracts']} registered master contracts",
        f"dead letters     {status['dead_letters']}",
        f"ignored logs     {status['ignored_logs']}",
        f"pending          {status['pending']}",
        f"outbox backlog   {status['outbox_backlog']}",
        f"schema           {status['schema']['current']} (head {status['schema']['head']})",
    ]
    return "\n".join(lines)
