"""The backfill under measurement, in a process of its own (so its memory is its own).

``python -m bench.worker '<json>'`` builds exactly what the daemon builds — an
:class:`~indexer.chain.http_source.HttpChainSource`, a psycopg connection and a
:class:`~indexer.sync.Syncer` with the AudiFi projections — then prints ``{"ready": true}``,
waits for a line on stdin, and steps the engine until it has caught up with ``target_head``,
printing one JSON line per step and a final summary. The daemon's loop around the step (leader
check, metrics, health) is left out; its waits only happen once caught up.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Any

import orjson
import requests.adapters

from indexer import foreign_keys
from indexer.chain.http_source import HttpChainSource
from indexer.projections import KEYS_CHECKED_PER_BATCH, AudifiProjector
from indexer.sync import Outcome, Syncer, SyncOptions, Trust, connect

_http_requests = 0
_original_send = requests.adapters.HTTPAdapter.send


def _counting_send(self: Any, *args: Any, **kwargs: Any) -> Any:
    global _http_requests
    _http_requests += 1
    return _original_send(self, *args, **kwargs)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(record).decode() + "\n")
    sys.stdout.flush()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) CPU ticks of the machine since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def main(argv: list[str]) -> int:
    config = orjson.loads(argv[0])
    requests.adapters.HTTPAdapter.send = _counting_send  # type: ignore[method-assign]
    calls: Counter[str] = Counter()

    def observer(method: str, endpoint: str, outcome: str, seconds: float) -> None:
        calls[f"{method}:{outcome}"] += 1

    source = HttpChainSource([config["rpc_url"]], timeout=60.0, observer=observer)
    conn = connect(config["database_url"])
    trust = Trust(
        registry=config["registry"],
        dividends=frozenset(config["dividends"]),
        coin_factory=config["factory"],
    )
    options = SyncOptions(**config["options"])
    # The daemon's reader opens on first use; here it is opened before the clock starts, so
    # its backend's CPU is counted with the writer's.
    readers = [connect(config["database_url"])]
    reader_pids = [readers[0].info.backend_pid]

    def reader() -> Any:
        if readers:
            return readers.pop()
        opened = connect(config["database_url"])  # a reopened reader: its CPU is not counted
        reader_pids.append(opened.info.backend_pid)
        return opened

    syncer = Syncer(
        source, conn, source.chain_id(), trust, options, AudifiProjector(), reader=reader
    )
    target = int(config["target_head"])
    _emit(
        {
            "ready": True,
            "pid": os.getpid(),
            "backend_pid": conn.info.backend_pid,
            "backend_pids": [conn.info.backend_pid, reader_pids[0]],
            "rss_kb": _status_kb("VmRSS"),
        }
    )
    sys.stdin.readline()
    cpu_started = sum(os.times()[:2])
    ticks_started = machine_ticks()
    global _http_requests
    _http_requests = 0
    calls.clear()
    started = time.perf_counter()
    events = 0
    steps = 0
    while True:
        step_started = time.perf_counter()
        result = syncer.step()
        now = time.perf_counter()
        steps += 1
        events += result.events
        _emit(
            {
                "t": now - started,
                "seconds": now - step_started,
                "outcome": result.outcome.value,
                "from": result.from_block,
                "to": result.to_block,
                "events": result.events,
                "total": events,
                "ignored": result.ignored,
                "dead_letters": result.dead_letters,
            }
        )
        if result.outcome is Outcome.CAUGHT_UP and (result.to_block or -1) >= target:
            break
        if result.outcome in (Outcome.HALTED, Outcome.NODE_BEHIND):
            _emit({"error": f"{result.outcome.value}: {result.reason}"})
            return 1
    elapsed = time.perf_counter() - started
    _emit(
        {
            "done": True,
            "elapsed": elapsed,
            "events": events,
            "steps": steps,
            "rpc_calls": dict(calls),
            "http_requests": _http_requests,
            "vm_hwm_kb": _status_kb("VmHWM"),
            "cpu_step_s": sum(os.times()[:2]) - cpu_started,
            "machine_ticks": [*ticks_started, *machine_ticks()],
            "rss_kb": _status_kb("VmRSS"),
            "reader_pids": reader_pids,
            "foreign_keys_per_batch": foreign_keys.fast_path_allowed(
                conn, KEYS_CHECKED_PER_BATCH, foreign_keys.REFERENCED_TABLES
            ),
        }
    )
    sys.stdin.readline()  # the parent has read the backends' CPU: they may end now
    syncer.close()
    source.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
