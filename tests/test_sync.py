"""The engine end to end on a real anvil node: every event type, trust, discovery, reorgs.

Each test drives its own anvil and database; after syncing, the stored event log must equal
the oracle's event log of the canonical chain (tests/fixtures/truth.py).
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from web3.logs import DISCARD

from indexer import store
from indexer.chain.http_source import HttpChainSource
from indexer.sync import Outcome, Syncer, SyncOptions, Trust
from tests.fixtures.chains import deploy, mine_in_one_block, send_tx
from tests.fixtures.indexing import Harness

pytestmark = pytest.mark.anvil

MakeHarness = Callable[..., Harness]


def _types(rows: list[tuple[Any, ...]]) -> list[str]:
    return [r[5] for r in rows]


def test_every_event_type_end_to_end(make_harness: MakeHarness) -> None:
    h = make_harness()
    alice, bob = h.node.accounts[1], h.node.accounts[2]
    master_id, shares = h.new_master(mint_to=alice, count=3)
    send_tx(h.w3, shares.functions.transferFrom(alice, bob, 2), sender=alice)
    send_tx(h.w3, shares.functions.burn(3), sender=alice)
    send_tx(h.w3, h.contracts.distributor.functions.deposit(master_id.bytes), value=10**18)
    artist = uuid.uuid4()
    send_tx(h.w3, h.contracts.factory.functions.deployCoin(artist.bytes, "Coin", "CN", 10**24))
    h.node.mine(3)

    results = h.sync()
    assert results[-1].outcome is Outcome.CAUGHT_UP
    stored = h.stored()
    assert stored == h.expected()
    assert _types(stored) == [
        "MasterRegistered", "Transfer", "Transfer", "Transfer", "Transfer", "Transfer",
        "DividendDeposited", "ArtistCoinDeployed",
    ]  # fmt: skip
    registered = stored[0][6]
    assert registered == {"masterId": str(master_id), "contractAddress": shares.address.lower()}
    burn = stored[5][6]
    assert burn == {"from": alice.lower(), "to": "0x" + "00" * 20, "tokenId": "3"}
    assert stored[6][6] == {"masterId": str(master_id), "amount": str(10**18)}
    state = h.state()
    assert state.indexed_block == h.head()
    assert state.indexed_hash == h.w3.eth.get_block(h.head())["hash"].to_0x_hex()


def test_spoofed_events_are_ignored_and_counted(make_harness: MakeHarness) -> None:
    h = make_harness()
    forger = deploy(h.w3, "EventForger")
    master_id = uuid.uuid4()
    from indexer.decode import TOPIC0, EventType

    word = "0x" + master_id.bytes.hex() + "00" * 16
    addr_word = "0x" + "00" * 12 + forger.address.lower()[2:]
    for event, topics, data in (
        (EventType.MASTER_REGISTERED, [word, addr_word], b""),
        (EventType.DIVIDEND_DEPOSITED, [word], (5).to_bytes(32, "big")),
        (EventType.ARTIST_COIN_DEPLOYED, [word, addr_word], b""),
    ):
        all_topics = [bytes.fromhex(t[2:]) for t in [TOPIC0[event], *topics]]
        send_tx(h.w3, forger.functions.emitRaw(all_topics, data))
    h.sync()
    assert h.stored() == [] == h.expected()
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == 3
    counts = store.counts(h.conn, h.chain_id)
    assert counts["dead_letters"] == 0 and counts["contracts"] == 0


@pytest.mark.parametrize("count_spoofed", [True, False], ids=["counted", "not_fetched"])
@pytest.mark.parametrize("blocks_after", [0, 20], ids=["near_head", "backfilled"])
def test_spoofed_share_transfers_are_ignored_and_counted(
    make_harness: MakeHarness, blocks_after: int, count_spoofed: bool
) -> None:
    """SPEC §2: a contract no registry registered that emits share ``Transfer`` logs (the
    ERC-721 shape: a copy of MasterShares minting, a forger) is ignored and counted, near the
    head and in a backfill alike. ERC-20 ``Transfer`` logs (3 topics: every token's, here a
    forger's and an artist coin's mint) are not AudiFi-shaped: dropped, not counted. With
    ``count_spoofed_transfers`` off, ``Transfer`` is fetched from registered contracts only."""
    from indexer.decode import TOPIC0, EventType

    h = make_harness()
    if not count_spoofed:
        h.syncer.trust = dataclasses.replace(h.trust, count_spoofed_transfers=False)
    owner, holder = h.node.accounts[0], h.node.accounts[1]
    rogue = deploy(h.w3, "MasterShares", "Rogue", "R", owner)
    send_tx(h.w3, rogue.functions.mint(holder, 1))
    send_tx(h.w3, rogue.functions.mint(holder, 2))
    forger = deploy(h.w3, "EventForger")
    transfer = bytes.fromhex(TOPIC0[EventType.TRANSFER][2:])
    to_word = bytes(12) + bytes.fromhex(holder[2:])
    seven = (7).to_bytes(32, "big")
    send_tx(h.w3, forger.functions.emitRaw([transfer, bytes(32), to_word, seven], b""))
    send_tx(h.w3, forger.functions.emitRaw([transfer, bytes(32), to_word], seven))
    send_tx(h.w3, h.contracts.factory.functions.deployCoin(uuid.uuid4().bytes, "C", "C", 10**20))
    h.node.mine(blocks_after)
    results = h.sync()
    if blocks_after:  # the spoofs are final blocks: fetched by the backfill
        assert any(r.to_block and r.to_block <= h.head() - 8 for r in results), results
    stored = h.stored()
    assert stored == h.expected()
    assert _types(stored) == ["ArtistCoinDeployed"]
    ignored = h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0]
    assert ignored == (3 if count_spoofed else 0)
    counts = store.counts(h.conn, h.chain_id)
    assert counts["dead_letters"] == 0 and counts["contracts"] == 0
    assert h.conn.execute("SELECT count(*) FROM nft_shares").fetchone()[0] == 0


@pytest.mark.parametrize("count_spoofed", [True, False], ids=["spoofs_counted", "spoofs_unseen"])
def test_logs_before_a_registration_are_ignored_and_counted(
    make_harness: MakeHarness, count_spoofed: bool
) -> None:
    """SPEC §8: a share contract's logs before its registration leave no row, only a count —
    those of earlier blocks (fetched once, when the registration is seen) and those of the
    registration's own block; whichever filters fetch the range
    (``count_spoofed_transfers``)."""
    h = make_harness()
    h.syncer.trust = dataclasses.replace(h.trust, count_spoofed_transfers=count_spoofed)
    owner = h.node.accounts[0]
    shares = deploy(h.w3, "MasterShares", "Early", "E", owner)
    holder = h.node.accounts[1]
    for token in (1, 2, 3):
        send_tx(h.w3, shares.functions.mint(holder, token))  # three blocks before it
    h.node.mine(2)
    registered = send_tx(
        h.w3, h.contracts.registry.functions.registerMaster(uuid.uuid4().bytes, shares.address)
    )
    send_tx(h.w3, shares.functions.mint(holder, 4))  # trusted from here on
    h.sync()
    assert h.stored() == h.expected()
    assert _types(h.stored()) == ["MasterRegistered", "Transfer"]
    early = h.w3.eth.get_logs(
        {"address": shares.address, "fromBlock": 0, "toBlock": registered["blockNumber"] - 1}
    )
    assert len(early) == 4  # the three mints and Ownable's OwnershipTransferred at deployment
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == len(early)
    counts = store.counts(h.conn, h.chain_id)
    assert counts["dead_letters"] == 0 and counts["contracts"] == 1


class FirstCountAnsweredEmpty:
    """A chain source whose first best-effort ``eth_getLogs`` (``fetch_once``: the count of a
    contract's logs before its registration) is answered ``[]`` by a node lagging in its log
    index; everything else goes to the good node."""

    def __init__(self, good: HttpChainSource) -> None:
        self.good, self.lagged = good, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.good, name)

    def fetch_once(self, filters: Any, header_numbers: Any) -> Any:
        groups, headers = self.good.fetch_once(filters, header_numbers)
        if not self.lagged:
            self.lagged = True
            return [[] for _ in groups], headers
        return groups, headers


@pytest.mark.parametrize("count_spoofed", [True, False], ids=["spoofs_counted", "spoofs_unseen"])
def test_logs_before_a_registration_counted_past_a_lagging_answer(
    make_harness: MakeHarness, count_spoofed: bool
) -> None:
    """The count of a contract's logs before its registration is one best-effort
    ``eth_getLogs``; an empty answer from a lagging node is asked again (found by a fault
    soak: the logs went uncounted, and nothing was logged)."""
    h = make_harness()
    h.use_source(FirstCountAnsweredEmpty(HttpChainSource([h.node.url])))
    h.syncer.trust = dataclasses.replace(h.trust, count_spoofed_transfers=count_spoofed)
    shares = deploy(h.w3, "MasterShares", "Early", "E", h.node.accounts[0])
    send_tx(h.w3, shares.functions.mint(h.node.accounts[1], 1))
    h.node.mine(1)
    send_tx(h.w3, h.contracts.registry.functions.registerMaster(uuid.uuid4().bytes, shares.address))
    h.sync()
    assert h.source.lagged
    # OwnershipTransferred at deployment and the mint
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == 2


class HeaderLog:
    """A chain source that records the block numbers whose headers were asked for."""

    def __init__(self, good: HttpChainSource) -> None:
        self.good, self.asked = good, set[int]()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.good, name)

    def fetch(self, filters: Any, header_numbers: Any) -> Any:
        self.asked.update(header_numbers)
        return self.good.fetch(filters, header_numbers)

    def headers(self, numbers: Any) -> Any:
        self.asked.update(numbers)
        return self.good.headers(numbers)


def test_backfill_asks_no_header_for_blocks_of_untrusted_logs_only(
    make_harness: MakeHarness,
) -> None:
    """Spoofed transfers counted (the default): every token's ``Transfer`` is fetched, but a
    final block holding only untrusted logs gets no header request — they are only counted
    (found by review: on a chain with other tokens that was nearly every block). The blocks of
    trusted events still get theirs (their block time)."""
    from indexer.decode import TOPIC0, EventType

    h = make_harness(prefetch=False)
    h.use_source(HeaderLog(HttpChainSource([h.node.url])))
    forger = deploy(h.w3, "EventForger")
    transfer = bytes.fromhex(TOPIC0[EventType.TRANSFER][2:])
    word = bytes(12) + bytes.fromhex(h.node.accounts[1][2:])
    h.node.mine(2)
    spoofs = [
        send_tx(h.w3, forger.functions.emitRaw([transfer, bytes(32), word, word], b""))
        for _ in range(3)
    ]
    h.node.mine(2)
    deposit = send_tx(h.w3, h.contracts.distributor.functions.record(uuid.uuid4().bytes, 5))
    h.node.mine(20)  # all of it final: backfilled
    h.sync()
    assert h.stored() == h.expected()
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == 3
    assert deposit["blockNumber"] in h.source.asked
    assert not {r["blockNumber"] for r in spoofs} & h.source.asked


@pytest.mark.parametrize("count_spoofed", [True, False], ids=["spoofs_counted", "spoofs_unseen"])
def test_logs_before_registrations_are_counted_once(
    make_harness: MakeHarness, count_spoofed: bool
) -> None:
    """Two contracts registered at different blocks, with logs before, between and after the
    registrations, one of them carrying an AudiFi signature (fetched from any emitter): every
    log before its contract's registration is counted exactly once."""
    from indexer.decode import TOPIC0, EventType

    h = make_harness()
    h.syncer.trust = dataclasses.replace(h.trust, count_spoofed_transfers=count_spoofed)
    owner, holder = h.node.accounts[0], h.node.accounts[1]
    registry = h.contracts.registry.functions
    shares = deploy(h.w3, "MasterShares", "Early", "E", owner)
    forger = deploy(h.w3, "EventForger")
    dividend = [bytes.fromhex(TOPIC0[EventType.DIVIDEND_DEPOSITED][2:]), bytes(32)]
    other = [bytes.fromhex("ab" * 32)]
    send_tx(h.w3, shares.functions.mint(holder, 1))
    send_tx(h.w3, forger.functions.emitRaw(dividend, (5).to_bytes(32, "big")))  # any emitter
    send_tx(h.w3, forger.functions.emitRaw(other, b""))
    first = send_tx(h.w3, registry.registerMaster(uuid.uuid4().bytes, shares.address))
    send_tx(h.w3, shares.functions.mint(holder, 2))
    send_tx(h.w3, forger.functions.emitRaw(other, b""))  # between the two registrations
    send_tx(h.w3, forger.functions.emitRaw(dividend, (6).to_bytes(32, "big")))
    second = send_tx(h.w3, registry.registerMaster(uuid.uuid4().bytes, forger.address))
    h.sync()
    assert h.stored() == h.expected()

    def logs_before(address: str, block: int) -> int:
        return len(h.w3.eth.get_logs({"address": address, "fromBlock": 0, "toBlock": block - 1}))

    expected = logs_before(shares.address, first["blockNumber"]) + logs_before(
        forger.address, second["blockNumber"]
    )
    assert expected == 2 + 4
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == expected


@pytest.mark.parametrize("count_spoofed", [True, False], ids=["spoofs_counted", "spoofs_unseen"])
def test_registered_contracts_other_logs(make_harness: MakeHarness, count_spoofed: bool) -> None:
    """The trade-off of ``count_spoofed_transfers`` for a registered contract's logs that are
    not ``Transfer``: on (the default), the range is fetched by signature, and a registered
    contract's other logs (``Approval``, an unknown signature) are not fetched — no row, no
    dead letter, no count; its malformed ``Transfer`` is still a dead letter. Off, every log of
    a registered contract is fetched: the unknown signature becomes a dead letter."""
    from indexer.decode import TOPIC0, EventType

    h = make_harness()
    h.syncer.trust = dataclasses.replace(h.trust, count_spoofed_transfers=count_spoofed)
    owner, holder = h.node.accounts[0], h.node.accounts[1]
    forger = deploy(h.w3, "EventForger")
    send_tx(h.w3, h.contracts.registry.functions.registerMaster(uuid.uuid4().bytes, forger.address))
    erc20 = [bytes.fromhex(TOPIC0[EventType.TRANSFER][2:]), bytes(32), bytes(32)]
    send_tx(h.w3, forger.functions.emitRaw(erc20, (7).to_bytes(32, "big")))
    send_tx(h.w3, forger.functions.emitRaw([bytes.fromhex("ab" * 32)], b""))
    rogue = deploy(h.w3, "MasterShares", "Mine", "M", owner)
    send_tx(h.w3, h.contracts.registry.functions.registerMaster(uuid.uuid4().bytes, rogue.address))
    send_tx(h.w3, rogue.functions.mint(holder, 1))
    send_tx(h.w3, rogue.functions.approve(owner, 1), holder)
    h.sync()
    assert h.stored() == h.expected()
    reasons = [
        row[0]
        for row in h.conn.execute(
            "SELECT reason FROM indexer_dead_letters ORDER BY block_number, log_index"
        ).fetchall()
    ]
    assert len(reasons) == (1 if count_spoofed else 2)
    assert "Transfer with 3 topics" in reasons[0]
    if not count_spoofed:
        assert "unknown event signature" in reasons[1]
    # only the share contract's OwnershipTransferred at deployment, before its registration
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == 1


def test_log_counted_in_an_earlier_batch_is_not_counted_again(make_harness: MakeHarness) -> None:
    """A contract's AudiFi-signature log (fetched from every emitter) is counted by the batch
    holding it; the contract's registration, indexed later, counts only its other logs."""
    from indexer.decode import TOPIC0, EventType

    h = make_harness()
    forger = deploy(h.w3, "EventForger")
    dividend = [bytes.fromhex(TOPIC0[EventType.DIVIDEND_DEPOSITED][2:]), bytes(32)]
    send_tx(h.w3, forger.functions.emitRaw(dividend, (5).to_bytes(32, "big")))
    send_tx(h.w3, forger.functions.emitRaw([bytes.fromhex("cd" * 32)], b""))
    h.sync()
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == 1
    registered = send_tx(
        h.w3, h.contracts.registry.functions.registerMaster(uuid.uuid4().bytes, forger.address)
    )
    h.sync()
    assert h.stored() == h.expected()
    before = h.w3.eth.get_logs(
        {"address": forger.address, "fromBlock": 0, "toBlock": registered["blockNumber"] - 1}
    )
    assert len(before) == 2
    assert h.conn.execute("SELECT ignored_logs FROM indexer_state").fetchone()[0] == 2


def test_registration_and_mints_in_the_same_block(make_harness: MakeHarness) -> None:
    h = make_harness()
    master_id = uuid.uuid4()
    registry = h.contracts.registry
    receipt = send_tx(
        h.w3,
        registry.functions.deployMasterAndMint(master_id.bytes, "M", "M", h.node.accounts[1], 1, 4),
    )
    h.sync()
    stored = h.stored()
    assert stored == h.expected()
    assert {r[0] for r in stored} == {receipt["blockNumber"]}
    assert _types(stored) == ["MasterRegistered"] + ["Transfer"] * 4


def test_erc20_transfer_never_mistaken_for_erc721(make_harness: MakeHarness) -> None:
    h = make_harness()
    # A coin's ERC-20 Transfer (3 topics) comes from an untrusted address: never fetched.
    artist = uuid.uuid4()
    send_tx(h.w3, h.contracts.factory.functions.deployCoin(artist.bytes, "C", "C", 10**20))
    # A registered contract that emits an ERC-20-shaped Transfer: dead letter, not a share.
    forger = deploy(h.w3, "EventForger")
    send_tx(h.w3, h.contracts.registry.functions.registerMaster(uuid.uuid4().bytes, forger.address))
    from indexer.decode import TOPIC0, EventType

    t0 = bytes.fromhex(TOPIC0[EventType.TRANSFER][2:])
    from_word = bytes(12) + bytes.fromhex(h.node.accounts[1][2:])
    to_word = bytes(12) + bytes.fromhex(h.node.accounts[2][2:])
    send_tx(h.w3, forger.functions.emitRaw([t0, from_word, to_word], (7).to_bytes(32, "big")))
    h.sync()
    stored = h.stored()
    assert stored == h.expected()
    assert _types(stored) == ["ArtistCoinDeployed", "MasterRegistered"]
    letters = h.conn.execute("SELECT reason, topics FROM indexer_dead_letters").fetchall()
    assert len(letters) == 1
    assert "Transfer with 3 topics, expected 4" in letters[0][0]


def test_backfill_then_live_hand_over(make_harness: MakeHarness) -> None:
    h = make_harness(max_block_range=7)
    for _ in range(5):
        h.new_master(count=2)
        h.node.mine(6)
    results = h.sync()
    modes = {r.outcome for r in results}
    assert Outcome.PROGRESSED in modes
    assert h.stored() == h.expected()
    # Live: more blocks one by one.
    for _ in range(4):
        h.new_master(count=1)
        h.sync()
        assert h.stored() == h.expected()
    window = store.load_window(h.conn, h.chain_id)
    assert window[0].number == h.head()
    assert len(window) <= h.options.finality_depth + 1


def test_mined_in_one_block_several_transactions(make_harness: MakeHarness) -> None:
    h = make_harness()
    master_id, shares = h.new_master()
    alice = h.node.accounts[1]
    mine_in_one_block(
        h.w3,
        [
            shares.functions.mint(alice, 10),
            h.contracts.distributor.functions.record(master_id.bytes, 2**256 - 1),
            shares.functions.mint(alice, 11),
        ],
    )
    h.sync()
    stored = h.stored()
    assert stored == h.expected()
    assert [r[6].get("amount") for r in stored if r[5] == "DividendDeposited"] == [str(2**256 - 1)]


@pytest.mark.parametrize("chain", ["eth_tester"], indirect=True)
def test_same_engine_on_eth_tester(chain: Any, database_url: str) -> None:
    """The in-process eth-tester chain through web3: several transactions in one block (its
    per-transaction logIndex is renumbered block-wide by the source)."""
    from indexer.chain.web3_source import Web3ChainSource
    from indexer.sync import Syncer, SyncOptions, Trust, connect
    from tests.fixtures.chains import deploy_audifi
    from tests.fixtures.truth import TrustedSet, canonical_event_log

    w3 = chain.w3
    c = deploy_audifi(w3)
    alice = chain.accounts[1]
    master_id = uuid.uuid4()
    receipt = send_tx(
        w3, c.registry.functions.deployMasterAndMint(master_id.bytes, "M", "M", alice, 1, 3)
    )
    shares = c.shares(
        c.registry.events.MasterRegistered().process_receipt(receipt, errors=DISCARD)[0]["args"][
            "contractAddress"
        ]
    )
    mine_in_one_block(
        w3,
        [
            shares.functions.mint(alice, 10),
            c.distributor.functions.record(master_id.bytes, 5),
            (shares.functions.transferFrom(alice, chain.accounts[2], 10), alice),
        ],
    )
    trust = Trust(
        registry=c.registry.address.lower(),
        dividends=frozenset({c.distributor.address.lower()}),
        coin_factory=c.factory.address.lower(),
    )
    with connect(database_url) as conn:
        syncer = Syncer(Web3ChainSource(w3), conn, int(w3.eth.chain_id), trust, SyncOptions())
        while syncer.step().outcome is not Outcome.CAUGHT_UP:
            pass
        stored = [tuple(r) for r in store.event_log(conn, int(w3.eth.chain_id))]
    trusted = TrustedSet(c.registry.address, (c.distributor.address,), c.factory.address)
    expected = canonical_event_log(w3, trusted, 0, int(w3.eth.block_number))
    assert stored == expected
    assert [r[5] for r in stored] == ["MasterRegistered"] + ["Transfer"] * 4 + [
        "DividendDeposited",
        "Transfer",
    ]
    last_block = [r for r in stored if r[0] == stored[-1][0]]
    assert [r[3] for r in last_block] == sorted({r[3] for r in last_block})  # distinct indexes


class _Cloneable:
    def clone(self) -> _Cloneable:
        return _Cloneable()


@pytest.mark.parametrize(
    ("before", "prefetch", "source", "after"),
    [
        (0.005, True, _Cloneable(), 0.0005),  # Python's default: lowered
        (0.0001, True, _Cloneable(), 0.0001),  # already shorter: kept
        (0.005, False, _Cloneable(), 0.005),  # no prefetch thread, nothing to contend with
        (0.005, True, object(), 0.005),  # a source that cannot clone itself never prefetches
    ],
)
def test_prefetching_engine_shortens_the_gil_switch_interval(
    before: float, prefetch: bool, source: object, after: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main thread's PostgreSQL answers must not wait long behind the prefetch thread's
    decoding: an engine that can prefetch lowers the switch interval, never raises it."""
    monkeypatch.setattr(sys, "getswitchinterval", lambda: before)
    set_to: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", set_to.append)
    options = SyncOptions(prefetch=prefetch)
    Syncer(cast(Any, source), cast(Any, None), 1, Trust(None, frozenset(), None), options)
    assert (set_to[-1] if set_to else before) == after
