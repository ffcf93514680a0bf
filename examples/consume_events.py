"""Example consumer of the AudiFi indexer's Redis Stream (``audifi:events`` by default).

Run it next to an indexer that has ``AUDIFI_REDIS_URL`` set::

    python examples/consume_events.py --redis-url redis://localhost:6379/0
    python examples/consume_events.py --group analytics --consumer worker-1 --once

It prints one JSON line per change it applies and keeps an in-memory view of the events it
has seen. What it demonstrates (the stream contract, docs/operations.md):

* **Consumer group.** ``XGROUP CREATE <stream> <group> 0 MKSTREAM`` (once; "BUSYGROUP" means
  it exists). Several processes with different ``--consumer`` names share the work; one
  process keeps the order.
* **Crash recovery.** On start the consumer first re-reads its *own* pending entries (id
  ``0``: delivered before a crash but never acknowledged), then new ones (id ``>``).
* **At least once → dedupe by ``id``.** The indexer may publish a message more than once
  (e.g. Redis failed after accepting part of a batch). Every event carries a stable ``id``
  (``<block_hash>:<log_index>``); an event whose id is already in the view is skipped.
* **Rollbacks.** A message with ``type = rollback`` carries ``ancestor_block`` and
  ``ancestor_hash``: the chain reorganised and everything above ``ancestor_block`` is no longer
  canonical. The consumer discards what it saw above that block — and forgets those ids, since
  the same block (hash) may become canonical again and be re-sent. A rollback is applied every
  time it arrives: it is idempotent, and re-applying it while replaying a duplicated sequence
  keeps the view right.
* **XACK** after a message is handled, so it leaves the group's pending list.

A real consumer would store its view (and the ids it applied) in its own database, in the same
transaction as its effect, and ack after that commit. This example keeps it in memory.

Fields of every entry (all strings): ``id``, ``type`` (event name or ``rollback``),
``chain_id``, ``block_number``, ``block_hash``, ``tx_hash``, ``log_index``, ``data`` (JSON);
rollbacks add ``ancestor_block`` and ``ancestor_hash``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis

DEFAULT_STREAM = "audifi:events"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class EventView:
    """What the consumer has seen: events by id, in arrival order."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, fields: Mapping[str, str]) -> dict[str, Any]:
        """Apply one stream entry; return what happened (for logging)."""
        kind = fields.get("type", "")
        if kind == "rollback":
            ancestor = int(fields["ancestor_block"])
            dropped = [i for i, e in self.events.items() if e["block_number"] > ancestor]
            for message_id in dropped:
                del self.events[message_id]
            return {
                "action": "rollback",
                "ancestor_block": ancestor,
                "ancestor_hash": fields.get("ancestor_hash"),
                "discarded": dropped,
            }
        message_id = fields["id"]
        if message_id in self.events:
            return {"action": "duplicate", "id": message_id}
        event = {
            "id": message_id,
            "type": kind,
            "chain_id": int(fields["chain_id"]),
            "block_number": int(fields["block_number"]),
            "block_hash": fields["block_hash"],
            "tx_hash": fields["tx_hash"],
            "log_index": int(fields["log_index"]),
            "data": json.loads(fields["data"]),
        }
        self.events[message_id] = event
        return {"action": "applied", **event}


def _entries(answer: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of a one-stream XREADGROUP answer (RESP2 list or RESP3 map)."""
    if not answer:
        return []
    streams = answer.values() if isinstance(answer, dict) else (s[1] for s in answer)
    return [(entry_id, fields) for entries in streams for entry_id, fields in entries or []]


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (from the start of the stream) unless it exists."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def consume(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    view: EventView,
    *,
    once: bool = False,
    count: int = 100,
    block_ms: int = 5000,
    on_change: Callable[[dict[str, Any]], None] = lambda change: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Read, apply and acknowledge entries until stopped (or, with ``once``, until the stream
    has nothing new). Return how many entries were handled."""
    ensure_group(client, stream, group)
    handled = 0
    cursor = "0"  # first our own pending entries (crash recovery), then new ones
    while not should_stop():
        answer: Any = client.xreadgroup(
            group, consumer, {stream: cursor}, count=count, block=None if once else block_ms
        )
        entries = _entries(answer)
        if cursor == "0" and not entries:
            cursor = ">"
            continue
        if not entries:
            if once:
                break
            continue
        for entry_id, raw in entries:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            on_change(view.apply(fields))
            client.xack(stream, group, entry_id)
            handled += 1
    return handled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--redis-url", default=os.environ.get("AUDIFI_REDIS_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--stream", default=os.environ.get("AUDIFI_REDIS_STREAM", DEFAULT_STREAM))
    parser.add_argument("--group", default="example")
    parser.add_argument("--consumer", default=f"example-{os.getpid()}")
    parser.add_argument("--once", action="store_true", help="exit when nothing new is left")
    args = parser.parse_args(argv)

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    client = redis.Redis.from_url(args.redis_url)
    view = EventView()
    try:
        handled = consume(
            client,
            args.stream,
            args.group,
            args.consumer,
            view,
            once=args.once,
            on_change=lambda change: print(json.dumps(change, sort_keys=True), flush=True),
            should_stop=lambda: stopping,
        )
    finally:
        client.close()
    print(
        json.dumps({"action": "done", "handled": handled, "events": len(view.events)}),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
