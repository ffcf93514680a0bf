"""Randomized property test of the engine on real anvil nodes.

Random sequences of steps — mine 1..5 blocks of random AudiFi activity (masters, mints,
transfers, burns, dividends with extreme amounts, coins, spoofed logs from an untrusted
contract, malformed logs from a registered one) or a reorg of random depth 1..D with random
replacement transactions — and after *every* step the engine syncs and must hold:

* the stored event log equals the oracle's log of the canonical chain (tests/fixtures/truth.py);
* no step halted, the cursor is the node's head (number and hash; one harness in four runs
  with a few confirmations: the block that many below the head);
* the registered contracts are the first registrations of the canonical chain, and every dead
  letter sits in a canonical block (rollbacks leave nothing of an abandoned fork).

Backend rows (masters with or without IPO configs, coin artists, a wallet linked late) appear
at random moments, so events wait as pending and get applied (``Syncer.reconcile`` after every
sync, as the daemon does each poll). At the end of each harness the AudiFi domain tables must
equal a fresh index of the canonical chain into a new database with the same backend rows
(SPEC §4.1).

Activity runs on a handful of fresh anvil nodes (one database each) so that the state — and the
oracle's full re-read after every step — stays small.

The run is seeded: the seed is printed in every assertion message and in the summary; set
``AUDIFI_PROPERTY_SEED`` to replay a failure. ``-s`` shows the one-line summary.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from web3 import Web3
from web3.contract import Contract

from indexer.sync import Outcome, Syncer, SyncOptions, connect
from tests.fixtures.chains import AnvilNode, deploy, deploy_audifi, send_tx
from tests.fixtures.db import create_database, drop_database, fresh_database_name
from tests.fixtures.indexing import Harness, anvil_reorg, copy_backend_rows, domain_tables

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

FINALITY_DEPTH = 8
HARNESSES = 10
SEQUENCES_PER_HARNESS = 20
MAX_STEPS_PER_SEQUENCE = 4
MAX_TXS_PER_BLOCK = 4
UINT256_MAX = 2**256 - 1
ZERO_ADDRESS = "0x" + "00" * 20

TOPIC_TRANSFER = Web3.keccak(text="Transfer(address,address,uint256)")
TOPIC_REGISTERED = Web3.keccak(text="MasterRegistered(bytes16,address)")
TOPIC_DIVIDEND = Web3.keccak(text="DividendDeposited(bytes16,uint256)")
TOPIC_COIN = Web3.keccak(text="ArtistCoinDeployed(bytes16,address)")

Tx = dict[str, Any]
"""A transaction object without nonce: from, to, data, gas, value (``anvil_reorg`` shape)."""


def _seed() -> int:
    raw = os.environ.get("AUDIFI_PROPERTY_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def _word_address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _word_id(raw: bytes) -> bytes:
    return raw + bytes(16)


@dataclass
class Model:
    """What the canonical chain holds, rebuilt from the oracle's log after every step."""

    registered: list[str] = field(default_factory=list)
    first_registration: dict[str, tuple[int, int]] = field(default_factory=dict)
    tokens: dict[tuple[str, int], str] = field(default_factory=dict)
    master_ids: list[bytes] = field(default_factory=list)
    """Master ids of registrations (targets of deposits)."""
    row_ids: set[uuid.UUID] = field(default_factory=set)
    """Every master / artist id the chain mentions (candidates for backend rows)."""

    @classmethod
    def from_log(cls, rows: list[tuple[Any, ...]]) -> Model:
        model = cls()
        for block, _hash, _tx, log_index, address, event, args in rows:
            if event == "MasterRegistered":
                contract = args["contractAddress"]
                if contract not in model.first_registration:
                    model.first_registration[contract] = (block, log_index)
                    model.registered.append(contract)
                model.master_ids.append(uuid.UUID(args["masterId"]).bytes)
            if "masterId" in args or "artistId" in args:
                model.row_ids.add(uuid.UUID(args.get("masterId") or args["artistId"]))
            elif event == "Transfer":
                key = (address, int(args["tokenId"]))
                if args["to"] == ZERO_ADDRESS:
                    model.tokens.pop(key, None)
                else:
                    model.tokens[key] = args["to"]
        return model


@dataclass
class Stats:
    sequences: int = 0
    steps: int = 0
    mine_steps: int = 0
    blocks: int = 0
    txs: int = 0
    reorgs: int = 0
    deepest: int = 0
    events_checked: int = 0
    final_events: int = 0
    domain_rows: int = 0


class World:
    """One anvil node + database + engine, and a random driver of chain activity."""

    def __init__(self, harness: Harness, rng: random.Random, seed: int, label: str) -> None:
        self.h = harness
        self.rng = rng
        self.seed = seed
        self.label = label
        self.w3 = harness.w3
        c = harness.contracts
        self.owner: str = c.owner
        self.holders: list[str] = list(harness.node.accounts[1:5])
        self.registry, self.distributor, self.factory = c.registry, c.distributor, c.factory
        # Contracts deployed before the random phase (never reorged away).
        self.spoofer = deploy(self.w3, "EventForger")  # never registered
        self.forger = deploy(self.w3, "EventForger")  # registered at once
        self.late_forger = deploy(self.w3, "EventForger")  # may get registered later
        self.raw_shares = [
            deploy(self.w3, "MasterShares", "R", "R", self.owner, sender=self.owner)
            for _ in range(4)
        ]
        send_tx(self.w3, self.registry.functions.registerMaster(self._id(), self.forger.address))
        self.forgers = {
            a.lower() for a in (self.spoofer.address, self.forger.address, self.late_forger.address)
        }
        self.base = self.head()
        """Reorgs never reach below this block (the configured contracts live there)."""
        self.block_txs: dict[int, list[Tx]] = {}
        self.model = Model()
        self.rpc("evm_setAutomine", [False])
        # Backend rows: an artist, users for two holders' wallets (checksum case: owner_id
        # matches case-insensitively); masters and coin artists appear at random moments.
        self.artist = self._add_user(None)
        for wallet in self.holders[:2]:
            self._add_user(wallet)
        self.backend_ids: set[uuid.UUID] = set()
        self.late_wallet_linked = False

    # -- backend rows (what the AudiFi backend writes) -------------------------------------
    def _add_user(self, wallet: str | None, user_id: uuid.UUID | None = None) -> uuid.UUID:
        user_id = user_id or uuid.UUID(bytes=self._id())
        self.h.conn.execute(
            "INSERT INTO users (id, email, wallet_address) VALUES (%s, %s, %s)",
            (user_id, f"{user_id}@example.org", wallet),
        )
        return user_id

    def add_backend_rows(self) -> str:
        """Rows for master / artist ids seen on chain: their pending events get applied."""
        candidates = sorted(self.model.row_ids - self.backend_ids)
        added = []
        for row_id in self.rng.sample(candidates, min(len(candidates), self.rng.randint(1, 3))):
            self.backend_ids.add(row_id)
            conn = self.h.conn
            if self.rng.random() < 0.5:  # a master (with an IPO config half of the time)
                conn.execute(
                    "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Song')",
                    (row_id, self.artist),
                )
                if self.rng.random() < 0.5:
                    tiers = [self.rng.randint(0, 3) for _ in range(3)]
                    conn.execute(
                        "INSERT INTO ipo_configs (master_id, initial_price, total_supply, "
                        "tier1_count, tier2_count, tier3_count, tier1_royalty, tier2_royalty, "
                        "tier3_royalty, tier4_royalty) VALUES (%s, 0.1, 100, %s, %s, %s, "
                        "12.5, 6, 2.25, 0.5)",
                        (row_id, *tiers),
                    )
                added.append("master")
            else:  # an artist user (for coins)
                self._add_user(None, row_id)
                added.append("user")
        if not self.late_wallet_linked and self.rng.random() < 0.2:
            self._add_user(self.holders[2].lower())  # owner_id follows on existing shares
            self.late_wallet_linked = True
            added.append("wallet")
        return f"backend rows {added}"

    def _id(self) -> bytes:
        """A fresh master / artist id from the seeded generator (runs replay exactly)."""
        return self.rng.getrandbits(128).to_bytes(16, "big")

    # -- chain access ---------------------------------------------------------------------
    def rpc(self, method: str, params: list[Any]) -> Any:
        return self.h.node.rpc(method, params)

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def shares(self, address: str) -> Contract:
        return self.h.contracts.shares(address)

    def tx(self, contract: Contract, fn: str, args: list[Any], *, sender: str = "",
           gas: int = 300_000, value: int = 0) -> Tx:  # fmt: skip
        return {
            "from": sender or self.owner,
            "to": contract.address,
            "data": contract.encode_abi(fn, args=args),
            "gas": gas,
            "value": value,
        }

    # -- random activity ------------------------------------------------------------------
    def _token_id(self) -> int:
        r = self.rng.random()
        if r < 0.08:
            return UINT256_MAX - self.rng.randrange(3)
        if r < 0.12:
            return 0
        return self.rng.randrange(1, 2_000)

    def _amount(self) -> int:
        return self.rng.choice(
            [0, 1, UINT256_MAX, UINT256_MAX - 1, self.rng.randrange(2**256), 10**18]
        )

    def _master_id(self) -> bytes:
        if self.model.master_ids and self.rng.random() < 0.7:
            return self.rng.choice(self.model.master_ids)
        return self._id()

    def _any_shares(self) -> str:
        candidates = [a for a in self.model.registered if a not in self.forgers]
        candidates += [s.address.lower() for s in self.raw_shares]
        return self.rng.choice(candidates)

    def random_txs(self) -> list[Tx]:
        """One random action: usually one transaction, sometimes a bundle for one block."""
        if self.rng.random() < 0.06:
            return self._register_race()
        return [self.random_tx()]

    def _register_race(self) -> list[Tx]:
        """Transfers of a contract before, at and after its registration in one block."""
        rng = self.rng
        free = [s for s in self.raw_shares if s.address.lower() not in self.model.registered]
        target = rng.choice(free or self.raw_shares)
        before = self.tx(target, "mint", [rng.choice(self.holders), self._token_id()])
        register = self.tx(self.registry, "registerMaster", [self._id(), target.address])
        after = self.tx(target, "mint", [rng.choice(self.holders), self._token_id()])
        return [before, register, after]

    def random_tx(self) -> Tx:
        rng = self.rng
        kind = rng.choices(
            ["master", "master_mint", "register", "mint", "batch", "transfer", "burn",
             "deposit", "record", "coin", "spoof", "malformed"],
            weights=[5, 5, 3, 8, 4, 10, 5, 4, 5, 3, 6, 6],
        )[0]  # fmt: skip
        reg = self.registry
        if kind == "master":
            return self.tx(reg, "deployMaster", [self._id(), "M", "M"], gas=3_000_000)
        if kind == "master_mint":
            count = rng.randint(0, 6)
            first = self._token_id() if rng.random() < 0.3 else 1
            return self.tx(
                reg,
                "deployMasterAndMint",
                [self._id(), "M", "M", rng.choice(self.holders), first, count],
                gas=3_000_000 + 80_000 * count,
            )
        if kind == "register":
            target = rng.choice([*self.raw_shares, self.late_forger])
            if rng.random() < 0.2 and self.model.registered:  # register a known one again
                again = Web3.to_checksum_address(rng.choice(self.model.registered))
                return self.tx(reg, "registerMaster", [self._id(), again])
            return self.tx(reg, "registerMaster", [self._id(), target.address])
        if kind == "mint":
            shares = self.shares(self._any_shares())
            return self.tx(shares, "mint", [rng.choice(self.holders), self._token_id()])
        if kind == "batch":
            shares = self.shares(self._any_shares())
            count = rng.randint(1, 5)
            return self.tx(
                shares, "batchMint", [rng.choice(self.holders), self._token_id(), count],
                gas=100_000 + 80_000 * count,
            )  # fmt: skip
        if kind in ("transfer", "burn"):
            owned = [(k, o) for k, o in self.model.tokens.items() if k[0] not in self.forgers]
            if not owned:
                return self.tx(self.distributor, "record", [self._id(), self._amount()])
            (contract, token), holder = rng.choice(sorted(owned))
            shares = self.shares(contract)
            if kind == "burn":
                sender = rng.choice([self.owner, Web3.to_checksum_address(holder)])
                return self.tx(shares, "burn", [token], sender=sender)
            to = rng.choice([a for a in [self.owner, *self.holders] if a.lower() != holder])
            return self.tx(
                shares, "transferFrom", [Web3.to_checksum_address(holder), to, token],
                sender=Web3.to_checksum_address(holder),
            )  # fmt: skip
        if kind == "deposit":
            value = rng.choice([0, 1, rng.randrange(10**18)])
            return self.tx(self.distributor, "deposit", [self._master_id()], value=value)
        if kind == "record":
            return self.tx(self.distributor, "record", [self._master_id(), self._amount()])
        if kind == "coin":
            supply = rng.choice([0, 1, 10**24, UINT256_MAX])
            name = rng.choice(["Coin", "", "Ünïcødé coin"])
            return self.tx(
                self.factory, "deployCoin", [self._id(), name, "C", supply],
                gas=2_500_000,
            )  # fmt: skip
        if kind == "spoof":
            return self._spoof()
        return self._malformed()

    def _spoof(self) -> Tx:
        """AudiFi-shaped logs from a contract nobody trusts: ignored, never stored."""
        rng = self.rng
        target = rng.choice([*self.raw_shares, self.late_forger, self.spoofer]).address
        shapes = [
            ([TOPIC_REGISTERED, _word_id(self._id()), _word_address(target)], b""),
            ([TOPIC_DIVIDEND, _word_id(self._master_id())], self._amount().to_bytes(32, "big")),
            ([TOPIC_COIN, _word_id(self._id()), _word_address(target)], b""),
            ([TOPIC_TRANSFER, bytes(32), _word_address(self.holders[0]), (5).to_bytes(32, "big")],
             b""),
        ]  # fmt: skip
        return self._emit(self.spoofer, rng.sample(shapes, rng.randint(1, 3)))

    def _malformed(self) -> Tx:
        """Logs from a registered (or maybe registered) forger: events and dead letters."""
        rng = self.rng
        forger = self.forger if rng.random() < 0.7 else self.late_forger
        a, b = _word_address(rng.choice(self.holders)), _word_address(rng.choice(self.holders))
        bad_pad = b"\x01" + bytes(11) + a[12:]
        token = self._token_id().to_bytes(32, "big")
        shapes = [
            ([TOPIC_TRANSFER, a, b], (7).to_bytes(32, "big")),  # ERC-20 shaped Transfer
            ([TOPIC_TRANSFER, bad_pad, b, token], b""),  # address with non-zero padding
            ([TOPIC_TRANSFER, a], b""),
            ([], b"\x00" * rng.randint(0, 40)),  # LOG0
            ([rng.randbytes(32), a], rng.randbytes(rng.randint(0, 64))),  # unknown signature
            ([TOPIC_TRANSFER, bytes(32), a, token], b""),  # a valid ERC-721 mint
            ([TOPIC_DIVIDEND, _word_id(self._id())], (9).to_bytes(32, "big")),
            ([TOPIC_REGISTERED, _word_id(self._id()),
              _word_address(self.raw_shares[0].address)], b""),
        ]  # fmt: skip
        return self._emit(forger, rng.sample(shapes, rng.randint(1, 3)))

    def _emit(self, forger: Contract, logs: list[tuple[list[bytes], bytes]]) -> Tx:
        if len(logs) == 1:
            return self.tx(forger, "emitRaw", [logs[0][0], logs[0][1]], gas=200_000)
        topics, data = [t for t, _ in logs], [d for _, d in logs]
        return self.tx(forger, "emitMany", [topics, data], gas=400_000)

    # -- steps ----------------------------------------------------------------------------
    def mine(self, stats: Stats, k: int = 0) -> str:
        if not k:  # 1..5 blocks; now and then more than the window (backfill, then follow)
            burst = self.rng.random() < 0.06
            k = self.rng.randint(FINALITY_DEPTH + 1, 2 * FINALITY_DEPTH) if burst else 0
            k = k or self.rng.randint(1, 5)
        for _ in range(k):
            actions = self.rng.randint(0, MAX_TXS_PER_BLOCK)
            txs = [tx for _ in range(actions) for tx in self.random_txs()]
            self._mine_block(txs)
            stats.txs += len(txs)
        stats.blocks += k
        stats.mine_steps += 1
        return f"mine {k}"

    def _mine_block(self, txs: list[Tx]) -> None:
        nonces: dict[str, int] = {}
        hashes = []
        for tx in txs:
            sender = tx["from"]
            if sender not in nonces:
                nonces[sender] = int(self.w3.eth.get_transaction_count(sender, "latest"))
            request = {**tx, "gas": hex(tx["gas"]), "value": hex(tx["value"]),
                       "nonce": hex(nonces[sender])}  # fmt: skip
            nonces[sender] += 1
            hashes.append(self.rpc("eth_sendTransaction", [request]))
        self.rpc("evm_mine", [])
        number = self.head()
        for tx_hash in hashes:
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)
            assert receipt["blockNumber"] == number, self.fail_message("tx not in its block")
        self.block_txs[number] = txs

    def reorg(self, stats: Stats) -> str:
        head = self.head()
        depth = min(self.rng.randint(1, FINALITY_DEPTH), head - self.base)
        if depth < 1:
            return self.mine(stats)
        abandoned = [
            tx for n in range(head - depth + 1, head + 1) for tx in self.block_txs.get(n, [])
        ]
        mode = self.rng.choice(["none", "new", "resend", "resend", "mixed"])
        placed: list[tuple[Tx, int]] = []
        if mode in ("resend", "mixed"):
            kept = [tx for tx in abandoned if self.rng.random() < 0.8]
            placed += [(tx, self.rng.randrange(depth)) for tx in kept]
            self.rng.shuffle(placed)
        if mode in ("new", "mixed"):
            for _ in range(self.rng.randint(1, 5)):
                offset = self.rng.randrange(depth)
                placed += [(tx, offset) for tx in self.random_txs()]
        anvil_reorg(self.h.node, depth, placed)
        assert self.head() == head, self.fail_message("anvil_reorg changed the height")
        for offset in range(depth):
            self.block_txs[head - depth + 1 + offset] = [tx for tx, o in placed if o == offset]
        stats.reorgs += 1
        stats.txs += len(placed)
        stats.deepest = max(stats.deepest, depth)
        described = f"reorg depth {depth} ({mode}, {len(placed)} txs)"
        if self.rng.random() < 0.4:  # new blocks on the fork before the engine looks
            described += " + " + self.mine(stats, self.rng.randint(1, 3))
        return described

    def lagging(self, stats: Stats) -> str:
        """A fork while the engine is behind: more blocks than the window, a few engine steps
        (part backfill, part follow), then a reorg — the next sync meets both."""
        described = self.mine(stats, self.rng.randint(FINALITY_DEPTH + 1, 2 * FINALITY_DEPTH))
        steps = self.rng.randint(1, 3)
        for _ in range(steps):
            result = self.h.syncer.step()
            assert result.outcome is not Outcome.HALTED, self.fail_message(
                f"halted: {result.reason}", [described]
            )
        return f"{described} + {steps} engine steps + {self.reorg(stats)}"

    # -- the property ---------------------------------------------------------------------
    def fail_message(self, what: str, history: list[str] | None = None) -> str:
        tail = "; ".join((history or [])[-6:])
        return (
            f"{what} [{self.label}, AUDIFI_PROPERTY_SEED={self.seed}, head {self.head()}, "
            f"last steps: {tail}]"
        )

    def check(self, stats: Stats, history: list[str]) -> None:
        h = self.h
        results = h.sync()
        outcomes = [r.outcome for r in results]
        assert Outcome.HALTED not in outcomes, self.fail_message(
            f"halted: {results[-1].reason}", history
        )
        assert outcomes[-1] is Outcome.CAUGHT_UP, self.fail_message(
            f"did not catch up: {outcomes}", history
        )
        h.syncer.reconcile()  # what the daemon does once per poll
        expected = h.expected()
        stored = h.stored()
        if stored != expected:
            missing = [r for r in expected if r not in stored][:3]
            extra = [r for r in stored if r not in expected][:3]
            raise AssertionError(
                self.fail_message(
                    f"event log differs from the oracle: {len(stored)} stored vs "
                    f"{len(expected)} expected; missing {missing}; extra {extra}",
                    history,
                )
            )
        head = self.head()
        target = head - h.options.confirmations  # the head itself unless confirmations > 0
        state = h.state()
        node_hash = self.w3.eth.get_block(target)["hash"].to_0x_hex()
        assert (state.indexed_block, state.indexed_hash) == (target, node_hash), self.fail_message(
            f"cursor {state.head_ref} is not the node's block {(target, node_hash)}", history
        )
        self.model = Model.from_log(expected)
        contracts = dict(
            (r[0], (int(r[1]), int(r[2])))
            for r in h.conn.execute(
                "SELECT address, registered_block, registered_log_index FROM indexer_contracts "
                "WHERE chain_id = %s",
                (h.chain_id,),
            ).fetchall()
        )
        assert contracts == self.model.first_registration, self.fail_message(
            "registered contracts differ from the canonical first registrations", history
        )
        letters = h.conn.execute(
            "SELECT DISTINCT block_number, block_hash FROM indexer_dead_letters "
            "WHERE chain_id = %s",
            (h.chain_id,),
        ).fetchall()
        for number, block_hash in letters:
            canonical = self.w3.eth.get_block(int(number))["hash"].to_0x_hex()
            assert block_hash == canonical and number <= head, self.fail_message(
                f"dead letter in a non-canonical block {number} {block_hash}", history
            )
        stats.events_checked += len(expected)
        stats.steps += 1

    def run_sequences(self, count: int, stats: Stats) -> None:
        history: list[str] = []
        for seq in range(count):
            for _ in range(self.rng.randint(1, MAX_STEPS_PER_SEQUENCE)):
                r = self.rng.random()
                step = self.reorg if r < 0.3 else self.lagging if r < 0.4 else self.mine
                history.append(f"seq {seq}: {step(stats)}")
                if self.rng.random() < 0.25:
                    history.append(f"seq {seq}: {self.add_backend_rows()}")
                self.check(stats, history)
            stats.sequences += 1
        stats.final_events += len(self.h.stored())

    def check_fresh_index(self, url: str, stats: Stats) -> None:
        """SPEC §4.1: the domain tables equal a fresh index of the canonical chain (same
        backend rows, every one present from the start)."""
        h = self.h
        incremental = domain_tables(h.conn, coin_ids=False)
        with connect(url) as fresh:
            copy_backend_rows(h.conn, fresh)
            syncer = Syncer(h.source, fresh, h.chain_id, h.trust, h.options)
            for _ in range(100_000):
                if syncer.step().outcome is Outcome.CAUGHT_UP:
                    break
            syncer.reconcile()
            rebuilt = domain_tables(fresh, coin_ids=False)
        for table, rows in incremental.items():
            assert rows == rebuilt[table], self.fail_message(
                f"{table} differs from a fresh index: {len(rows)} rows vs {len(rebuilt[table])};"
                f" only incremental {[r for r in rows if r not in rebuilt[table]][:3]}; only "
                f"fresh {[r for r in rebuilt[table] if r not in rows][:3]}"
            )
        stats.domain_rows += sum(len(rows) for rows in incremental.values())


@pytest.fixture
def databases(pg_template: str) -> Iterator[list[str]]:
    """Two fresh databases per harness (its own, a fresh index), cloned up front."""
    names = [fresh_database_name() for _ in range(2 * HARNESSES)]
    urls = [create_database(name, template=pg_template) for name in names]
    yield urls
    for name in names:
        drop_database(name)


@pytest.mark.timeout(1200)  # bounded by its 200 sequences; 130-330 s on 2 cores seen so far
def test_random_sequences_keep_the_event_log_equal_to_the_oracle(
    anvil_factory: Callable[..., AnvilNode], databases: list[str]
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    stats = Stats()
    started = time.monotonic()
    for n in range(HARNESSES):
        node = anvil_factory()
        options = SyncOptions(
            finality_depth=FINALITY_DEPTH,
            confirmations=0 if n % 4 else rng.choice([1, 3]),
            near_head_range=rng.choice([1, 3, 16]),
            max_block_range=rng.choice([1, 4, 50]),
        )
        harness = Harness(node, deploy_audifi(node.w3), databases[2 * n], options)
        try:
            world = World(harness, rng, seed, f"harness {n} {options}")
            world.run_sequences(SEQUENCES_PER_HARNESS, stats)
            world.check_fresh_index(databases[2 * n + 1], stats)
        except Exception as exc:  # an engine error, not only a failed check: name the seed
            exc.add_note(f"AUDIFI_PROPERTY_SEED={seed} (harness {n} {options})")
            raise
        finally:
            harness.close()
            node.stop()
    elapsed = time.monotonic() - started
    assert stats.sequences >= 200
    print(
        f"\nproperty: sequences {stats.sequences}, steps {stats.steps} "
        f"({stats.mine_steps} mine: {stats.blocks} blocks, {stats.txs} txs; {stats.reorgs} "
        f"reorgs, deepest {stats.deepest}), max depth D={FINALITY_DEPTH}, events checked "
        f"{stats.events_checked} ({stats.final_events} in the final logs; domain rows equal to "
        f"a fresh index: {stats.domain_rows}), run time "
        f"{elapsed:.1f}s, seed {seed}"
    )
