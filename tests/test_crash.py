"""``kill -9`` at each point of a step (SPEC §4.3): the real daemon process is killed by a
failpoint (indexer/failpoints.py) at an exact point, restarted, and must end with no gap and no
duplicate — the event log equal to the oracle's, the AudiFi tables complete."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from indexer import store
from indexer.failpoints import POINTS
from indexer.sync import connect
from tests.fixtures.chains import AnvilNode, deploy_audifi, send_tx
from tests.fixtures.daemon import environ_without_audifi
from tests.fixtures.truth import TrustedSet, canonical_event_log

pytestmark = pytest.mark.anvil
ROOT = Path(__file__).resolve().parents[1]


def _daemon(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "indexer", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_each_point_of_a_step(
    point: str, anvil_factory: Callable[..., AnvilNode], database_url: str
) -> None:
    node = anvil_factory()
    c = deploy_audifi(node.w3)
    master = uuid.uuid4()
    with connect(database_url) as conn:
        conn.execute("INSERT INTO users (id, email) VALUES (%s, 'a@example.org')", (master,))
        conn.execute(
            "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 't')", (master, master)
        )
    send_tx(
        node.w3,
        c.registry.functions.deployMasterAndMint(master.bytes, "M", "M", node.accounts[1], 1, 30),
    )
    for i in range(10):
        send_tx(node.w3, c.distributor.functions.record(master.bytes, i))
    env = {
        **environ_without_audifi(),
        "AUDIFI_DATABASE_URL": database_url,
        "AUDIFI_RPC_URL": node.url,
        "AUDIFI_MASTER_REGISTRY": c.registry.address,
        "AUDIFI_DIVIDEND_CONTRACTS": c.distributor.address,
        "AUDIFI_COIN_FACTORY": c.factory.address,
        "AUDIFI_POLL_INTERVAL": "0.1",
        "AUDIFI_HTTP_PORT": "0",
        "AUDIFI_MAX_BLOCK_RANGE": "3",
        "AUDIFI_FINALITY_DEPTH": "4",
    }
    crashing = _daemon({**env, "AUDIFI_FAILPOINT": point})
    assert crashing.wait(timeout=60) == -signal.SIGKILL, crashing.stderr.read().decode()[-2000:]
    with connect(database_url) as conn:
        crashed_at = store.load_state(conn, int(node.w3.eth.chain_id))
    head = int(node.w3.eth.block_number)
    daemon = _daemon(env)
    try:
        deadline = time.monotonic() + 60
        with connect(database_url) as conn:
            while time.monotonic() < deadline:
                state = store.load_state(conn, int(node.w3.eth.chain_id))
                if state and state.indexed_block == head:
                    break
                time.sleep(0.1)
            assert state is not None and state.indexed_block == head
            chain_id = int(node.w3.eth.chain_id)
            stored = [tuple(r) for r in store.event_log(conn, chain_id)]
            trusted = TrustedSet(c.registry.address, (c.distributor.address,), c.factory.address)
            assert stored == canonical_event_log(node.w3, trusted, 0, head)
            duplicates = conn.execute(
                "SELECT count(*) - count(DISTINCT (block_number, log_index)) FROM indexer_events"
            ).fetchone()
            assert duplicates == (0,)
            shares = conn.execute("SELECT count(*), count(DISTINCT token_id) FROM nft_shares")
            assert shares.fetchone() == (30, 30)
            dividends = conn.execute("SELECT count(*) FROM dividend_events").fetchone()
            assert dividends == (10,)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    if point == "after_commit":
        assert crashed_at is not None and crashed_at.indexed_block is not None
    elif point in ("after_fetch", "mid_write", "before_commit"):
        # The first batch died before its commit: only the cursor row existed.
        assert crashed_at is not None and crashed_at.indexed_block is None
