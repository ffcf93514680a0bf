"""The floor: a bare ``eth_getLogs`` download of the same logs, over the same block ranges as
the backfill, one raw JSON-RPC request after another on one keep-alive connection.

Two variants are timed: ``bytes`` (the answer read off the socket, nothing else) and
``parsed`` (plus ``orjson.loads`` of the answer into Python objects: the least any client must
do to hold the logs). Neither decodes, validates or writes anything. One filter per range asks
for every log of the trusted and registered contracts (the indexer asks for the same logs with
two filters plus headers, so this floor is the stricter one). Each variant is run ``repeat``
times and the fastest run is kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import requests

_HEADERS = {"Content-Type": "application/json"}


@dataclass
class FloorResult:
    logs: int
    bytes: int
    requests: int
    bytes_seconds: float
    parsed_seconds: float
    runs: dict[str, list[float]]


def _download(
    session: requests.Session,
    url: str,
    addresses: Sequence[str],
    ranges: Sequence[tuple[int, int]],
    parse: bool,
) -> tuple[float, int, int]:
    logs = 0
    size = 0
    started = time.perf_counter()
    for first, last in ranges:
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_getLogs",
                "params": [
                    {"fromBlock": hex(first), "toBlock": hex(last), "address": list(addresses)}
                ],
            }
        )
        content = session.post(url, data=body, headers=_HEADERS).content
        size += len(content)
        if parse:
            logs += len(orjson.loads(content)["result"])
    return time.perf_counter() - started, logs, size


def measure_floor(
    url: str, addresses: Sequence[str], ranges: Sequence[tuple[int, int]], repeat: int = 3
) -> FloorResult:
    session = requests.Session()
    try:
        _download(session, url, addresses, ranges[:1], parse=True)  # connection, warm-up
        runs: dict[str, list[float]] = {"bytes": [], "parsed": []}
        logs = size = 0
        for _ in range(repeat):
            seconds, _, size = _download(session, url, addresses, ranges, parse=False)
            runs["bytes"].append(seconds)
            seconds, logs, _ = _download(session, url, addresses, ranges, parse=True)
            runs["parsed"].append(seconds)
    finally:
        session.close()
    return FloorResult(
        logs=logs,
        bytes=size,
        requests=len(ranges),
        bytes_seconds=min(runs["bytes"]),
        parsed_seconds=min(runs["parsed"]),
        runs=runs,
    )
