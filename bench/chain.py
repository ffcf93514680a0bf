"""The benchmark chain: at least N AudiFi events over at least 50 master contracts, on anvil.

Building it takes a while (about 15 s per 100,000 events), so the finished chain is dumped
with ``anvil_dumpState`` into ``bench/cache/`` (git-ignored) and reloaded with
``--load-state`` on later runs; the cache key covers the size, the seed, the contracts'
source hash, the anvil version and this builder's version.

The chain (deterministic for a seed):

* block 1–3: the three configured contracts (registry, dividend distributor, coin factory);
* half of the masters are deployed and registered in one block, each minting its first
  shares in the same transaction (``deployMasterAndMint``); the other half are registered
  one by one over the first 60 % of the chain (so registrations land inside backfill ranges);
* every following block holds one ``batchMint`` (many mints in one transaction), single
  ``transferFrom`` calls by the holders, burns by the contract owner and dividend records:
  about 76 % mints, 13 % transfers, 3 % burns and 8 % dividends;
* a per-run *tail* mined after loading (:func:`mine_tail`): artist coins, whose ``eth_call``
  at their block needs a state that ``--load-state`` does not restore for old blocks.

anvil runs without persisted historical states (``--max-persisted-states 0``): a loaded
chain keeps only its last state, and every block mined afterwards keeps its own in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from bench.rpc import Rpc
from indexer.contracts import REPO_ROOT, load_artifact
from indexer.decode import TOPIC0, EventType
from indexer.devchain import AnvilNode, anvil_binary, deploy_audifi, start_anvil

BUILDER_VERSION = 3
CACHE_DIR = REPO_ROOT / "bench" / "cache"
GAS_LIMIT = 1_000_000_000
HOLDER_COUNT = 9
INITIAL_MINTS = 20
BULK_MASTERS = 60
ANVIL_ARGS = ("--gas-limit", str(GAS_LIMIT))

Say = Callable[[str], None]


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


_SEL = {
    name: _selector(sig)
    for name, sig in {
        "deployMasterAndMint": "deployMasterAndMint(bytes16,string,string,address,uint256,uint256)",
        "batchMint": "batchMint(address,uint256,uint256)",
        "transferFrom": "transferFrom(address,address,uint256)",
        "burn": "burn(uint256)",
        "record": "record(bytes16,uint256)",
        "deployCoin": "deployCoin(bytes16,string,string,uint256)",
    }.items()
}


def calldata(name: str, types: list[str], values: list[Any]) -> str:
    return "0x" + (_SEL[name] + encode(types, values)).hex()


@dataclass
class MasterInfo:
    id: str
    artist: str
    address: str = ""
    next_token: int = 1


@dataclass
class ChainInfo:
    """What the benchmark needs to know about a built chain (stored beside the state)."""

    key: str
    events_target: int
    seed: int
    registry: str
    distributor: str
    factory: str
    owner: str
    holders: list[str]
    masters: list[MasterInfo]
    artists: list[str]
    coin_artists: list[str]
    bulk_head: int
    bulk_counts: dict[str, int]
    bulk_logs: int
    build_seconds: float
    state_file: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bulk_events(self) -> int:
        return sum(self.bulk_counts.values())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def load(cls, path: Path) -> ChainInfo:
        raw = json.loads(path.read_text())
        raw["masters"] = [MasterInfo(**m) for m in raw["masters"]]
        return cls(**raw)


@dataclass(frozen=True)
class Plan:
    """How many of each event the bulk chain gets."""

    events: int
    masters: int
    blocks: int
    mints: int
    transfers: int
    burns: int
    dividends: int

    @classmethod
    def for_events(cls, events: int) -> Plan:
        masters = BULK_MASTERS if events >= 30_000 else max(2, min(BULK_MASTERS, events // 500))
        blocks = max(150, events // 64)
        rest = max(0, events - masters * (1 + INITIAL_MINTS))
        mints = round(rest * 0.76)
        transfers = round(rest * 0.13)
        burns = round(rest * 0.03)
        dividends = rest - mints - transfers - burns
        return cls(events, masters, blocks, mints, transfers, burns, dividends)


def _anvil_version() -> str:
    try:
        out = subprocess.run(
            [str(anvil_binary()), "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def cache_key(events: int, seed: int) -> str:
    digest = hashlib.sha256()
    for name in ("MasterRegistry", "MasterShares", "DividendDistributor", "ArtistCoinFactory"):
        digest.update(str(load_artifact(name).get("sourceHash")).encode())
    digest.update(f"{BUILDER_VERSION}:{events}:{seed}:{_anvil_version()}".encode())
    return digest.hexdigest()[:16]


def _share(parts: int, total: int, index: int) -> int:
    """The ``index``-th of ``parts`` near-equal integer shares of ``total``."""
    return (index + 1) * total // parts - index * total // parts


class _Builder:
    def __init__(self, rpc: Rpc, info: ChainInfo, rng: random.Random) -> None:
        self.rpc = rpc
        self.info = info
        self.rng = rng
        self.owner = info.owner
        self.holders = info.holders
        self.nonces: dict[str, int] = {}
        self.live: list[tuple[int, int]] = []
        """(master index, token id) of shares that exist and were minted in an earlier block."""
        self.live_index: dict[tuple[int, int], int] = {}
        self.owner_of: dict[tuple[int, int], str] = {}
        self.counts = {e.value: 0 for e in EventType}
        self.logs = 0
        self.pending_mints: list[tuple[tuple[int, int], str]] = []
        self.burned: list[tuple[int, int]] = []

    def nonce(self, sender: str) -> int:
        if sender not in self.nonces:
            self.nonces[sender] = int(
                self.rpc.call("eth_getTransactionCount", [sender, "pending"]), 16
            )
        value = self.nonces[sender]
        self.nonces[sender] = value + 1
        return value

    def tx(self, sender: str, to: str, data: str, gas: int) -> tuple[str, list[Any]]:
        return (
            "eth_sendTransaction",
            [
                {
                    "from": sender,
                    "to": to,
                    "data": data,
                    "gas": hex(gas),
                    "nonce": hex(self.nonce(sender)),
                }
            ],
        )

    def mine(self, txs: list[tuple[str, list[Any]]]) -> str:
        self.rpc.batch(txs)
        self.rpc.call("evm_mine", [])
        return str(self.rpc.call("eth_blockNumber", []))

    # -- activity ---------------------------------------------------------------------------
    def register(self, index: int) -> tuple[str, list[Any]]:
        master = self.info.masters[index]
        holder = self.rng.choice(self.holders)
        data = calldata(
            "deployMasterAndMint",
            ["bytes16", "string", "string", "address", "uint256", "uint256"],
            [uuid.UUID(master.id).bytes, f"Master {index}", f"M{index}", holder, 1, INITIAL_MINTS],
        )
        master.next_token = INITIAL_MINTS + 1
        self.pending_mints.extend(((index, t), holder) for t in range(1, INITIAL_MINTS + 1))
        self.counts[EventType.MASTER_REGISTERED.value] += 1
        self.counts[EventType.TRANSFER.value] += INITIAL_MINTS
        self.logs += 1 + INITIAL_MINTS + 2  # + OwnershipTransferred twice
        return self.tx(self.owner, self.info.registry, data, 3_000_000 + 60_000 * INITIAL_MINTS)

    def batch_mint(self, count: int, registered: list[int]) -> tuple[str, list[Any]]:
        index = self.rng.choice(registered)
        master = self.info.masters[index]
        holder = self.rng.choice(self.holders)
        first = master.next_token
        master.next_token += count
        self.pending_mints.extend(((index, t), holder) for t in range(first, first + count))
        self.counts[EventType.TRANSFER.value] += count
        self.logs += count
        data = calldata("batchMint", ["address", "uint256", "uint256"], [holder, first, count])
        return self.tx(self.owner, master.address, data, 100_000 + 60_000 * count)

    def _remove_live(self, share: tuple[int, int]) -> None:
        index = self.live_index.pop(share)
        last = self.live.pop()
        if index < len(self.live):
            self.live[index] = last
            self.live_index[last] = index

    def take_live(self, touched: set[tuple[int, int]]) -> tuple[int, int] | None:
        for _ in range(20):
            if not self.live:
                return None
            k = self.rng.randrange(len(self.live))
            share = self.live[k]
            if share not in touched:
                touched.add(share)
                return share
        return None

    def transfer(self, touched: set[tuple[int, int]]) -> tuple[str, list[Any]] | None:
        share = self.take_live(touched)
        if share is None:
            return None
        sender = self.owner_of[share]
        receiver = self.rng.choice([h for h in self.holders if h != sender])
        self.owner_of[share] = receiver
        master = self.info.masters[share[0]]
        data = calldata(
            "transferFrom", ["address", "address", "uint256"], [sender, receiver, share[1]]
        )
        self.counts[EventType.TRANSFER.value] += 1
        self.logs += 1
        return self.tx(sender, master.address, data, 150_000)

    def burn(self, touched: set[tuple[int, int]]) -> tuple[str, list[Any]] | None:
        share = self.take_live(touched)
        if share is None:
            return None
        self.burned.append(share)
        master = self.info.masters[share[0]]
        self.counts[EventType.TRANSFER.value] += 1
        self.logs += 1
        return self.tx(
            self.owner, master.address, calldata("burn", ["uint256"], [share[1]]), 150_000
        )

    def dividend(self) -> tuple[str, list[Any]]:
        master = self.rng.choice(self.info.masters)
        roll = self.rng.random()
        if roll < 0.01:
            amount = 2**256 - 1  # uint256 extremes travel exactly
        elif roll < 0.02:
            amount = 0
        else:
            amount = self.rng.randrange(10**15, 10**22)
        self.counts[EventType.DIVIDEND_DEPOSITED.value] += 1
        self.logs += 1
        data = calldata("record", ["bytes16", "uint256"], [uuid.UUID(master.id).bytes, amount])
        return self.tx(self.owner, self.info.distributor, data, 80_000)

    def settle(self, block: str, registering: list[int]) -> None:
        """After a block: its mints become transferable, its burns disappear."""
        for share, holder in self.pending_mints:
            self.owner_of[share] = holder
            self.live_index[share] = len(self.live)
            self.live.append(share)
        self.pending_mints = []
        for share in self.burned:
            self._remove_live(share)
            self.owner_of.pop(share, None)
        self.burned = []
        if registering:
            logs = self.rpc.call(
                "eth_getLogs",
                [{"fromBlock": block, "toBlock": block, "address": self.info.registry}],
            )
            by_id = {log["topics"][1][2:34]: "0x" + log["topics"][2][-40:] for log in logs}
            for index in registering:
                master = self.info.masters[index]
                master.address = by_id[uuid.UUID(master.id).hex]

    def run(self, plan: Plan, say: Say) -> None:
        first_half = (plan.masters + 1) // 2
        later = list(range(first_half, plan.masters))
        spread = max(1, int(plan.blocks * 0.6))
        schedule: dict[int, list[int]] = {}
        for k, index in enumerate(later):
            schedule.setdefault(1 + k * spread // max(1, len(later)), []).append(index)
        registered: list[int] = []
        initial = list(range(first_half))
        block = self.mine([self.register(i) for i in initial])
        self.settle(block, initial)
        registered.extend(initial)
        started = time.monotonic()
        for i in range(plan.blocks):
            touched: set[tuple[int, int]] = set()
            txs = [self.register(index) for index in schedule.get(i, [])]
            mints = _share(plan.blocks, plan.mints, i)
            if mints:
                txs.append(self.batch_mint(mints, registered))
            for _ in range(_share(plan.blocks, plan.transfers, i)):
                tx = self.transfer(touched)
                if tx is not None:
                    txs.append(tx)
            for _ in range(_share(plan.blocks, plan.burns, i)):
                tx = self.burn(touched)
                if tx is not None:
                    txs.append(tx)
            txs.extend(self.dividend() for _ in range(_share(plan.blocks, plan.dividends, i)))
            block = self.mine(txs)
            self.settle(block, schedule.get(i, []))
            registered.extend(schedule.get(i, []))
            if (i + 1) % 200 == 0:
                done = sum(self.counts.values())
                rate = done / (time.monotonic() - started)
                say(f"  chain: block {i + 1}/{plan.blocks}, {done} events ({rate:,.0f}/s)")


def _trusted_addresses(info: ChainInfo) -> list[str]:
    return [
        info.registry,
        info.distributor,
        info.factory,
        *(m.address for m in info.masters if m.address),
    ]


def count_logs(rpc: Rpc, info: ChainInfo, last: int) -> int:
    logs = rpc.call(
        "eth_getLogs",
        [{"fromBlock": "0x0", "toBlock": hex(last), "address": _trusted_addresses(info)}],
    )
    return len(logs)


def build(events: int, seed: int, say: Say) -> ChainInfo:
    """Build the bulk chain on a fresh anvil, dump it into the cache, return its info."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = cache_key(events, seed)
    plan = Plan.for_events(events)
    rng = random.Random(seed)
    started = time.monotonic()
    node = start_anvil(max_persisted_states=0, extra_args=ANVIL_ARGS)
    try:
        contracts = deploy_audifi(node.w3)
        accounts = [a.lower() for a in node.accounts]
        artists = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(12)]
        info = ChainInfo(
            key=key,
            events_target=events,
            seed=seed,
            registry=contracts.registry.address.lower(),
            distributor=contracts.distributor.address.lower(),
            factory=contracts.factory.address.lower(),
            owner=accounts[0],
            holders=accounts[1 : 1 + HOLDER_COUNT],
            masters=[
                MasterInfo(
                    id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    artist=artists[i % len(artists)],
                )
                for i in range(plan.masters)
            ],
            artists=artists,
            coin_artists=[str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(8)],
            bulk_head=0,
            bulk_counts={},
            bulk_logs=0,
            build_seconds=0.0,
            state_file=f"chain-{key}.json.gz",
        )
        rpc = Rpc(node.url)
        rpc.call("evm_setAutomine", [False])
        say(f"building the benchmark chain: {plan} (cached afterwards)")
        builder = _Builder(rpc, info, rng)
        builder.logs = count_logs(rpc, info, int(rpc.call("eth_blockNumber"), 16))  # Ownable
        builder.run(plan, say)
        info.bulk_head = int(rpc.call("eth_blockNumber"), 16)
        info.bulk_counts = builder.counts
        found = count_logs(rpc, info, info.bulk_head)
        if found != builder.logs:
            raise RuntimeError(
                f"the built chain has {found} logs of the trusted contracts, {builder.logs} "
                "were planned: a transaction reverted"
            )
        info.bulk_logs = found
        dump = rpc.call("anvil_dumpState")
        _write_atomically(CACHE_DIR / info.state_file, bytes.fromhex(dump[2:]))
        info.build_seconds = round(time.monotonic() - started, 1)
        _write_atomically(CACHE_DIR / f"chain-{key}.meta.json", info.to_json())
        say(
            f"built {info.bulk_events} events in {info.bulk_head} blocks in "
            f"{info.build_seconds:.0f}s; cached as bench/cache/{info.state_file}"
        )
        rpc.close()
        return info
    finally:
        node.stop()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a concurrent run never reads it half written."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def ensure_chain(events: int, seed: int, say: Say, rebuild: bool = False) -> ChainInfo:
    """The cached chain for (events, seed), built first when missing."""
    key = cache_key(events, seed)
    meta = CACHE_DIR / f"chain-{key}.meta.json"
    if meta.is_file() and not rebuild:
        info = ChainInfo.load(meta)
        if (CACHE_DIR / info.state_file).is_file():
            say(
                f"reusing the cached chain bench/cache/{info.state_file} "
                f"({info.bulk_events} events)"
            )
            return info
    return build(events, seed, say)


def start_node(info: ChainInfo) -> AnvilNode:
    """A fresh anvil with the cached chain loaded (automine off: the benchmark mines)."""
    compressed = CACHE_DIR / info.state_file
    plain = CACHE_DIR / f"chain-{info.key}.json"
    if not plain.is_file() or plain.stat().st_mtime < compressed.stat().st_mtime:
        _write_atomically(plain, gzip.decompress(compressed.read_bytes()))
    node = start_anvil(
        max_persisted_states=0, extra_args=[*ANVIL_ARGS, "--load-state", str(plain)], timeout=120
    )
    Rpc(node.url).call("evm_setAutomine", [False])
    return node


@dataclass
class Tail:
    coins: int
    dividends: int
    head: int


def mine_tail(node: AnvilNode, info: ChainInfo) -> Tail:
    """Per-run blocks after the loaded chain: the artist coins (their ``eth_call`` needs the
    block's state, which a loaded chain keeps only for new blocks) and a few dividends."""
    rpc = Rpc(node.url)
    builder = _Builder(rpc, info, random.Random(info.seed + 1))
    txs = []
    for k, artist in enumerate(info.coin_artists):
        data = calldata(
            "deployCoin",
            ["bytes16", "string", "string", "uint256"],
            [uuid.UUID(artist).bytes, f"Artist Coin {k}", f"AC{k}", (k + 1) * 10**24],
        )
        txs.append(builder.tx(info.owner, info.factory, data, 3_000_000))
    dividends = 8
    txs.extend(builder.dividend() for _ in range(dividends))
    builder.mine(txs)
    head = int(rpc.call("eth_blockNumber"), 16)
    rpc.close()
    return Tail(coins=len(info.coin_artists), dividends=dividends, head=head)


def audifi_topics() -> list[str]:
    return [TOPIC0[e] for e in EventType]
