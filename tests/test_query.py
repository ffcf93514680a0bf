"""The query module and ``audifi-indexer query`` on a database synced from a real anvil."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from indexer import query
from indexer.db import create_engine
from tests.fixtures.chains import send_tx
from tests.fixtures.indexing import Harness
from tests.test_projections import add_master, add_user

pytestmark = pytest.mark.anvil
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def synced(make_harness: Callable[..., Harness]) -> dict[str, Any]:
    h = make_harness()
    alice_w, bob_w = h.node.accounts[1], h.node.accounts[2]
    artist = add_user(h)
    alice = add_user(h, wallet=alice_w)
    master_id = uuid.uuid4()
    add_master(h, master_id, artist, tiers=(2, 2, 2, "10", "5", "3", "1"))
    registry = h.contracts.registry
    send_tx(h.w3, registry.functions.deployMasterAndMint(master_id.bytes, "M", "M", alice_w, 1, 5))
    h.sync()
    contract = h.conn.execute("SELECT contract_address FROM masters").fetchone()[0]
    shares = h.contracts.shares(h.w3.to_checksum_address(contract))
    send_tx(h.w3, shares.functions.transferFrom(alice_w, bob_w, 5), sender=alice_w)
    send_tx(h.w3, h.contracts.distributor.functions.record(master_id.bytes, 7))
    send_tx(h.w3, h.contracts.distributor.functions.record(master_id.bytes, 2**256 - 1))
    send_tx(h.w3, h.contracts.factory.functions.deployCoin(artist.bytes, "Star", "STR", 10**21))
    h.sync()
    return {
        "h": h,
        "master": master_id,
        "artist": artist,
        "alice": alice,
        "alice_w": alice_w,
        "bob_w": bob_w,
        "contract": contract,
    }


def test_python_api(synced: dict[str, Any]) -> None:
    h = synced["h"]
    engine = create_engine(h.database_url, pool_size=1)
    try:
        m = query.master(engine, synced["master"])
        assert m is not None and m.contract_address == synced["contract"]
        assert (m.shares_minted, m.shares_held, m.holders) == (5, 5, 2)
        assert m.dividends_total_wei == 7 + 2**256 - 1
        by_contract = query.master_by_contract(
            engine, synced["contract"].upper().replace("0X", "0x")
        )
        assert by_contract == m
        with engine.connect() as conn:  # a Connection works as well as an Engine
            page = query.holders(conn, synced["master"], limit=1)
        assert page.total == 2 and len(page.items) == 1
        top = page.items[0]
        assert top.wallet == synced["alice_w"].lower() and top.user_id == synced["alice"]
        assert top.token_ids == (1, 2, 3, 4) and top.tiers == (1, 1, 2, 2)
        assert top.royalty_percent == Decimal("30.00")
        second = query.holders(engine, synced["master"], limit=1, offset=1).items[0]
        assert second.wallet == synced["bob_w"].lower() and second.user_id is None
        mine = query.shares_of_wallet(engine, synced["alice_w"].upper().replace("0X", "0x"))
        assert [s.token_id for s in mine.items] == [1, 2, 3, 4]
        assert query.shares_of_user(engine, synced["alice"]).total == 4
        history = query.dividends(engine, synced["master"])
        assert [d.amount_wei for d in history.events] == [2**256 - 1, 7]
        assert history.total_wei == 2**256 + 6 and history.count == 2
        coin = query.artist_coin(engine, synced["artist"])
        assert coin is not None and (coin.name, coin.symbol) == ("Star", "STR")
        assert coin.total_supply == Decimal(1000)
        (status,) = query.sync_status(engine)
        assert status.indexed_block == h.head() and status.lag_blocks == 0
        assert status.pending == 0 and status.dead_letters == 0 and not status.halted
        events = query.recent_events(engine, limit=3)
        assert [e.event_type for e in events] == [
            "ArtistCoinDeployed", "DividendDeposited", "DividendDeposited",
        ]  # fmt: skip
        assert (
            query.recent_events(engine, event_type="Transfer", limit=100)[0].args["tokenId"] == "5"
        )
        # Empty results and missing rows
        assert query.master(engine, uuid.uuid4()) is None
        assert query.holders(engine, uuid.uuid4()).total == 0
        assert query.shares_of_wallet(engine, "0x" + "ab" * 20).items == ()
        assert query.artist_coin(engine, uuid.uuid4()) is None
        # Bad arguments
        with pytest.raises(query.QueryError, match="not a UUID"):
            query.master(engine, "nope")
        with pytest.raises(query.QueryError, match="not a 0x-prefixed"):
            query.shares_of_wallet(engine, "0x123")
        with pytest.raises(query.QueryError, match="limit must be between"):
            query.holders(engine, synced["master"], limit=0)
    finally:
        engine.dispose()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDIFI_DATABASE_URL": url}
    env.pop("AUDIFI_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "indexer", "query", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip


def test_cli(synced: dict[str, Any]) -> None:
    url = synced["h"].database_url
    master = str(synced["master"])
    table = _cli(url, "holders", master)
    assert table.returncode == 0, table.stderr
    assert "wallet" in table.stdout and synced["alice_w"].lower() in table.stdout
    assert "2 of 2 holders" in table.stdout
    doc = json.loads(_cli(url, "--json", "dividends", master).stdout)
    assert doc["total_wei"] == 2**256 + 6 and doc["count"] == 2
    assert json.loads(_cli(url, "--json", "master", synced["contract"]).stdout)["id"] == master
    # --json after the sub-command means the same
    assert json.loads(_cli(url, "master", synced["contract"], "--json").stdout)["id"] == master
    assert json.loads(_cli(url, "dividends", master, "--json").stdout) == doc
    shares = json.loads(_cli(url, "--json", "shares", "--wallet", synced["bob_w"]).stdout)
    assert [s["token_id"] for s in shares["items"]] == [5]
    assert json.loads(_cli(url, "--json", "coin", str(synced["artist"])).stdout)["symbol"] == "STR"
    status = json.loads(_cli(url, "--json", "status").stdout)
    assert status[0]["lag_blocks"] == 0
    events = _cli(url, "events", "--type", "Transfer", "--limit", "2")
    assert events.returncode == 0 and events.stdout.count("Transfer") == 2
    # Empty, missing and bad input
    quiet = uuid.uuid4()  # a master with no shares and no dividends yet
    add_master(synced["h"], quiet, synced["artist"])
    for what in ("holders", "dividends"):
        empty = _cli(url, what, str(quiet))
        assert empty.returncode == 0 and "(none)" in empty.stdout, empty.stderr
        unknown = _cli(url, what, str(uuid.uuid4()))  # docs/query.md: exit 1, not an empty list
        assert unknown.returncode == 1 and "no master" in unknown.stderr and not unknown.stdout
    missing = _cli(url, "master", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no master" in missing.stderr
    bad = _cli(url, "master", "not-a-uuid")
    assert bad.returncode == 2 and "not a UUID" in bad.stderr and "Traceback" not in bad.stderr
    both = _cli(url, "shares")
    assert both.returncode == 2 and "exactly one of --wallet or --user" in both.stderr
    usage = _cli(url, "holders")
    assert usage.returncode == 2 and "required" in usage.stderr
