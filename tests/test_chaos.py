"""The long randomized run (SPEC §4, all promises at once): at least 1,000 random steps of
{mine blocks with random AudiFi activity, reorg of random depth, RPC fault burst, crash and
restart} on a real anvil behind the fault proxy. After EVERY step the stored event log must
equal the oracle's log of the canonical chain; every 100 steps and at the end the AudiFi
tables must equal a rebuild from the event log, and at the end a fresh index into a new
database. Set AUDIFI_CHAOS_STEPS / AUDIFI_CHAOS_SEED to change the run.

Crashes are in-process: a failpoint raises at a random point of a step and the engine (and
its database connection, hence its open transaction) is thrown away — what ``kill -9`` does to
the database; tests/test_crash.py does the real ``kill -9`` at each point.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from indexer import failpoints, projections
from indexer.chain.errors import RpcError
from indexer.decode import TOPIC0, EventType
from indexer.sync import Outcome, Syncer, connect
from tests.fixtures.chains import deploy
from tests.fixtures.indexing import (
    Harness,
    anvil_reorg,
    domain_tables,
    fresh_serial_index,
    reorg_tx,
)
from tests.fixtures.rpc_proxy import RpcProxy
from tests.fixtures.truth import canonical_event_log, canonical_event_log_fast
from tests.test_projections import add_master, add_user

pytestmark = [pytest.mark.anvil, pytest.mark.slow, pytest.mark.timeout(1500)]
STEPS = int(os.environ.get("AUDIFI_CHAOS_STEPS", "1000"))
SEED = int(os.environ.get("AUDIFI_CHAOS_SEED", "20261125"))
DEPTH = 8


class Crash(Exception):
    """Stands for the process dying at a failpoint."""


@dataclass
class Stats:
    steps: int = 0
    mined: int = 0
    reorgs: int = 0
    max_depth: int = 0
    faults: int = 0
    crashes: int = 0
    transient_errors: int = 0
    mismatches: int = 0
    by_fault: dict[str, int] = field(default_factory=dict)


class World:
    def __init__(self, h: Harness, proxy: RpcProxy, rnd: random.Random) -> None:
        self.h, self.proxy, self.rnd = h, proxy, rnd
        self.artist = add_user(h)
        for wallet in h.node.accounts[1:4]:
            add_user(h, wallet=wallet)
        self.forger = deploy(h.w3, "EventForger")
        self.masters: list[tuple[uuid.UUID, Any]] = []
        self.tokens: dict[str, int] = {}

    def tx(self) -> dict[str, Any] | None:
        """A random transaction (as an anvil_reorg tx object, also sent normally)."""
        h, rnd = self.h, self.rnd
        owner, wallets = h.node.accounts[0], h.node.accounts[1:4]
        roll = rnd.random()
        if roll < 0.12 or not self.masters:
            master = uuid.uuid4()
            if rnd.random() < 0.8:  # sometimes the backend creates the row later (pending)
                add_master(h, master, self.artist)
            shares = deploy(h.w3, "MasterShares", "M", "M", owner)
            self.masters.append((master, shares))
            return reorg_tx(
                h.contracts.registry.functions.registerMaster(master.bytes, shares.address), owner
            )
        master, shares = rnd.choice(self.masters)
        if roll < 0.6:
            token = self.tokens.get(shares.address, 0) + 1
            self.tokens[shares.address] = token
            return reorg_tx(shares.functions.mint(rnd.choice(wallets), token), owner)
        if roll < 0.85:
            return reorg_tx(
                h.contracts.distributor.functions.record(master.bytes, rnd.randrange(2**256)), owner
            )
        if roll < 0.92:  # spoofed registry event from an untrusted contract
            topics = [
                bytes.fromhex(TOPIC0[EventType.MASTER_REGISTERED][2:]),
                master.bytes + bytes(16),
                bytes(12) + bytes.fromhex(shares.address[2:]),
            ]
            return reorg_tx(self.forger.functions.emitRaw(topics, b""), owner)
        return reorg_tx(
            h.contracts.factory.functions.deployCoin(uuid.uuid4().bytes, "C", "C", 10**18), owner
        )

    def send(self, tx: dict[str, Any]) -> None:
        tx_hash = self.h.w3.eth.send_transaction(tx)
        self.h.w3.eth.wait_for_transaction_receipt(tx_hash)

    def mine(self) -> None:
        for _ in range(self.rnd.randint(1, 3)):
            tx = self.tx()
            if tx is not None:
                self.send(tx)
        if self.rnd.random() < 0.3:
            self.h.node.mine(self.rnd.randint(1, 3))

    def reorg(self) -> int:
        head = self.h.head()
        depth = self.rnd.randint(1, min(DEPTH, max(1, head - 5)))
        txs = [self.tx() for _ in range(self.rnd.randint(0, 3))]
        replacement = [(tx, self.rnd.randrange(depth)) for tx in txs if tx is not None]
        anvil_reorg(self.h.node, depth, replacement)
        return depth

    def fault(self) -> str:
        kind = self.rnd.choice(["429", "503", "drop", "delay", "hash", "range", "garbage"])
        p = self.proxy
        if kind == "429":
            p.rate_limit_next(self.rnd.randint(1, 3), retry_after=0.05)
        elif kind == "503":
            p.fail_next(self.rnd.randint(1, 3), status=503)
        elif kind == "drop":
            p.drop_next(self.rnd.randint(1, 2))
        elif kind == "delay":
            p.delay(0.4, n=1)
        elif kind == "hash":
            p.rewrite_log_block_hash(once=True)
        elif kind == "range":
            p.too_many_results(
                self.rnd.randint(1, 4), hint=self.rnd.choice(["good", "useless", "none"])
            )  # type: ignore[arg-type]
        else:
            p.fail_next(1, status=200, body=b"<html>not json</html>")
        return kind


def _sync(h: Harness, stats: Stats, crash_at: str | None) -> None:
    """Step until caught up, as the daemon would: transient errors are retried."""
    original = failpoints.hit

    def hit(point: str) -> None:
        if point == crash_at:
            raise Crash(point)

    failpoints.hit = hit  # type: ignore[assignment]
    try:
        for _ in range(500):
            try:
                result = h.syncer.step()
            except Crash:
                stats.crashes += 1
                failpoints.hit = original  # type: ignore[assignment]
                h.conn.close()  # the process is gone: its transaction dies with it
                h.conn = connect(h.database_url)
                h.syncer = Syncer(h.source, h.conn, h.chain_id, h.trust, h.options)
                continue
            except RpcError:
                stats.transient_errors += 1
                continue
            if result.outcome is Outcome.CAUGHT_UP:
                h.syncer.reconcile()
                return
            assert result.outcome is not Outcome.HALTED, result.reason
        raise AssertionError("not caught up")
    finally:
        failpoints.hit = original  # type: ignore[assignment]


def _check_rebuild(h: Harness) -> None:
    incremental = domain_tables(h.conn)
    with h.conn.transaction(force_rollback=True):
        projections.rebuild(h.conn, h.chain_id)
        rebuilt = domain_tables(h.conn)
    assert rebuilt == incremental


def test_long_randomized_run(
    make_harness: Callable[..., Harness],
    rpc_proxy_factory: Callable[..., RpcProxy],
    pg_template: str,
) -> None:
    rnd = random.Random(SEED)
    h = make_harness(finality_depth=DEPTH, max_block_range=40, near_head_range=6)
    proxy = rpc_proxy_factory(h.node.url)
    # Short timeouts and backoff keep 1,000 steps within minutes; the policies are the same.
    h.use_rpc(proxy.url, timeout=0.3, max_attempts=8, backoff_base=0.01, backoff_max=0.1)
    world = World(h, proxy, rnd)
    stats = Stats()
    started = time.monotonic()
    for step in range(STEPS):
        roll = rnd.random()
        crash_at = None
        if roll < 0.55:
            world.mine()
            stats.mined += 1
        elif roll < 0.75 and h.head() > 6:
            depth = world.reorg()
            stats.reorgs += 1
            stats.max_depth = max(stats.max_depth, depth)
        elif roll < 0.9:
            kind = world.fault()
            stats.faults += 1
            stats.by_fault[kind] = stats.by_fault.get(kind, 0) + 1
            world.mine()
        else:
            crash_at = rnd.choice(failpoints.POINTS)
            world.mine()
        _sync(h, stats, crash_at)
        proxy.clear()
        stored = h.stored()
        expected = canonical_event_log_fast(h.node.url, h.trusted, 0, h.head())
        if stored != expected:
            stats.mismatches += 1
        assert stored == expected, f"step {step} (seed {SEED}): event log differs from the chain"
        if step % 100 == 99:
            _check_rebuild(h)
        stats.steps += 1
    # Final: the slow web3 oracle, rebuild, and a fresh index of the same chain.
    h.use_rpc(h.node.url)
    _sync(h, stats, None)
    assert h.stored() == canonical_event_log(h.w3, h.trusted, 0, h.head())
    _check_rebuild(h)
    fresh = fresh_serial_index(h, pg_template, reconcile=True)
    assert fresh["tables"] == domain_tables(h.conn, coin_ids=False)
    elapsed = time.monotonic() - started
    print(
        f"\nchaos: steps={stats.steps} seed={SEED} mined={stats.mined} reorgs={stats.reorgs} "
        f"max_depth={stats.max_depth} faults={stats.faults} {stats.by_fault} "
        f"crashes={stats.crashes} transient_errors={stats.transient_errors} "
        f"events={len(h.stored())} blocks={h.head()} mismatches={stats.mismatches} "
        f"time={elapsed:.1f}s"
    )
