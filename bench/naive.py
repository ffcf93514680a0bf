"""The naive baseline: the straightforward web3.py loop SPEC §7 compares against.

For each block range (the backfill's own ranges, from the start): ``w3.eth.get_logs`` of the
trusted contracts, ``contract.events.<Event>().process_log(log)`` for each AudiFi log, and one
``INSERT`` per event (psycopg, one transaction per range) into a plain table of its own
(``bench_naive_events``: no projections, no reorg window, no checks — less work than the
indexer does). It stops after ``limit_events`` events or ``limit_seconds`` seconds, at a range
boundary; its rate is events per second over the part it did.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from web3 import Web3

from bench.chain import ChainInfo
from indexer.contracts import load_abi


@dataclass
class NaiveResult:
    events: int
    seconds: float
    ranges: int
    last_block: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


_CREATE = """
CREATE TABLE IF NOT EXISTS bench_naive_events (
    id bigserial PRIMARY KEY,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    tx_hash text NOT NULL,
    log_index int NOT NULL,
    address text NOT NULL,
    event text NOT NULL,
    args jsonb NOT NULL
)
"""


def _handlers(w3: Web3, info: ChainInfo) -> dict[str, tuple[Any, str]]:
    """address → (event object of its AudiFi event, that event's topic0)."""

    def event_of(contract: str, name: str, signature: str) -> tuple[Any, str]:
        event = w3.eth.contract(abi=load_abi(contract)).events[name]()
        return event, Web3.keccak(text=signature).to_0x_hex()

    transfer = event_of("MasterShares", "Transfer", "Transfer(address,address,uint256)")
    handlers = {
        info.registry: event_of(
            "MasterRegistry", "MasterRegistered", "MasterRegistered(bytes16,address)"
        ),
        info.distributor: event_of(
            "DividendDistributor", "DividendDeposited", "DividendDeposited(bytes16,uint256)"
        ),
        info.factory: event_of(
            "ArtistCoinFactory", "ArtistCoinDeployed", "ArtistCoinDeployed(bytes16,address)"
        ),
    }
    for master in info.masters:
        handlers[master.address] = transfer
    return handlers


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def run_naive(
    rpc_url: str,
    database_url: str,
    info: ChainInfo,
    ranges: Sequence[tuple[int, int]],
    limit_events: int,
    limit_seconds: float = 60.0,
) -> NaiveResult:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 120}))
    handlers = _handlers(w3, info)
    addresses = [Web3.to_checksum_address(a) for a in handlers]
    with psycopg.connect(database_url) as conn:
        conn.execute(_CREATE)
        conn.commit()
        events = 0
        done = 0
        last_block = -1
        started = time.perf_counter()
        for first, last in ranges:
            logs = w3.eth.get_logs({"fromBlock": first, "toBlock": last, "address": addresses})
            for log in logs:
                handler = handlers.get(log["address"].lower())
                if handler is None or log["topics"][0].to_0x_hex() != handler[1]:
                    continue
                decoded = handler[0].process_log(log)
                conn.execute(
                    "INSERT INTO bench_naive_events (block_number, block_hash, tx_hash, "
                    "log_index, address, event, args) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        decoded["blockNumber"],
                        decoded["blockHash"].to_0x_hex(),
                        decoded["transactionHash"].to_0x_hex(),
                        decoded["logIndex"],
                        decoded["address"].lower(),
                        decoded["event"],
                        json.dumps({k: _jsonable(v) for k, v in decoded["args"].items()}),
                    ),
                )
                events += 1
            conn.commit()
            done += 1
            last_block = last
            if events >= limit_events or time.perf_counter() - started >= limit_seconds:
                break
        seconds = time.perf_counter() - started
    return NaiveResult(events=events, seconds=seconds, ranges=done, last_block=last_block)
