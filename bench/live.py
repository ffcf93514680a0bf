"""The live path and reorg recovery, with the real daemon (``python -m indexer run``).

After the backfill the daemon is started on the same database and chain. A watcher thread
reads the cursor (``indexer_state``) every 2 ms: a block's rows are visible exactly when the
cursor has reached it, since rows and cursor commit in one transaction.

* **Live**: every ``interval`` seconds the benchmark sends a few transactions (a batch mint,
  transfers of shares minted a few blocks earlier, dividends) and mines them into a block
  (``evm_mine``); the latency of a block is the time from ``evm_mine`` returning to the first
  cursor read at or past it.
* **Reorgs**: for each depth, a few blocks with events are mined and indexed, then
  ``anvil_reorg`` replaces the last ``depth`` blocks with blocks holding other transactions
  (new dividends, new mints). The recovery time runs from ``anvil_reorg`` returning to the
  cursor holding the new head's hash; the daemon notices the fork at its next poll, so the
  time includes up to one poll interval of waiting. Afterwards the stored events of the
  replaced heights are compared with the node's logs (block hash, log index, count).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.chain import ChainInfo, _Builder, _trusted_addresses, calldata
from bench.rpc import Rpc
from indexer.contracts import REPO_ROOT

Say = Callable[[str], None]


class CursorWatcher(threading.Thread):
    """Reads the cursor every ``interval`` seconds; remembers when each height was first seen
    and the latest (block, hash)."""

    def __init__(self, database_url: str, chain_id: int, interval: float = 0.002) -> None:
        super().__init__(name="cursor-watcher", daemon=True)
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.chain_id = chain_id
        self.interval = interval
        self.first_seen: dict[int, float] = {}
        self.block: int | None = None
        self.hash: str | None = None
        self._highest = -1
        self._halt = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        query = "SELECT indexed_block, indexed_hash FROM indexer_state WHERE chain_id = %s"
        while not self._halt.is_set():
            row = self.conn.execute(query, (self.chain_id,)).fetchone()
            now = time.perf_counter()
            if row is not None and row[0] is not None:
                block, block_hash = int(row[0]), row[1]
                if block > self._highest:
                    for height in range(self._highest + 1, block + 1):
                        self.first_seen.setdefault(height, now)
                    self._highest = block
                with self.changed:
                    if (block, block_hash) != (self.block, self.hash):
                        self.block, self.hash = block, block_hash
                        self.changed.notify_all()
            time.sleep(self.interval)

    def wait_for(self, test: Callable[[int | None, str | None], bool], timeout: float) -> float:
        """Wait until ``test(block, hash)`` holds; return the time it was seen."""
        deadline = time.perf_counter() + timeout
        with self.changed:
            while not test(self.block, self.hash):
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(
                        f"the daemon did not get there in {timeout:.0f}s (cursor {self.block})"
                    )
                self.changed.wait(min(left, 0.05))
            return time.perf_counter()

    def forget_above(self, block: int) -> None:
        """After a reorg, heights above ``block`` are to be seen again."""
        for height in [h for h in self.first_seen if h > block]:
            del self.first_seen[height]
        self._highest = min(self._highest, block)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)
        self.conn.close()


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def start_daemon(
    rpc_url: str, database_url: str, info: ChainInfo, poll_interval: float, finality_depth: int
) -> Daemon:
    env = {
        **os.environ,
        "AUDIFI_DATABASE_URL": database_url,
        "AUDIFI_RPC_URL": rpc_url,
        "AUDIFI_MASTER_REGISTRY": info.registry,
        "AUDIFI_DIVIDEND_CONTRACTS": info.distributor,
        "AUDIFI_COIN_FACTORY": info.factory,
        "AUDIFI_START_BLOCK": "0",
        "AUDIFI_POLL_INTERVAL": str(poll_interval),
        "AUDIFI_FINALITY_DEPTH": str(finality_depth),
        "AUDIFI_HTTP_PORT": "0",
        "AUDIFI_LOG_FORMAT": "json",
        "AUDIFI_LOG_LEVEL": "warning",
    }
    env.pop("AUDIFI_REDIS_URL", None)
    env.pop("AUDIFI_CONFIG", None)
    log_path = Path(tempfile.mkstemp(prefix="audifi-bench-daemon-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "indexer", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Daemon(process, log_path)


class Activity:
    """Blocks with AudiFi events, mined on demand (automine is off)."""

    def __init__(self, rpc: Rpc, info: ChainInfo, seed: int) -> None:
        self.rpc = rpc
        self.info = info
        self.builder = _Builder(rpc, info, random.Random(seed))
        self.registered = [i for i, m in enumerate(info.masters) if m.address]

    def reset(self) -> None:
        """After a reorg: nonces and recent shares are no longer what they were."""
        self.builder.nonces.clear()
        self.builder.live.clear()
        self.builder.live_index.clear()
        self.builder.owner_of.clear()
        self.builder.pending_mints.clear()
        self.builder.burned.clear()

    def block(self, mints: int = 10, transfers: int = 2, dividends: int = 2) -> int:
        """Send one block's transactions and mine it; return its number."""
        touched: set[tuple[int, int]] = set()
        txs = [self.builder.batch_mint(mints, self.registered)]
        for _ in range(transfers):
            tx = self.builder.transfer(touched)
            if tx is not None:
                txs.append(tx)
        txs.extend(self.builder.dividend() for _ in range(dividends))
        self.rpc.batch(txs)
        self.rpc.call("evm_mine", [])
        number = int(self.rpc.call("eth_blockNumber"), 16)
        self.builder.settle(hex(number), [])
        return number

    def reorg_txs(self, depth: int) -> list[list[Any]]:
        """Replacement transactions for ``anvil_reorg``: in each new block a dividend of a
        different amount and a batch mint of new shares."""
        txs: list[list[Any]] = []
        for offset in range(depth):
            master = self.info.masters[self.registered[offset % len(self.registered)]]
            amount = 10**18 + random.randrange(10**15)
            txs.append(
                [
                    {
                        "from": self.info.owner,
                        "to": self.info.distributor,
                        "gas": hex(100_000),
                        "data": calldata(
                            "record", ["bytes16", "uint256"], [uuid.UUID(master.id).bytes, amount]
                        ),
                    },
                    offset,
                ]
            )
            first = master.next_token
            master.next_token += 3
            txs.append(
                [
                    {
                        "from": self.info.owner,
                        "to": master.address,
                        "gas": hex(500_000),
                        "data": calldata(
                            "batchMint",
                            ["address", "uint256", "uint256"],
                            [self.info.holders[offset % len(self.info.holders)], first, 3],
                        ),
                    },
                    offset,
                ]
            )
        return txs


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class LiveResult:
    poll_interval: float
    block_interval: float
    blocks: int
    events: int
    latencies_ms: list[float]
    p50_ms: float
    p95_ms: float
    max_ms: float
    catch_up_s: float


@dataclass
class ReorgTrial:
    depth: int
    seconds: float
    seconds_from_call: float
    replaced_events: int
    verified: bool


@dataclass
class ReorgResult:
    trials: list[ReorgTrial] = field(default_factory=list)

    def by_depth(self, depth: int) -> list[ReorgTrial]:
        return [t for t in self.trials if t.depth == depth]


def _stored_positions(
    conn: psycopg.Connection[Any], chain_id: int, above: int
) -> set[tuple[int, int, str]]:
    rows = conn.execute(
        "SELECT block_number, log_index, block_hash FROM indexer_events "
        "WHERE chain_id = %s AND block_number > %s",
        (chain_id, above),
    ).fetchall()
    return {(int(r[0]), int(r[1]), r[2]) for r in rows}


def _chain_positions(rpc: Rpc, info: ChainInfo, above: int, head: int) -> set[tuple[int, int, str]]:
    logs = rpc.call(
        "eth_getLogs",
        [{"fromBlock": hex(above + 1), "toBlock": hex(head), "address": _trusted_addresses(info)}],
    )
    from indexer.decode import TOPIC0

    audifi = set(TOPIC0.values())
    return {
        (int(log["blockNumber"], 16), int(log["logIndex"], 16), log["blockHash"].lower())
        for log in logs
        if log["topics"] and log["topics"][0] in audifi
    }


def run_live_and_reorgs(
    rpc_url: str,
    database_url: str,
    info: ChainInfo,
    chain_id: int,
    *,
    poll_interval: float,
    block_interval: float,
    live_blocks: int,
    reorg_depths: tuple[int, ...],
    reorg_trials: int,
    finality_depth: int,
    say: Say,
) -> tuple[LiveResult, ReorgResult]:
    rpc = Rpc(rpc_url)
    activity = Activity(rpc, info, info.seed + 2)
    watcher = CursorWatcher(database_url, chain_id)
    watcher.start()
    daemon = start_daemon(rpc_url, database_url, info, poll_interval, finality_depth)
    try:
        head = int(rpc.call("eth_blockNumber"), 16)
        started = time.perf_counter()
        watcher.wait_for(lambda b, _: b is not None and b >= head, timeout=120)
        catch_up = time.perf_counter() - started
        time.sleep(2 * poll_interval)  # let the first caught-up upkeep (view refresh) pass
        say(
            f"live: daemon caught up (poll interval {poll_interval}s); mining a block every "
            f"{block_interval}s for {live_blocks} blocks"
        )
        mined: dict[int, float] = {}
        jitter = random.Random(info.seed + 3)
        tick = time.perf_counter()
        for _ in range(live_blocks):
            # a steady rate, jittered ±40 % so that blocks land at every phase of the poll cycle
            tick += block_interval * jitter.uniform(0.6, 1.4)
            number = activity.block()
            mined[number] = time.perf_counter()
            pause = tick - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        last = max(mined)
        watcher.wait_for(lambda b, _: b is not None and b >= last, timeout=60)
        latencies = [1000 * (watcher.first_seen[n] - t) for n, t in sorted(mined.items())]
        first_live = min(mined)
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM indexer_events WHERE chain_id = %s AND block_number >= %s",
                (chain_id, first_live),
            ).fetchone()
        live = LiveResult(
            poll_interval=poll_interval,
            block_interval=block_interval,
            blocks=len(mined),
            events=int(row[0]) if row else 0,
            latencies_ms=latencies,
            p50_ms=_percentile(latencies, 0.5),
            p95_ms=_percentile(latencies, 0.95),
            max_ms=max(latencies),
            catch_up_s=catch_up,
        )
        say(
            f"live: {live.blocks} blocks, {live.events} events; latency p50 "
            f"{live.p50_ms:.0f} ms, p95 {live.p95_ms:.0f} ms, max {live.max_ms:.0f} ms"
        )
        reorgs = ReorgResult()
        with psycopg.connect(database_url, autocommit=True) as conn:
            for depth in reorg_depths:
                for _ in range(reorg_trials):
                    reorgs.trials.append(
                        _reorg_trial(
                            rpc, info, activity, watcher, conn, chain_id, depth, poll_interval
                        )
                    )
                times = [t.seconds for t in reorgs.by_depth(depth)]
                say(
                    f"reorg depth {depth}: recovered in "
                    + ", ".join(f"{s * 1000:.0f} ms" for s in times)
                )
        return live, reorgs
    except Exception as exc:
        raise RuntimeError(f"{exc}\n--- daemon log (tail) ---\n{daemon.tail()}") from exc
    finally:
        daemon.stop()
        watcher.stop()
        daemon.log_path.unlink(missing_ok=True)
        rpc.close()


def _reorg_trial(
    rpc: Rpc,
    info: ChainInfo,
    activity: Activity,
    watcher: CursorWatcher,
    conn: psycopg.Connection[Any],
    chain_id: int,
    depth: int,
    poll_interval: float,
) -> ReorgTrial:
    for _ in range(depth):
        activity.block(mints=5, transfers=1, dividends=1)
    head = int(rpc.call("eth_blockNumber"), 16)
    watcher.wait_for(lambda b, _: b is not None and b >= head, timeout=60)
    time.sleep(random.uniform(0, poll_interval))  # the fork lands anywhere in the poll cycle
    called = time.perf_counter()
    rpc.call("anvil_reorg", [depth, activity.reorg_txs(depth)])
    returned = time.perf_counter()
    new_head = rpc.call("eth_getBlockByNumber", ["latest", False])
    new_hash = new_head["hash"].lower()
    ancestor = int(new_head["number"], 16) - depth
    watcher.forget_above(ancestor)
    seen = watcher.wait_for(lambda _, h: h == new_hash, timeout=60)
    activity.reset()
    expected = _chain_positions(rpc, info, ancestor, int(new_head["number"], 16))
    stored = _stored_positions(conn, chain_id, ancestor)
    return ReorgTrial(
        depth=depth,
        seconds=seen - returned,
        seconds_from_call=seen - called,
        replaced_events=len(expected),
        verified=expected == stored,
    )


def summarize_reorgs(result: ReorgResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for depth in sorted({t.depth for t in result.trials}):
        times = [t.seconds for t in result.by_depth(depth)]
        out[str(depth)] = {
            "median_s": statistics.median(times),
            "max_s": max(times),
            "trials_s": times,
            "verified": all(t.verified for t in result.by_depth(depth)),
        }
    return out
