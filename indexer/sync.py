"""One step of the chain-following loop: plan → fetch → validate → decode → store.

:meth:`Syncer.step` is the whole engine; the daemon calls it in a loop and decides, from the
returned :class:`Outcome`, whether to go on at once, sleep, or stop. Its contract:

* **Exactly-once.** A step either commits one batch — events, dead letters, registrations,
  window blocks, outbox messages and the new cursor in ONE transaction — or writes nothing.
  A crash (``kill -9``) at any point leaves the database at the previous or the next cursor,
  never in between; the next step resumes from the stored cursor.
* **Reorg-safe.** Every new range must link to the stored head (``parent_hash`` of its first
  block equals the cursor's hash). When it does not, or when the stored head's hash is no
  longer the node's hash at that height, the step compares the stored window with the node's
  headers, rolls everything above the common ancestor back in one transaction and returns
  :attr:`Outcome.REORG`; the next steps re-index from there. A fork below the stored window
  halts: the halt is stored, nothing more is written until an operator rewinds
  (``audifi-indexer rewind``).
* **Don't trust the RPC.** Headers and logs of a range are asked for in one batch. A null
  header, a header with the wrong number, a log outside the range, a ``removed`` log, a log
  whose block hash differs from the header at its height, or a range whose blocks do not link
  raise :class:`~indexer.chain.errors.InconsistentResponseError` naming the rule and values:
  nothing is written and the step can be retried. So does an answer with no watched log in a
  block whose ``logsBloom`` shows a watched contract's address with its AudiFi topic (every
  header of the live window, the ends of a backfill range; :meth:`Syncer._check_blooms`). A
  node whose head is below the stored head gives :attr:`Outcome.NODE_BEHIND`: nothing is
  deleted, the caller waits. Either way the source's next request goes to its next endpoint,
  where it has several.
* **Trust.** Only logs of the configured registry, dividend contracts and coin factory, and of
  master contracts the registry registered — from the registering log on, by (block, log
  index) — are accepted. Other logs carrying AudiFi event signatures (spoofed share
  ``Transfer`` logs included, unless :attr:`Trust.count_spoofed_transfers` is off), and a
  master contract's logs before its registration, are counted as ignored and leave no row.
  Trusted logs that do not decode become dead letters.
* **Backfill and live.** Blocks at or below the final boundary (``head - finality_depth``, or
  the node's ``finalized`` block when that is higher) are fetched in large ranges with headers
  only where needed; blocks above it are fetched with every header and stored in the window.
  Both paths advance the same contiguous cursor, so the hand-over neither skips nor repeats.
* **Backfill speed.** The backfill range adapts to the chain's density (``batch_logs`` logs
  per batch, at most ``max_block_range`` blocks), so a batch's memory is bounded. While a
  batch is written, the next final range is fetched, checked and decoded in a background
  thread (:class:`_Prefetch`); a step uses that work only when it is exactly the work the step
  would do (same first block, same filters and registrations, within the final blocks), still
  checks the link to the stored head, and redoes the work itself when the prefetch failed.
  The prefetch never writes.
* **Planned ahead, written in order.** With a reader connection (the daemon's), a backfill
  batch's transaction runs in a writer thread (:class:`_Writer`) while the engine waits for the
  next range's prefetch and has the projector compute that batch's pass on the reader
  (:meth:`Projector.plan_ahead`): PostgreSQL writes batch N while Python works out N+1. The
  step still returns only after its own commit, batches still commit one by one in chain
  order, each in one transaction with its cursor; the plan is used only by the next step and
  only for exactly the prefetched range it was made for, else dropped with the projector's
  caches; a failed write drops it too. The projector declines whatever its reads could get
  wrong without seeing the uncommitted batch (pending events, coins).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import functools
import itertools
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from indexer import failpoints, store
from indexer.chain.bloom import false_alarm_odds, may_contain, pair_mask, parse_bloom
from indexer.chain.errors import InconsistentResponseError, RangeTooLargeError, RpcError
from indexer.chain.http_source import gc_paused
from indexer.chain.source import ChainSource
from indexer.chain.types import BlockHeader, Log, LogFilter
from indexer.decode import (
    ROLE_EVENTS,
    TOPIC0,
    DecodeError,
    EmitterRole,
    EventType,
    Verdict,
    classify,
    decode,
    decode_json,
)
from indexer.logs import get_logger
from indexer.reorg import BlockRef, NodeMissingBlocksError, find_common_ancestor

log = get_logger("audifi.sync")

INITIAL_BACKFILL_RANGE = 100
"""First backfill range (blocks), before it adapts to the chain's density."""
BLOOM_RETRIES = 5
"""Answers of one block doubted by its ``logsBloom`` before the answer is taken as a bloom
false positive (the daemon backs off between tries: about 15 s in all)."""
BLOOM_DOUBTS_KEPT = 1024
"""Block hashes whose doubts :class:`Syncer` remembers before it forgets them all."""
BLOOM_FALSE_ALARM_ODDS = 1e-6
"""A header's bloom is used only when a chance match of some watched mask is less likely."""

AUDIFI_TOPICS_ANY_EMITTER = (
    TOPIC0[EventType.MASTER_REGISTERED],
    TOPIC0[EventType.DIVIDEND_DEPOSITED],
    TOPIC0[EventType.ARTIST_COIN_DEPLOYED],
)
"""Fetched from every emitter so that spoofs of these rare signatures are seen and counted
as ignored, whatever :attr:`Trust.count_spoofed_transfers` says."""
_TRANSFER_TOPIC = TOPIC0[EventType.TRANSFER]
AUDIFI_TOPICS = (*AUDIFI_TOPICS_ANY_EMITTER, _TRANSFER_TOPIC)
"""Every AudiFi event signature: fetched from every emitter when spoofed share transfers are
counted (:attr:`Trust.count_spoofed_transfers`)."""
ERC721_TRANSFER_TOPICS = 4
"""An ERC-721 ``Transfer`` has 4 topics (all three arguments indexed), an ERC-20 one 3."""


PREFETCH_SWITCH_INTERVAL = 0.0005
"""GIL switch interval (seconds) of a process with an engine that can prefetch (prefetch on,
a source that can ``clone()``): :class:`Syncer` lowers the interpreter's (never raises it)
when it is built, for the rest of the process's life. The main thread waits on PostgreSQL
dozens of times per batch while the prefetch thread decodes; with Python's default 5 ms each
answer could wait up to that long for the GIL (measured: the statements of a 100,000-event
backfill 2.1 → 1.9 s, backfill +3 to +8 %)."""


PLAN_AHEAD_WAIT = 1.0
"""Seconds a step whose batch is committed still waits for the next range's prefetch, to plan
that batch ahead (see :meth:`Syncer._plan_next`); a slower node costs the plan, not the
step's return (the daemon's shutdown, health beat and leadership check run between steps)."""
PLAN_AHEAD_POLL = 0.02
"""Seconds between checks of the write while waiting for the prefetch."""


class Outcome(enum.Enum):
    PROGRESSED = "progressed"
    """A batch was committed; more may be waiting: step again at once."""
    CAUGHT_UP = "caught_up"
    """Nothing new up to the target height: sleep a poll interval."""
    REORG = "reorg"
    """A fork was rolled back to the common ancestor: step again at once."""
    NODE_BEHIND = "node_behind"
    """The node's head is below the stored head (or it lacks a stored block): wait."""
    HALTED = "halted"
    """Indexing is halted (stored); nothing is written until an operator rewinds."""


@dataclass(frozen=True, slots=True)
class StepResult:
    outcome: Outcome
    head: int | None = None
    from_block: int | None = None
    to_block: int | None = None
    to_hash: str | None = None
    events: int = 0
    dead_letters: int = 0
    ignored: int = 0
    registrations: int = 0
    event_counts: dict[str, int] = field(default_factory=dict)
    reorg_depth: int = 0
    ancestor: int | None = None
    reason: str = ""
    db_seconds: float = 0.0
    """Wall time of the step's write transaction (batch or rollback), commit included."""
    planned_ahead: bool = False
    """The batch's projections were computed while the previous batch was written."""


@dataclass(frozen=True, slots=True)
class Trust:
    """The configured trusted emitters (lowercase addresses)."""

    registry: str | None
    dividends: frozenset[str]
    coin_factory: str | None
    count_spoofed_transfers: bool = True
    """SPEC §2: logs with AudiFi signatures from untrusted emitters are ignored *and counted*.

    ``True`` (the default): a range is fetched with two filters, every AudiFi signature from
    any emitter, and every log of the configured contracts (:attr:`addresses`). Registered
    share contracts' ``Transfer`` logs come with the first filter, and so do spoofed ones:
    ERC-721-shaped (4 topics) ``Transfer`` logs of contracts not registered at their position
    are counted as ignored; ERC-20 ones (3 topics: every token's) are not AudiFi logs, dropped
    uncounted. A registered contract's logs without an AudiFi signature (``Approval``,
    ``ApprovalForAll``, unknown signatures) are not fetched at all. Each log comes once: no
    more logs than the contracts' filter alone (measured in the benchmark: the same time).

    ``False`` (for a public chain, where the first filter would download every token's
    transfers): the rare signatures from any emitter, and every log of the configured and
    registered contracts (a registered contract's unknown signatures become dead letters);
    spoofed ``Transfer`` logs are not seen, a contract's logs before its registration are
    counted by one more ``eth_getLogs`` (:func:`with_extra_logs`)."""

    def static_roles(self) -> dict[str, EmitterRole]:
        """Address → role of the configured emitters (master contracts are not in it). An
        address configured twice takes the first of registry, dividends, coin factory."""
        roles: dict[str, EmitterRole] = {}
        if self.coin_factory:
            roles[self.coin_factory] = EmitterRole.COIN_FACTORY
        roles.update(dict.fromkeys(self.dividends, EmitterRole.DIVIDEND))
        if self.registry:
            roles[self.registry] = EmitterRole.REGISTRY
        return roles

    @property
    def addresses(self) -> tuple[str, ...]:
        found = [a for a in (self.registry, self.coin_factory) if a]
        return tuple(sorted({*found, *self.dividends}))

    def counted_as_ignored(self, log: Log) -> bool:
        """Whether an untrusted ``log`` (or one before its contract's registration) counts as
        ignored: all do, but an ERC-20-shaped ``Transfer`` when ``Transfer`` is fetched from
        every emitter (:attr:`count_spoofed_transfers`): every token's transfer shares the
        signature, and only the ERC-721 shape is a spoof of a share transfer."""
        return not (self.count_spoofed_transfers and _transfer_shape(log) == _ERC20_SHAPED)

    def counted_where_fetched(self, log: Log) -> bool:
        """Whether an untrusted ``log`` was counted as ignored by the range that fetched it
        with the any-emitter filter (:func:`make_filters`, :meth:`counted_as_ignored`): a rare
        AudiFi signature, or an ERC-721-shaped ``Transfer`` when spoofed transfers are
        counted."""
        topics = log.topics
        if topics and topics[0] in _ANY_EMITTER:
            return True
        return self.count_spoofed_transfers and _transfer_shape(log) == _ERC721_SHAPED


_ERC721_SHAPED, _ERC20_SHAPED = "erc721", "erc20"


def _transfer_shape(log: Log) -> str | None:
    """``"erc721"`` for a ``Transfer`` with 4 topics (:data:`ERC721_TRANSFER_TOPICS`),
    ``"erc20"`` for one with any other count, None for another event."""
    topics = log.topics
    if not topics or topics[0] != _TRANSFER_TOPIC:
        return None
    return _ERC721_SHAPED if len(topics) == ERC721_TRANSFER_TOPICS else _ERC20_SHAPED


@dataclass(frozen=True, slots=True)
class SyncOptions:
    start_block: int = 0
    confirmations: int = 0
    finality_depth: int = 64
    max_block_range: int = 2000
    """Largest eth_getLogs range in backfill; narrowed on "too many results"."""
    batch_logs: int = 10_000
    """Logs per backfill batch to aim for: the backfill range starts at
    ``min(max_block_range, 100)`` blocks, doubles while batches stay under half of this, and
    shrinks to fit it after a denser batch, so memory per batch is bounded whatever the
    chain's density."""
    prefetch: bool = True
    """In backfill, fetch, check and decode the next range in a background thread while the
    current one is written (only with a source that can ``clone()`` itself)."""
    near_head_range: int = 64
    """Largest range per step inside the reorg window (every header is fetched there)."""
    outbox: bool = False
    """Queue a Redis message per committed event and rollback."""


class Projector:
    """Hook for tables derived from the event log, run in the batch's transaction.

    This base class derives nothing and so applies every event at once;
    :class:`indexer.projections.AudifiProjector` keeps the AudiFi domain tables in step.
    """

    def apply(self, conn: store.Conn, chain_id: int, batch: store.Batch) -> None:
        """Apply ``batch`` (before it is written): record applied positions in
        ``batch.applied``; the others are stored as pending."""
        batch.applied.update((e.block_number, e.log_index) for e in batch.events)

    def plan_ahead(
        self,
        reader: store.Conn,
        chain_id: int,
        batch: store.Batch,
        registrations: dict[str, store.Registration],
    ) -> Callable[[store.Conn], None] | None:
        """Do the reads and computation of :meth:`apply` for ``batch`` now, on ``reader``,
        while the previous batch is still being written (uncommitted: ``reader`` does not see
        it; ``registrations`` includes its registrations); return the write, which the engine
        runs in the batch's own transaction, or None: apply it the usual way. ``batch.events``
        are not enriched (:meth:`enrich` has not run): decline a batch that needs it. The
        engine calls :meth:`forget` when it drops a plan unwritten. This base class declines."""
        return None

    def rollback(self, conn: store.Conn, chain_id: int, ancestor: int) -> None:
        """Undo everything above block ``ancestor`` (called before the event log loses it)."""

    def reconcile(self, conn: store.Conn, chain_id: int) -> int:
        """Apply pending events whose rows now exist; refresh derived links. Returns the
        number of events applied."""
        return 0

    def enrich(
        self, source: ChainSource, events: list[store.EventRow]
    ) -> tuple[list[store.EventRow], list[tuple[store.EventRow, str]]]:
        """Chain reads an event needs at its block, made before the transaction opens.
        Returns the events to store and those to keep as dead letters instead, each with
        its reason (what the chain read showed cannot be applied)."""
        return events, []

    def forget(self, *, links: bool = True) -> None:
        """Drop in-memory caches (after a rollback or a failed transaction). ``links=False``
        (after a failed step): keep what only tells what the next reconcile must cover — a
        failed step's writes were noted before its transaction, so at worst as extras."""


class _Reorg(Exception):
    """Internal: the fetched range does not link to the stored head."""


@dataclass(slots=True)
class _Processed:
    events: list[store.EventRow] = field(default_factory=list)
    dead_letters: list[store.DeadLetter] = field(default_factory=list)
    registrations: list[store.Registration] = field(default_factory=list)
    ignored: int = 0
    other: int = 0


def process_logs(
    logs: Iterable[Log],
    headers: dict[int, BlockHeader],
    trust: Trust,
    registrations: dict[str, store.Registration],
) -> _Processed:
    """Pure: sort trusted from ignored logs, decode, and find new registrations.

    ``logs`` must be in chain order. ``registrations`` is not modified; registrations found in
    ``logs`` are trusted from their own position on (later logs of the same block included).
    Each event's COPY text is rendered here (:attr:`store.EventRow.copy_prefix`): in a
    backfill this runs in the prefetch thread, off the thread that waits on PostgreSQL.
    """
    out = _Processed()
    known = dict(registrations)
    times: dict[int, tuple[dt.datetime, str]] = {}
    static_roles = trust.static_roles()
    events = out.events
    copy_prefix, new_event_row = store.event_copy_prefix, store.new_event_row
    for log in logs:
        role = static_roles.get(log.address)
        if role is None:
            registration = known.get(log.address)
            if registration is None or (log.block_number, log.log_index) <= (
                registration.block_number,
                registration.log_index,  # = the positions, unboxed
            ):
                if trust.counted_as_ignored(log):
                    out.ignored += 1
                continue
            role = _MASTER
        verdict, reason = classify(log, role)
        if verdict is _OTHER:
            out.other += 1
            continue
        if verdict is _DECODE:
            event = ROLE_EVENTS[role]
            try:
                args = decode_json(log, event)
            except DecodeError as exc:
                reason = str(exc)
            else:
                number = log.block_number
                when = times.get(number)
                if when is None:
                    block_time = store.block_time(headers[number])
                    when = times[number] = (block_time, block_time.isoformat())
                name = _EVENT_NAMES[event]
                block_hash, tx_hash, address = log.block_hash, log.tx_hash, log.address
                tx_index, log_index = log.tx_index, log.log_index
                prefix = copy_prefix(number, block_hash, when[1], tx_hash, tx_index, log_index,
                                     address, name, args)  # fmt: skip
                events.append(
                    new_event_row((number, block_hash, when[0], tx_hash, tx_index, log_index,
                                   address, name, args, None, prefix))
                )  # fmt: skip
                if event is _REGISTERED:
                    contract = args["contractAddress"]
                    if contract not in known:  # the first registration of a contract wins
                        registration = store.Registration(
                            contract, uuid.UUID(args["masterId"]), log.block_number,
                            log.log_index, log.block_hash,
                        )  # fmt: skip
                        known[contract] = registration
                        out.registrations.append(registration)
                continue
        out.dead_letters.append(dead_letter(log, reason))
    return out


def dead_letter(log: Log, reason: str) -> store.DeadLetter:
    """The dead letter of a trusted emitter's ``log``: kept raw, with ``reason``."""
    return store.DeadLetter(
        block_number=log.block_number,
        block_hash=log.block_hash,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        address=log.address,
        topics=log.topics,
        data=log.data,
        reason=reason,
    )


_EVENT_NAMES = {event: event.value for event in EventType}
"""Stored names of the events (a dict lookup: ``Enum.value`` is a Python-level descriptor)."""
# Enum members bound once: reading one from its class (``Verdict.OTHER``) goes through the
# enum's metaclass and costs several times a global lookup, once per log in the loop above.
_MASTER = EmitterRole.MASTER
_OTHER = Verdict.OTHER
_DECODE = Verdict.DECODE
_REGISTERED = EventType.MASTER_REGISTERED


def dead_letters_of(
    rejected: Iterable[tuple[store.EventRow, str]], logs: Iterable[Log]
) -> list[store.DeadLetter]:
    """Dead letters, with their raw logs (from ``logs``), of decoded events the projector
    rejected (:meth:`Projector.enrich`)."""
    by_position = {log.position: log for log in logs}
    return [
        dead_letter(by_position[event.block_number, event.log_index], reason)
        for event, reason in rejected
    ]


def _new_registration_targets(
    logs: Iterable[Log], trust: Trust, registrations: dict[str, store.Registration]
) -> dict[str, tuple[int, int]]:
    """Contracts registered in ``logs`` that are not known yet → position (block, log index)
    of their registration."""
    found: dict[str, tuple[int, int]] = {}
    topic = TOPIC0[EventType.MASTER_REGISTERED]
    for log in logs:
        if log.address != trust.registry or len(log.topics) != 3 or log.topics[0] != topic:
            continue
        try:
            contract = str(decode(log, EventType.MASTER_REGISTERED).args["contractAddress"])
        except DecodeError:
            continue
        if contract not in registrations and contract not in found:
            found[contract] = log.position
    return found


# ---------------------------------------------------------------------------- validation
def avoid_current_endpoint(source: ChainSource, reason: str) -> None:
    """After an answer failed the engine's checks (or showed a node behind): the source's
    next request goes to another endpoint, where it has several (``avoid_current``)."""
    avoid = getattr(source, "avoid_current", None)
    if avoid is not None:
        avoid(reason)


def _inconsistent(rule: str, **values: Any) -> InconsistentResponseError:
    return InconsistentResponseError(rule, values)


def check_headers(numbers: Sequence[int], headers: Sequence[BlockHeader | None]) -> None:
    for number, header in zip(numbers, headers, strict=True):
        if header is None:
            raise _inconsistent("null header", block=number)
        if header.number != number:
            raise _inconsistent("header number differs", asked=number, got=header.number)


def check_linked(headers: Sequence[BlockHeader]) -> None:
    """Consecutive headers must link by parent hash."""
    for parent, child in itertools.pairwise(headers):
        if child.number == parent.number + 1 and child.parent_hash != parent.hash:
            raise _inconsistent(
                "range does not link",
                block=child.number,
                parent_hash=child.parent_hash,
                previous_hash=parent.hash,
            )


def check_logs(logs: Iterable[Log], first: int, last: int, headers: dict[int, BlockHeader]) -> None:
    for log in logs:
        if not first <= log.block_number <= last:
            raise _inconsistent(
                "log outside the asked range", block=log.block_number, range=(first, last)
            )
        if log.removed:
            raise _inconsistent("removed log in a fresh answer", block=log.block_number)
        header = headers.get(log.block_number)
        if header is not None and header.hash != log.block_hash:
            raise _inconsistent(
                "log block hash differs from the header",
                block=log.block_number,
                log_block_hash=log.block_hash,
                header_hash=header.hash,
                log_index=log.log_index,
            )


def merge_logs(*groups: Iterable[Log]) -> list[Log]:
    """Union of log lists, deduplicated by (block, log index), in chain order."""
    by_position: dict[tuple[int, int], Log] = {}
    for group in groups:
        for log in group:
            by_position.setdefault(log.position, log)
    return [by_position[p] for p in sorted(by_position)]


def _selected(wanted: LogFilter, logs: list[Log]) -> list[Log]:
    """The logs of ``logs`` that ``wanted`` would select (emitter, first topic, block); one
    comprehension per filter shape, no call per log (this runs over every answer)."""
    lo, hi = wanted.from_block, wanted.to_block
    addresses, topics = frozenset(wanted.addresses), frozenset(wanted.topic0)
    if addresses and topics:
        return [
            log for log in logs
            if log.address in addresses and log.topics and log.topics[0] in topics
            and lo <= log.block_number <= hi
        ]  # fmt: skip
    if addresses:
        return [log for log in logs if log.address in addresses and lo <= log.block_number <= hi]
    if topics:
        return [
            log for log in logs
            if log.topics and log.topics[0] in topics and lo <= log.block_number <= hi
        ]  # fmt: skip
    return [log for log in logs if lo <= log.block_number <= hi]


def agreed_logs(filters: Sequence[LogFilter], groups: Sequence[list[Log]]) -> list[Log]:
    """The answers of one batch's ``eth_getLogs`` filters, merged (:func:`merge_logs`), after
    checking that they agree where the filters overlap: every log one answer holds that
    another filter selects too (a trusted emitter's log with a rare AudiFi signature comes
    back from both) must be in that filter's answer, identical. An answer that lacks it was
    served partly — one call of the batch answered by a lagging node behind a load balancer:
    an :class:`InconsistentResponseError`, the step retried (SPEC §4.4; found by QA: an empty
    address-filter answer beside a full topic-filter answer lost a block's transfers, as the
    block then looked answered to the bloom check). One pass over each answer: the overlap is
    collected from both sides and compared, no index of the large answer is built."""
    for i, first in enumerate(filters):
        for j in range(i + 1, len(filters)):
            second = filters[j]
            # by position: an answer need not be in chain order, nor free of repeats
            # (merge_logs sorts and deduplicates; some gateways group logs by address)
            at_i = {log.position: log for log in _selected(second, groups[i])}
            at_j = {log.position: log for log in _selected(first, groups[j])}
            if at_i != at_j:
                _raise_disagreement(at_i, at_j)
    return merge_logs(*groups)


def _raise_disagreement(at_a: dict[tuple[int, int], Log], at_b: dict[tuple[int, int], Log]) -> None:
    position = min(p for p in at_a.keys() | at_b.keys() if at_a.get(p) != at_b.get(p))
    raise _inconsistent(
        "the answers of two eth_getLogs filters disagree about a log both select",
        block=position[0],
        log_index=position[1],
        in_first=position in at_a,
        in_second=position in at_b,
    )


def confirm_empty_answers(
    source: ChainSource, filters: Sequence[LogFilter], groups: Sequence[list[Log]]
) -> None:
    """Ask again, once, each emitter filter (``addresses``) whose answer was empty: a
    different answer is an :class:`InconsistentResponseError` (the step retried). For final
    ranges (backfill), whose headers are not all fetched, so the bloom check sees only their
    ends: an empty answer from a node behind a load balancer lagging in its log index would
    otherwise commit an empty range (SPEC §4.4; found by QA: a range whose end blocks held no
    AudiFi log lost every event in it). One more ``eth_getLogs`` per empty range; a node that
    answers the same every time is believed (a node that lies consistently about final
    blocks is beyond any check short of every header's bloom). A topic filter is asked again
    when it carries the share contracts' ``Transfer`` logs (:attr:`Trust.
    count_spoofed_transfers`); one of the rare signatures only is not: the trusted emitters'
    logs it selects also come with the emitter filter (:func:`agreed_logs`), and an untrusted
    spoof is only ever counted. A "too many results" answer to the second ask propagates
    (:class:`RangeTooLargeError`): the caller narrows the range and fetches it again — an
    empty answer is never taken unconfirmed (found by review: a lagging node's ``[]`` beside a
    node that refuses the range would otherwise commit the range empty)."""
    empty = [
        f for f, group in zip(filters, groups, strict=True)
        if not group and (f.addresses or _TRANSFER_TOPIC in f.topic0)
    ]  # fmt: skip
    if not empty:
        return
    again, _ = source.fetch(empty, [])
    for wanted, answer in zip(empty, again, strict=True):
        if answer:
            raise _inconsistent(
                "an empty eth_getLogs answer, and logs when asked again",
                from_block=wanted.from_block,
                to_block=wanted.to_block,
                logs=len(answer),
            )


def make_filters(trust: Trust, masters: Iterable[str], first: int, last: int) -> list[LogFilter]:
    """The eth_getLogs filters of a range (see :attr:`Trust.count_spoofed_transfers`): the
    AudiFi signatures from any emitter (spoofs are counted), and every log of the configured
    contracts — and of the registered ``masters`` when ``Transfer`` is not in the first."""
    if trust.count_spoofed_transfers:
        filters = [LogFilter(first, last, topic0=AUDIFI_TOPICS)]
        addresses = trust.addresses
    else:
        filters = [LogFilter(first, last, topic0=AUDIFI_TOPICS_ANY_EMITTER)]
        addresses = tuple(sorted({*trust.addresses, *masters}))
    if addresses:
        filters.append(LogFilter(first, last, addresses=addresses))
    return filters


def narrowed_last(first: int, last: int, exc: RangeTooLargeError) -> int:
    """A smaller ``last`` after a "too many results" answer (the node's hint or half)."""
    if last == first:
        raise exc
    hinted = exc.suggested[1] if exc.suggested else None
    if hinted is not None and first <= hinted < last:
        return hinted
    return first + (last - first) // 2


def logs_needing_headers(
    logs: list[Log], trust: Trust, registrations: dict[str, store.Registration]
) -> list[Log]:
    """The logs of ``logs`` whose block header a backfill batch needs: those of the configured
    and registered contracts, contracts registered inside ``logs`` included (their events'
    block time, and the check of their block hash). An untrusted log is only counted, so a
    block holding nothing else needs no header — with ``Transfer`` fetched from every emitter
    (:attr:`Trust.count_spoofed_transfers`) that is every block with another token's transfer
    (found by review)."""
    known = {*trust.addresses, *registrations}
    known.update(_new_registration_targets(logs, trust, registrations))
    kept = [log for log in logs if log.address in known]
    return logs if len(kept) == len(logs) else kept


def fetch_missing_headers(
    source: ChainSource, logs: Iterable[Log], headers: dict[int, BlockHeader]
) -> None:
    """Add to ``headers`` those of the blocks of ``logs`` it lacks (one round trip)."""
    missing = sorted({log.block_number for log in logs} - headers.keys())
    if missing:
        fetched = source.headers(missing)
        check_headers(missing, fetched)
        headers.update((h.number, h) for h in fetched if h is not None)


def with_extra_logs(
    source: ChainSource,
    trust: Trust,
    registrations: dict[str, store.Registration],
    logs: list[Log],
    last: int,
    headers: dict[int, BlockHeader],
    start_block: int,
) -> tuple[list[Log], int]:
    """``logs`` plus the logs of contracts registered inside them (unknown when the range was
    fetched), and how many logs those contracts emitted before their registration
    (:func:`count_logs_before_registration`, from ``start_block``).

    When spoofed transfers are counted (:attr:`Trust.count_spoofed_transfers`), nothing is
    added: the range's ``Transfer`` logs came from every emitter, and :func:`process_logs`
    counts those before a registration; the count covers the contracts' other logs before
    their registration logs. Otherwise the contracts' logs from their registration block to
    ``last`` are fetched and checked like the others (:func:`process_logs` counts those before
    each registration), and the count covers the blocks before."""
    targets = _new_registration_targets(logs, trust, registrations)
    if not targets:
        return logs, 0
    counted = sorted(set(targets) - set(trust.addresses))  # a static role wins
    if trust.count_spoofed_transfers:
        before = {contract: targets[contract] for contract in counted}
        return logs, count_logs_before_registration(source, trust, before, start_block)
    since = min(block for block, _ in targets.values())
    (extra,), _ = source.fetch([LogFilter(since, last, addresses=tuple(sorted(targets)))], [])
    fetch_missing_headers(source, extra, headers)
    check_logs(extra, since, last, headers)
    before = dict.fromkeys(counted, (since, 0))
    return merge_logs(logs, extra), count_logs_before_registration(
        source, trust, before, start_block
    )


def count_logs_before_registration(
    source: ChainSource, trust: Trust, before: dict[str, tuple[int, int]], start_block: int
) -> int:
    """Logs the newly registered contracts (``before``: contract → position up to which its
    logs are counted) emitted from ``start_block`` on: ignored (a contract is trusted from its
    registration log on) and only counted (SPEC §8). Those the range holding them fetched from
    every emitter and counted (:meth:`Trust.counted_where_fetched`) are left out: each log is
    counted once. One ``eth_getLogs``, one attempt (``fetch_once`` where the source has it);
    an empty answer is asked again once (found by a fault soak: a lagging node's ``[]`` left
    the logs uncounted, silently). Best effort: a count, never data — a node that refuses or
    fails the request leaves them uncounted (logged), and never fails or holds up the
    batch."""
    last = max((block if index else block - 1 for block, index in before.values()), default=-1)
    if last < start_block:
        return 0
    contracts = tuple(sorted(before))
    fetch = getattr(source, "fetch_once", source.fetch)
    wanted = [LogFilter(start_block, last, addresses=contracts)]
    try:
        (found,), _ = fetch(wanted, [])
        if not found:  # a lagging node's [] is asked again, once, as for a range's answers
            (found,), _ = fetch(wanted, [])
    except RpcError as exc:
        log.warning(
            "logs_before_registration_uncounted",
            contracts=list(contracts),
            error=str(exc)[:300],
        )
        return 0
    return sum(
        1 for item in found
        if item.block_number >= start_block and item.address in before
        and item.position < before[item.address] and not trust.counted_where_fetched(item)
    )  # fmt: skip


_ANY_EMITTER = frozenset(AUDIFI_TOPICS_ANY_EMITTER)
_AUDIFI = frozenset(AUDIFI_TOPICS)


def watched_masks(trust: Trust, masters: Iterable[str]) -> dict[str, int]:
    """Emitter → the bloom bits of the AudiFi event it emits (registry: MasterRegistered,
    dividend contracts: DividendDeposited, coin factory: ArtistCoinDeployed, registered
    master contracts: Transfer). Address *and* topic must be in a bloom: far fewer false
    positives than either alone."""
    pairs: list[tuple[str, EventType]] = [(m, EventType.TRANSFER) for m in masters]
    pairs += [(d, EventType.DIVIDEND_DEPOSITED) for d in trust.dividends]
    if trust.coin_factory:
        pairs.append((trust.coin_factory, EventType.ARTIST_COIN_DEPLOYED))
    if trust.registry:
        pairs.append((trust.registry, EventType.MASTER_REGISTERED))
    return {address: pair_mask(address, TOPIC0[event]) for address, event in pairs}


def missing_log_blocks(
    headers: Iterable[BlockHeader],
    logs: Iterable[Log],
    watched: dict[str, int],
    by_signature: bool = False,
) -> list[tuple[BlockHeader, str]]:
    """(header, emitter) where the header's ``logsBloom`` shows a watched emitter's AudiFi
    event but the answer holds no log of any watched emitter in that block: a node that
    answered ``eth_getLogs`` with nothing for a block that has our logs (an empty answer from
    a lagging node). Blocks the answer has watched logs in are not judged: their own logs set
    the topic bits, and another watched address would then match on its three address bits
    alone — too often by chance. A "maybe" can still be a false positive; the caller decides
    (see :meth:`Syncer._check_blooms`). Headers without a bloom are skipped, and so are those
    whose bloom is so full that a watched mask would match by chance with odds above
    :data:`BLOOM_FALSE_ALARM_ODDS` (a dense block, or many watched contracts).

    ``by_signature``: the range was fetched by AudiFi signature from every emitter
    (:attr:`Trust.count_spoofed_transfers`). A block is then answered by any log with an AudiFi
    signature, a watched emitter's or not: another token's ``Transfer`` sets the topic bits
    too, and a registered contract's ``Approval`` (not fetched) its address bits (found by the
    property test). The configured contracts' other logs do not count as an answer: they come
    with the other filter, which a lagging node may have answered alone."""
    if by_signature:
        answered = {item.block_number for item in logs if item.topics and item.topics[0] in _AUDIFI}
    else:
        answered = {item.block_number for item in logs if item.address in watched}
    found: list[tuple[BlockHeader, str]] = []
    for header in headers:
        if header.number in answered:
            continue
        bloom = parse_bloom(header.logs_bloom)
        if bloom is None or false_alarm_odds(bloom, len(watched)) > BLOOM_FALSE_ALARM_ODDS:
            continue  # no logs at all, or a bloom too full to tell
        for address, mask in watched.items():
            if may_contain(bloom, mask):
                found.append((header, address))
                break
    return found


def _missing_logs_error(header: BlockHeader, emitter: str) -> InconsistentResponseError:
    return _inconsistent(
        "logs missing that the block's logsBloom shows",
        block=header.number,
        block_hash=header.hash,
        emitter=emitter,
    )


@dataclass(slots=True)
class _Prepared:
    """A backfill range fetched, checked and decoded ahead of its step (by :class:`_Prefetch`).

    Everything but the link to the stored head was checked, as the step checks it; the step
    still checks that link (the cursor may have moved meanwhile)."""

    first: int
    last: int
    filters: list[LogFilter]
    registrations: dict[str, store.Registration]
    narrowed: int | None
    logs: list[Log]
    headers: dict[int, BlockHeader]
    processed: _Processed


def prepare_final_range(
    source: ChainSource,
    trust: Trust,
    registrations: dict[str, store.Registration],
    first: int,
    last: int,
    start_block: int,
) -> _Prepared:
    """Fetch, check and decode the final range ``first..last`` (narrowed on "too many
    results"): the backfill step's work up to the database, the link to the cursor aside.
    ``start_block``: the first block indexed (logs before registrations are counted from it)."""
    narrowed = None
    while True:
        filters = make_filters(trust, registrations, first, last)
        try:
            groups, ends = source.fetch(filters, [first, last])
            confirm_empty_answers(source, filters, groups)
            break
        except RangeTooLargeError as exc:
            last = narrowed_last(first, last, exc)
            narrowed = last - first + 1
    numbers = [first, last] if last != first else [first]
    check_headers(numbers, ends[: len(numbers)])
    headers = {h.number: h for h in ends if h is not None}
    logs = agreed_logs(filters, groups)
    watched = watched_masks(trust, registrations)
    missing = missing_log_blocks(headers.values(), logs, watched, trust.count_spoofed_transfers)
    if missing:
        raise _missing_logs_error(*missing[0])  # the step fetches again and decides
    fetch_missing_headers(source, logs_needing_headers(logs, trust, registrations), headers)
    check_logs(logs, first, last, headers)
    logs, before = with_extra_logs(source, trust, registrations, logs, last, headers, start_block)
    processed = process_logs(logs, headers, trust, registrations)
    processed.ignored += before
    return _Prepared(
        first, last, filters, registrations, narrowed, logs, headers, processed
    )  # fmt: skip


class _Prefetch:
    """One :func:`prepare_final_range` running in a daemon thread, on a source of its own.

    Its result is used only by a step that would fetch exactly that range with exactly those
    filters and registrations. A failure is dropped: the step then does the work itself and
    meets the error the usual way (its retries, its logging)."""

    def __init__(
        self,
        source: ChainSource,
        trust: Trust,
        registrations: dict[str, store.Registration],
        first: int,
        last: int,
        start_block: int,
    ) -> None:
        self.first = first
        self.last = last
        self.start_block = start_block
        self.result: _Prepared | None = None
        self.thread = threading.Thread(
            target=self._run,
            args=(source, trust, registrations),
            name="audifi-prefetch",
            daemon=True,
        )
        self.thread.start()

    def _run(
        self, source: ChainSource, trust: Trust, registrations: dict[str, store.Registration]
    ) -> None:
        try:
            with gc_paused():
                self.result = prepare_final_range(
                    source, trust, registrations, self.first, self.last, self.start_block
                )
        except InconsistentResponseError as exc:
            avoid_current_endpoint(source, str(exc))  # this thread's next range: another one
            self.result = None
        except Exception:
            self.result = None  # the step redoes the work and meets the error itself

    def wait(self) -> _Prepared | None:
        self.thread.join()
        return self.result


@dataclass(frozen=True, slots=True)
class _Ahead:
    """The next batch, its pass computed while the previous batch was written: usable only
    by the step that commits exactly ``processed`` (the same prefetched range)."""

    processed: _Processed
    batch: store.Batch
    write: Callable[[store.Conn], None]


class _Writer:
    """One batch's write transaction, run in a thread while the engine plans the next batch
    (the engine touches neither the connection nor the batch until :meth:`join`)."""

    def __init__(self, transaction: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(transaction,), name="audifi-writer", daemon=True
        )
        self._thread.start()

    def _run(self, transaction: Callable[[], None]) -> None:
        try:
            transaction()
        except BaseException as exc:  # re-raised by join(), in the engine's thread
            self._error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()

    def join(self) -> None:
        """Wait for the transaction (committed, or rolled back and its error raised here)."""
        self.wait()
        if self._error is not None:
            raise self._error


# ---------------------------------------------------------------------------- the engine
class Syncer:
    """Follows one chain into one database. Not thread-safe; one instance per process.

    ``conn`` is an autocommit psycopg connection: every write happens inside an explicit
    ``conn.transaction()`` of the step that makes it.
    """

    def __init__(
        self,
        source: ChainSource,
        conn: store.Conn,
        chain_id: int,
        trust: Trust,
        options: SyncOptions,
        projector: Projector | None = None,
        reader: Callable[[], store.Conn] | None = None,
    ) -> None:
        self.source = source
        self.conn = conn
        self.chain_id = chain_id
        self.trust = trust
        self.options = options
        if projector is None:
            from indexer.projections import AudifiProjector

            projector = AudifiProjector()
        self.projector = projector
        self._registrations: dict[str, store.Registration] | None = None
        self._known_head: tuple[int | None, str | None] | None = None
        self._ceiling = options.max_block_range
        """Largest backfill range: ``max_block_range``, lowered by "too many results"."""
        self._range = min(options.max_block_range, INITIAL_BACKFILL_RANGE)
        self._prefetch: _Prefetch | None = None
        self._prefetch_source: ChainSource | None = None
        self._prefetch_thread: threading.Thread | None = None
        self._reader = reader
        """Opens the connection on which the next batch's pass is read ahead (None: never)."""
        self._reader_conn: store.Conn | None = None
        self._ahead: _Ahead | None = None
        """The next batch's pass, computed while this step's batch was written."""
        self._ahead_offer: _Ahead | None = None
        """The plan made by the previous step, for this step to use or drop."""
        self._writer: _Writer | None = None
        self._bloom_doubts: dict[str, int] = {}
        """Block hash → answers doubted by its ``logsBloom`` (see :meth:`_check_blooms`)."""
        can_prefetch = options.prefetch and hasattr(source, "clone")
        if can_prefetch and sys.getswitchinterval() > PREFETCH_SWITCH_INTERVAL:
            sys.setswitchinterval(PREFETCH_SWITCH_INTERVAL)  # for the process's lifetime

    # -- setup -------------------------------------------------------------------------
    def ensure_state(self) -> store.CursorState:
        """Create the cursor row on first start (at the configured start block)."""
        with self.conn.transaction():
            return store.init_state(self.conn, self.chain_id, self.options.start_block)

    def _known_registrations(self) -> dict[str, store.Registration]:
        if self._registrations is None:
            self._registrations = store.load_registrations(self.conn, self.chain_id)
        return self._registrations

    def forget_cache(self, *, links: bool = True) -> None:
        """Drop in-memory caches (after a failed write, or a reconnect); ``links`` as for
        :meth:`Projector.forget` (False after a failed step)."""
        self._forget_engine_cache()
        self.projector.forget(links=links)

    def _forget_engine_cache(self) -> None:
        """The engine's own caches (registrations, prefetch, plan, reader), not the
        projector's: a committed rollback leaves the projector's as they are after it."""
        self._registrations = None
        self._prefetch = None
        self._ahead = self._ahead_offer = None
        self._close_reader()

    def _drop_ahead_offer(self) -> None:
        """Drop the previous step's plan unused, with the projector's caches: its pass
        advanced them for a batch that is not written."""
        if self._ahead_offer is not None:
            self._ahead_offer = None
            self.projector.forget(links=False)

    def close(self) -> None:
        """Close the engine's connections (the caller stops using it), after a write still
        running in :class:`_Writer` (a step interrupted while waiting for it) has ended."""
        if self._writer is not None:
            self._writer.wait()
        self._close_reader()
        self.conn.close()

    def _close_reader(self) -> None:
        reader, self._reader_conn = self._reader_conn, None
        if reader is not None:
            reader.close()

    # -- the step ----------------------------------------------------------------------
    def step(self) -> StepResult:
        """One step. Returns a named outcome; raises RPC/DB errors for the caller to retry.

        Reads the cursor, asks the node for its head, then either commits the next range,
        rolls a fork back, or reports that there is nothing to do / the node is behind.

        The cyclic garbage collector is paused during the step: a batch allocates hundreds of
        thousands of short-lived objects without cycles, which the collector would otherwise
        scan again and again (measured: ~8 % of a backfill); it runs between steps.
        """
        self._ahead_offer, self._ahead = self._ahead, None
        try:
            with gc_paused():
                result = self._step()
            if result.outcome is Outcome.NODE_BEHIND:
                avoid_current_endpoint(self.source, result.reason or "node behind")
            return result
        except InconsistentResponseError as exc:
            # Checked after the source answered, so its own failover did not see it: the next
            # try goes to another endpoint where several are configured (SPEC §4.4).
            avoid_current_endpoint(self.source, str(exc))
            raise
        finally:
            self._drop_ahead_offer()  # planned ahead for a batch this step did not write

    def _step(self) -> StepResult:
        state = store.load_state(self.conn, self.chain_id) or self.ensure_state()
        if state.head_ref != self._known_head:
            # The cursor moved under us (an operator rewind, another writer): caches built
            # from the old state (registrations, mint counts) may describe rows that are gone.
            self.forget_cache()
            self._known_head = state.head_ref
        if state.halted:
            # The stored cursor comes with it, so that a daemon restarted while halted reports
            # where it stands (metrics, /readyz) without a step having committed anything.
            return StepResult(
                Outcome.HALTED,
                to_block=state.indexed_block,
                to_hash=state.indexed_hash,
                reason=state.halt_reason or "halted",
            )
        head = self.source.head()
        store.record_head(self.conn, self.chain_id, head)
        if state.indexed_block is not None and head < state.indexed_block:
            return StepResult(
                Outcome.NODE_BEHIND,
                head=head,
                reason=f"node head {head} is below the stored head {state.indexed_block}",
            )
        target = head - self.options.confirmations
        first = state.next_block
        if first > target:
            return self._check_tip(state, head)
        final = self._final_boundary(head)
        try:
            if first <= final:
                return self._backfill(state, head, first, min(final, target))
            self._prefetch = None
            return self._follow(state, head, first, target)
        except _Reorg:
            self._prefetch = None
            return self._handle_reorg(state, head)

    def _final_boundary(self, head: int) -> int:
        final = head - self.options.finality_depth
        finalized = self.source.finalized()
        if finalized is not None and finalized <= head:
            final = max(final, finalized)
        return final

    def _check_tip(self, state: store.CursorState, head: int) -> StepResult:
        """Nothing new: make sure the stored head is still the node's block at that height."""
        if state.indexed_block is None or state.indexed_hash is None:
            return StepResult(Outcome.CAUGHT_UP, head=head)
        (header,) = self.source.headers([state.indexed_block])
        if header is None:
            return StepResult(
                Outcome.NODE_BEHIND,
                head=head,
                reason=f"node has no header at the stored head {state.indexed_block}",
            )
        if header.hash != state.indexed_hash:
            return self._handle_reorg(state, head)
        return StepResult(Outcome.CAUGHT_UP, head=head, to_block=state.indexed_block)

    def _filters(self, first: int, last: int) -> list[LogFilter]:
        return make_filters(self.trust, self._known_registrations(), first, last)

    def _backfill(self, state: store.CursorState, head: int, first: int, last: int) -> StepResult:
        """Final blocks: one large range; headers of the range ends and of log blocks only.

        The range may have been prepared while the previous batch was written (see
        :class:`_Prefetch`); it is used only when it starts at ``first``, ends within the
        final blocks and was fetched with the filters of the current registrations."""
        bound = last
        prepared = self._take_prefetch(first, bound)
        if prepared is not None:
            if prepared.narrowed is not None:
                self._range = self._ceiling = min(self._ceiling, prepared.narrowed)
            self._check_link(state, prepared.headers[first])
            return self._commit(
                state, head, first, prepared.last, prepared.logs, prepared.headers,
                window=[prepared.headers[prepared.last]], processed=prepared.processed,
                bound=bound,
            )  # fmt: skip
        last = min(last, first + self._range - 1)
        while True:
            filters = self._filters(first, last)
            try:
                groups, ends = self.source.fetch(filters, [first, last])
                confirm_empty_answers(self.source, filters, groups)
                break
            except RangeTooLargeError as exc:
                last = self._narrow(first, last, exc)
        numbers = [first, last] if last != first else [first]
        check_headers(numbers, ends[: len(numbers)])
        headers = {h.number: h for h in ends if h is not None}
        self._check_link(state, headers[first])
        logs = agreed_logs(filters, groups)
        self._check_blooms(headers.values(), logs)
        wanting = logs_needing_headers(logs, self.trust, self._known_registrations())
        fetch_missing_headers(self.source, wanting, headers)
        return self._commit(
            state, head, first, last, logs, headers, window=[headers[last]], bound=bound
        )

    def _take_prefetch(self, first: int, bound: int) -> _Prepared | None:
        job, self._prefetch = self._prefetch, None
        if job is None or job.first != first or job.last > bound:
            return None
        prepared = job.wait()
        if prepared is None:
            return None
        known = self._known_registrations()
        if prepared.registrations != known or prepared.filters != self._filters(
            prepared.first, prepared.last
        ):
            return None
        return prepared

    def _start_prefetch(
        self, first: int, bound: int, registrations: dict[str, store.Registration]
    ) -> None:
        """Prepare the next backfill range in the background (see :class:`_Prefetch`)."""
        self._prefetch = None
        if not self.options.prefetch or first > bound:
            return
        source = self._prefetch_source
        previous = self._prefetch_thread
        if source is None or (previous is not None and previous.is_alive()):
            clone = getattr(self.source, "clone", None)
            if clone is None:
                return
            source = self._prefetch_source = clone()
        last = min(bound, first + self._range - 1)
        job = _Prefetch(source, self.trust, registrations, first, last, self.options.start_block)
        self._prefetch = job
        self._prefetch_thread = job.thread

    def _adapt_range(self, blocks: int, logs: int) -> None:
        """Aim the next backfill range at ``batch_logs`` logs (see :class:`SyncOptions`)."""
        target = max(1, self.options.batch_logs)
        if logs > target:
            wanted = max(1, blocks * target // logs)
        elif blocks >= self._range and 2 * logs <= target:
            wanted = 2 * self._range
        else:
            return
        self._range = max(1, min(wanted, self._ceiling))

    def _follow(self, state: store.CursorState, head: int, first: int, target: int) -> StepResult:
        """Blocks inside the reorg window: every header fetched, linked and stored."""
        last = min(target, first + self.options.near_head_range - 1)
        while True:
            numbers = list(range(first, last + 1))
            filters = self._filters(first, last)
            try:
                groups, fetched = self.source.fetch(filters, numbers)
                break
            except RangeTooLargeError as exc:
                last = self._narrow(first, last, exc)
        check_headers(numbers, fetched)
        chain = [h for h in fetched if h is not None]
        self._check_link(state, chain[0])
        check_linked(chain)
        headers = {h.number: h for h in chain}
        logs = agreed_logs(filters, groups)
        self._check_blooms(chain, logs)
        return self._commit(state, head, first, last, logs, headers, window=chain)

    def _check_blooms(self, headers: Iterable[BlockHeader], logs: list[Log]) -> None:
        """Raise :class:`InconsistentResponseError` when a header's ``logsBloom`` shows an
        AudiFi event of a watched emitter that the answer lacks (:func:`missing_log_blocks`):
        the step is retried — on the next endpoint where there are several. A bloom can say
        "maybe" wrongly: after :data:`BLOOM_RETRIES` answers that agree for the same block
        hash, the answer is taken (``logs_bloom_false_positive`` in the log)."""
        watched = watched_masks(self.trust, self._known_registrations())
        missing = missing_log_blocks(headers, logs, watched, self.trust.count_spoofed_transfers)
        if not missing:
            return
        if len(self._bloom_doubts) > BLOOM_DOUBTS_KEPT:
            self._bloom_doubts.clear()
        doubted = []
        for header, emitter in missing:
            times = self._bloom_doubts[header.hash] = self._bloom_doubts.get(header.hash, 0) + 1
            if times <= BLOOM_RETRIES:
                doubted.append((header, emitter))
        if doubted:
            raise _missing_logs_error(*doubted[0])
        log.warning(
            "logs_bloom_false_positive",
            blocks=[header.number for header, _ in missing],
            emitters=sorted({emitter for _, emitter in missing}),
            answers=BLOOM_RETRIES + 1,
        )

    def _narrow(self, first: int, last: int, exc: RangeTooLargeError) -> int:
        """A smaller ``last`` after a "too many results" answer (the node's hint or half);
        later backfill ranges stay at most that large."""
        new_last = narrowed_last(first, last, exc)
        self._range = self._ceiling = max(1, min(self._ceiling, new_last - first + 1))
        return new_last

    def _check_link(self, state: store.CursorState, first_header: BlockHeader) -> None:
        if state.indexed_hash is None or state.indexed_block is None:
            return
        if first_header.number == state.indexed_block + 1 and (
            first_header.parent_hash != state.indexed_hash
        ):
            raise _Reorg()

    def _extra_logs(
        self, logs: list[Log], last: int, headers: dict[int, BlockHeader]
    ) -> tuple[list[Log], int]:
        """Logs of contracts registered inside this range (unknown when it was fetched), and
        the count of their logs before registration (see :func:`with_extra_logs`)."""
        return with_extra_logs(
            self.source, self.trust, self._known_registrations(), logs, last, headers,
            self.options.start_block,
        )  # fmt: skip

    def _commit(
        self,
        state: store.CursorState,
        head: int,
        first: int,
        last: int,
        logs: list[Log],
        headers: dict[int, BlockHeader],
        window: list[BlockHeader],
        processed: _Processed | None = None,
        bound: int | None = None,
    ) -> StepResult:
        """Check, decode (unless ``processed`` was prepared ahead) and commit one range.
        ``bound``: the last final block (backfill only): the next range is then prepared in
        the background while this one is written."""
        # The offer stays in self._ahead_offer until the write starts: should anything before
        # it fail, step() drops it with the projector's caches.
        ahead = self._ahead_offer
        if ahead is not None and ahead.processed is not processed:
            self._drop_ahead_offer()  # planned for other work
            ahead = None
        if processed is None:
            check_logs(logs, first, last, headers)
            logs, before = self._extra_logs(logs, last, headers)
            processed = process_logs(logs, headers, self.trust, self._known_registrations())
            processed.ignored += before
        following: dict[str, store.Registration] = {}
        if bound is not None:
            self._adapt_range(last - first + 1, len(logs))
            following.update(self._known_registrations())
            following.update((r.address, r) for r in processed.registrations)
            self._start_prefetch(last + 1, bound, following)
        write: Callable[[store.Conn], None]
        if ahead is None:
            events, rejected = self.projector.enrich(self.source, processed.events)
            batch = self._batch(headers[last], processed, events, final=bound is not None)
            if rejected:
                batch.dead_letters = [*batch.dead_letters, *dead_letters_of(rejected, logs)]
            write = functools.partial(self.projector.apply, chain_id=self.chain_id, batch=batch)
        else:
            batch, write = ahead.batch, ahead.write
        batch.window = [h for h in window if h.number > head - self.options.finality_depth - 1]
        failpoints.hit("after_fetch")
        # Set once the projector's part of the write is done: at once for a plan (its write
        # touches no projector state), else after Projector.apply ran in the transaction. No
        # other use of the projector may overlap it.
        projected = threading.Event()
        if ahead is not None:
            projected.set()
        db_seconds = 0.0

        def transaction() -> None:
            nonlocal db_seconds
            started = time.perf_counter()
            try:
                with self.conn.transaction():
                    self._recheck_cursor(state)
                    write(self.conn)
                    projected.set()
                    failpoints.hit("mid_write")
                    store.write_batch(
                        self.conn,
                        self.chain_id,
                        batch,
                        keep_blocks=self.options.finality_depth,
                        outbox=self.options.outbox,
                    )
                    failpoints.hit("before_commit")
            finally:
                projected.set()
                db_seconds = time.perf_counter() - started

        self._ahead_offer = None  # used by this write (failing, it is dropped with the caches)
        try:
            if bound is not None and self._prefetch is not None and self._reader is not None:
                writer = self._writer = _Writer(transaction)
                try:
                    self._ahead = self._plan_next(self._prefetch, following, writer, projected)
                finally:
                    writer.join()
            else:
                transaction()
        except BaseException:
            if self._writer is not None:
                self._writer.wait()  # interrupted while waiting: the write may still be applying
            # The batch's shares were noted by its pass, before the transaction: at worst as
            # extras, so the re-link bookkeeping stays (a database fault must not cost a
            # re-link of every share).
            self.forget_cache(links=False)
            raise
        failpoints.hit("after_commit")
        known = self._known_registrations()
        known.update((r.address, r) for r in processed.registrations)
        self._known_head = (last, headers[last].hash)
        counts = dict(collections.Counter(event.event_type for event in batch.events))
        return StepResult(
            Outcome.PROGRESSED,
            head=head,
            from_block=first,
            to_block=last,
            to_hash=headers[last].hash,
            events=len(batch.events),
            dead_letters=len(batch.dead_letters),
            ignored=processed.ignored,
            registrations=len(processed.registrations),
            event_counts=counts,
            db_seconds=db_seconds,
            planned_ahead=ahead is not None,
        )

    def _batch(
        self,
        head: BlockHeader,
        processed: _Processed,
        events: list[store.EventRow],
        *,
        final: bool,
    ) -> store.Batch:
        return store.Batch(
            head=head,
            events=events,
            dead_letters=processed.dead_letters,
            registrations=processed.registrations,
            ignored=processed.ignored,
            other=processed.other,
            effects={} if self.options.outbox else None,
            final=final,
        )

    def _plan_next(
        self,
        job: _Prefetch,
        registrations: dict[str, store.Registration],
        writer: _Writer,
        projected: threading.Event,
    ) -> _Ahead | None:
        """While this step's batch is written (in ``writer``): wait for the next range's
        prefetch (``job``, started with ``registrations``: every registration up to it) —
        at most :data:`PLAN_AHEAD_WAIT` past the end of the write —, then for ``projected``
        (the projector's part of the write; a pass never overlaps another), and have the
        projector compute that range's pass on the reader connection
        (:meth:`Projector.plan_ahead`; the events are not enriched: a projector that needs
        it declines). Never touches ``self.conn``. Any failure only drops the plan: the next
        step then does the work itself and meets the error the usual way."""
        written_at: float | None = None
        while job.thread.is_alive():
            job.thread.join(PLAN_AHEAD_POLL)
            if written_at is None and not writer.running:
                written_at = time.monotonic()
            if written_at is not None and time.monotonic() - written_at > PLAN_AHEAD_WAIT:
                return None  # a slow node: do not hold the committed step back for it
        prepared = job.wait()
        projected.wait()
        if prepared is None:
            return None
        processed = prepared.processed
        try:
            batch = self._batch(
                prepared.headers[prepared.last], processed, processed.events, final=True
            )
            if self._reader_conn is None or self._reader_conn.closed:
                assert self._reader is not None
                self._reader_conn = self._reader()
            write = self.projector.plan_ahead(
                self._reader_conn, self.chain_id, batch, registrations
            )
        except Exception:
            self.projector.forget(links=False)
            self._close_reader()
            return None
        return None if write is None else _Ahead(processed, batch, write)

    def _recheck_cursor(self, planned: store.CursorState) -> None:
        current = store.lock_state(self.conn, self.chain_id)
        if current is None or current.head_ref != planned.head_ref or current.halted:
            raise CursorMovedError(
                f"the cursor moved while this step was planned (planned "
                f"{planned.head_ref}, found {current.head_ref if current else None}); "
                "another writer or an operator changed it — the step is retried"
            )

    def reconcile(self) -> int:
        """Apply pending events whose master / artist row appeared, and re-link share owners
        to users who linked a wallet (one transaction). Returns the events applied."""
        try:
            with self.conn.transaction():
                return self.projector.reconcile(self.conn, self.chain_id)
        except BaseException:
            self.projector.forget()  # what it believes was linked may not have committed
            raise

    # -- forks -------------------------------------------------------------------------
    def _handle_reorg(self, state: store.CursorState, head: int) -> StepResult:
        window = store.load_window(self.conn, self.chain_id)
        numbers = [b.number for b in window]
        canonical = self.source.headers(numbers) if numbers else []
        by_number = {
            n: (h.hash if h is not None else None) for n, h in zip(numbers, canonical, strict=True)
        }
        try:
            ancestor = find_common_ancestor(window, by_number)
        except NodeMissingBlocksError as exc:
            return StepResult(Outcome.NODE_BEHIND, head=head, reason=str(exc))
        if ancestor is None:
            lowest = min(numbers) if numbers else None
            reason = (
                f"reorg deeper than the window: the stored head {state.indexed_block} "
                f"({state.indexed_hash}) is no longer canonical and no stored block down to "
                f"{lowest} matches the node; finality depth {self.options.finality_depth}. "
                "Indexing is halted; see docs/operations.md (audifi-indexer rewind)."
            )
            with self.conn.transaction():
                self._recheck_cursor(state)
                store.set_halt(self.conn, self.chain_id, reason)
            return StepResult(Outcome.HALTED, head=head, reason=reason)
        self._drop_ahead_offer()  # before Projector.rollback starts from the caches
        writing = time.perf_counter()
        try:
            with self.conn.transaction():
                self._recheck_cursor(state)
                self.projector.rollback(self.conn, self.chain_id, ancestor.number)
                store.rollback_to(
                    self.conn,
                    self.chain_id,
                    ancestor,
                    abandoned_hash=state.indexed_hash or "",
                    outbox=self.options.outbox,
                )
        except BaseException:
            self.forget_cache()
            raise
        # Committed: Projector.rollback left its caches as they are after it.
        self._forget_engine_cache()
        self._known_head = (ancestor.number, ancestor.hash)
        depth = (state.indexed_block or ancestor.number) - ancestor.number
        return StepResult(
            Outcome.REORG,
            head=head,
            reorg_depth=depth,
            ancestor=ancestor.number,
            to_block=ancestor.number,
            to_hash=ancestor.hash,
            db_seconds=time.perf_counter() - writing,
        )


class CursorMovedError(Exception):
    """The cursor changed between planning and committing a step; retry the step."""


def connect(url: str, **options: Any) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection for the engine (explicit transactions per step);
    ``options``: libpq parameters that override the URL's (``connect_timeout=…``)."""
    from indexer.db import libpq_url

    return psycopg.connect(
        libpq_url(url), autocommit=True, application_name="audifi-indexer", **options
    )


__all__ = [
    "BlockRef",
    "CursorMovedError",
    "Outcome",
    "Projector",
    "StepResult",
    "SyncOptions",
    "Syncer",
    "Trust",
    "connect",
    "process_logs",
]
