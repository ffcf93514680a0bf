"""Reorgs on a real anvil node (``anvil_reorg`` really replaces the last blocks).

Every test ends with the stored event log equal to the oracle's log of the canonical chain.

    before:  … ─ A ─ B ─ C          (indexed up to C)
    after:   … ─ A ─ B'─ C'─ D'     (anvil_reorg depth 2 + new block)
    engine:  C' does not link to C → common ancestor A → roll back B, C → re-index B'…D'
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from indexer import recovery, store
from indexer.chain.http_source import HttpChainSource
from indexer.sync import Outcome, Syncer
from tests.fixtures.chains import deploy, send_tx
from tests.fixtures.indexing import Harness, anvil_reorg, reorg_tx

pytestmark = pytest.mark.anvil

MakeHarness = Callable[..., Harness]


def _record(h: Harness, amount: int) -> dict[str, object]:
    fn = h.contracts.distributor.functions.record(uuid.uuid4().bytes, amount)
    return reorg_tx(fn, h.node.accounts[0])


def _hashes(h: Harness) -> set[str]:
    return {r[1] for r in h.stored()}


def test_reorg_at_the_head_depth_one(make_harness: MakeHarness) -> None:
    h = make_harness()
    send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, 1))
    h.sync()
    abandoned = h.state().indexed_hash
    assert abandoned in _hashes(h)
    anvil_reorg(h.node, 1, [(_record(h, 2), 0)])
    results = h.sync()
    assert results[0].outcome is Outcome.REORG
    assert results[0].reorg_depth == 1
    assert h.stored() == h.expected()
    assert abandoned not in _hashes(h)
    assert [r[6]["amount"] for r in h.stored()] == ["2"]


@pytest.mark.parametrize("depth", [1, 2, 5, 8])
def test_reorg_of_every_depth_up_to_the_window(make_harness: MakeHarness, depth: int) -> None:
    h = make_harness(finality_depth=8)
    for i in range(10):
        send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, i))
    h.sync()
    before = h.state().indexed_block
    anvil_reorg(h.node, depth, [(_record(h, 1000 + k), k) for k in range(depth)])
    results = h.sync()
    reorgs = [r for r in results if r.outcome is Outcome.REORG]
    assert len(reorgs) == 1 and reorgs[0].reorg_depth == depth
    assert reorgs[0].ancestor == before - depth
    assert h.stored() == h.expected()
    assert sorted(int(r[6]["amount"]) for r in h.stored())[-depth:] == [
        1000 + k for k in range(depth)
    ]


def test_reorg_that_removes_a_registration_redone_later(make_harness: MakeHarness) -> None:
    h = make_harness()
    owner, alice = h.node.accounts[0], h.node.accounts[1]
    shares = deploy(h.w3, "MasterShares", "M", "M", owner, sender=owner)
    master_id = uuid.uuid4()
    send_tx(h.w3, h.contracts.registry.functions.registerMaster(master_id.bytes, shares.address))
    send_tx(h.w3, shares.functions.mint(alice, 1))
    h.sync()
    assert [r[5] for r in h.stored()] == ["MasterRegistered", "Transfer"]
    assert store.counts(h.conn, h.chain_id)["contracts"] == 1

    # The registration and the mint are reorged out; a mint lands instead (unregistered).
    anvil_reorg(h.node, 2, [(reorg_tx(shares.functions.mint(alice, 2), owner), 1)])
    h.sync()
    assert h.stored() == h.expected() == []
    assert store.counts(h.conn, h.chain_id)["contracts"] == 0

    # Registered again in a later block: only what follows the new registration counts.
    send_tx(h.w3, h.contracts.registry.functions.registerMaster(master_id.bytes, shares.address))
    send_tx(h.w3, shares.functions.mint(alice, 3))
    h.sync()
    stored = h.stored()
    assert stored == h.expected()
    assert [(r[5], r[6].get("tokenId")) for r in stored] == [
        ("MasterRegistered", None),
        ("Transfer", "3"),
    ]


def test_transaction_moved_to_another_block(make_harness: MakeHarness) -> None:
    h = make_harness()
    tx = _record(h, 77)
    receipt = send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, 5))
    h.node.mine(1)
    h.sync()
    # Reorg the last two blocks; the replacement puts a transaction in the *second* block.
    anvil_reorg(h.node, 2, [(tx, 1)])
    h.sync()
    stored = h.stored()
    assert stored == h.expected()
    assert len(stored) == 1
    assert stored[0][0] == receipt["blockNumber"] + 1
    assert stored[0][1] == h.w3.eth.get_block(receipt["blockNumber"] + 1)["hash"].to_0x_hex()


def test_reorg_during_backfill(make_harness: MakeHarness) -> None:
    h = make_harness(finality_depth=8, max_block_range=4, near_head_range=3)
    for i in range(30):
        send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, i))
    for _ in range(3):  # part of the backfill only
        assert h.syncer.step().outcome is Outcome.PROGRESSED
    assert h.state().indexed_block < h.head() - 8
    anvil_reorg(h.node, 5, [(_record(h, 5000), 2)])
    h.sync()
    assert h.stored() == h.expected()


def test_reorg_deeper_than_the_window_halts(make_harness: MakeHarness) -> None:
    h = make_harness(finality_depth=4)
    for i in range(12):
        send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, i))
    h.sync()
    indexed = h.stored()
    state = h.state()
    fork_point = state.indexed_block - 8
    anvil_reorg(h.node, 8, [(_record(h, 9000 + k), k) for k in range(8)])
    results = h.sync()
    assert results[-1].outcome is Outcome.HALTED
    assert "reorg deeper than the window" in results[-1].reason
    halted = h.state()
    assert halted.halted and halted.indexed_block == state.indexed_block
    assert h.stored() == indexed  # nothing written, nothing deleted
    # The halt is stored: a new engine on the same database stays halted.
    again = Syncer(h.source, h.conn, h.chain_id, h.trust, h.options)
    assert again.step().outcome is Outcome.HALTED

    # Operator recovery (docs/operations.md): rewind below the fork, clear the halt.
    result = recovery.rewind(h.conn, h.chain_id, fork_point, outbox=True)
    assert result.halt_cleared and result.removed["indexer_events"] > 0
    h.sync()
    assert not h.state().halted
    assert h.stored() == h.expected()


def test_node_behind_the_database_is_waited_for(
    make_harness: MakeHarness, anvil_factory: Callable[..., object]
) -> None:
    h = make_harness()
    for i in range(6):
        send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, i))
    h.sync()
    stored = h.stored()
    state = h.state()
    lagging = anvil_factory()  # a fresh node: its head is far below the stored head
    source = HttpChainSource([lagging.url])  # type: ignore[attr-defined]
    behind = Syncer(source, h.conn, h.chain_id, h.trust, h.options)
    for _ in range(3):
        result = behind.step()
        assert result.outcome is Outcome.NODE_BEHIND
    assert h.stored() == stored and h.state() == state
    source.close()
    # The real node is still in step.
    assert h.syncer.step().outcome is Outcome.CAUGHT_UP
