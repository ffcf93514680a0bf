"""The floor: a bare ``eth_getLogs`` download of the same logs, over the same block ranges as
the backfill, one raw JSON-RPC request after another on one keep-alive connection.

Two variants are timed: ``bytes`` (the answer read off the socket, nothing else) and
``parsed`` (plus ``orjson.loads`` of the answer into Python objects: the least any client must
do to hold the logs). Neither decodes, validates or writes anything. Each is timed with two
filter shapes, one filter per range: ``contracts`` asks for every log of the trusted and
registered contracts; ``signatures`` for every log with an AudiFi event signature, from any
emitter (the indexer's main filter by default; the same logs here, plus the artist coins' own
ERC-20 transfers). The faster shape is the floor: the stricter one. Each variant is run
``repeat`` times and the fastest run is kept.
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
    shape: str
    """The filter shape of the fastest ``parsed`` run (see the module's docstring)."""


def _download(
    session: requests.Session,
    url: str,
    selector: dict[str, object],
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
                "params": [{"fromBlock": hex(first), "toBlock": hex(last), **selector}],
            }
        )
        content = session.post(url, data=body, headers=_HEADERS).content
        size += len(content)
        if parse:
            logs += len(orjson.loads(content)["result"])
    return time.perf_counter() - started, logs, size


def measure_floor(
    url: str,
    addresses: Sequence[str],
    topics: Sequence[str],
    ranges: Sequence[tuple[int, int]],
    repeat: int = 3,
) -> FloorResult:
    shapes: dict[str, dict[str, object]] = {
        "contracts": {"address": list(addresses)},
        "signatures": {"topics": [list(topics)]},
    }
    session = requests.Session()
    runs: dict[str, list[float]] = {}
    logs: dict[str, int] = {}
    sizes: dict[str, int] = {}
    try:
        for shape, selector in shapes.items():
            _download(session, url, selector, ranges[:1], parse=True)  # connection, warm-up
            for variant in ("bytes", "parsed"):
                runs[f"{shape}_{variant}"] = []
            for _ in range(repeat):
                seconds, _, sizes[shape] = _download(session, url, selector, ranges, parse=False)
                runs[f"{shape}_bytes"].append(seconds)
                seconds, logs[shape], _ = _download(session, url, selector, ranges, parse=True)
                runs[f"{shape}_parsed"].append(seconds)
    finally:
        session.close()
    best = min(shapes, key=lambda shape: min(runs[f"{shape}_parsed"]))
    return FloorResult(
        logs=logs[best],
        bytes=sizes[best],
        requests=len(ranges),
        bytes_seconds=min(runs[f"{best}_bytes"]),
        parsed_seconds=min(runs[f"{best}_parsed"]),
        runs=runs,
        shape=best,
    )
