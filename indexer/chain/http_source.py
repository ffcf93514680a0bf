"""The production chain source: raw JSON-RPC over HTTP, batching, failover, retries.

Guarantees:

- :meth:`HttpChainSource.fetch` is ONE JSON-RPC batch (one HTTP POST): the ``eth_getLogs`` of
  every filter and ``eth_getBlockByNumber(n, false)`` of every header height, all from the
  same endpoint, so the engine can compare logs and headers of one node's view (a lagging node
  behind a load balancer is then caught by the engine's checks, not here).
- Answers are converted to :mod:`indexer.chain.types` by hand (no web3 formatters): lowercase
  ``0x`` hex, integers from hex quantities. An answer that cannot be converted (missing key,
  null where a value is due) is a :class:`~indexer.chain.errors.TransientRpcError` with
  outcome ``bad_response``, retried like any transient error. Nothing else is validated here.
- Failover and retries (tenacity): at most ``max_attempts`` attempts per method call. A
  transient error or a rate limit moves to the next endpoint at once; a rate-limited endpoint
  is not used again before its ``Retry-After`` (or ``rate_limit_pause``) has passed. After a
  full round over all endpoints the source backs off exponentially with jitter (bounded by
  ``backoff_max``). When every endpoint is rate limited for longer than ``max_wait`` the
  :class:`~indexer.chain.errors.RateLimitedError` is raised instead of sleeping.
- :class:`~indexer.chain.errors.FatalRpcError`, :class:`~indexer.chain.errors.RangeTooLargeError`
  and :class:`~indexer.chain.errors.CallRevertedError` are raised at once, never retried.
- The endpoint that last answered stays the current one (sticky) until it fails, or until the
  caller finds its answer inconsistent (:meth:`HttpChainSource.avoid_current`).
- Each retry is logged as ``rpc_retry`` (method, masked endpoint, outcome, attempt, wait).
- One chain: :meth:`HttpChainSource.chain_id` asks every endpoint and pins the chain — the
  expected one (``AUDIFI_CHAIN_ID``) where configured, else the one the answering endpoints
  agree on (endpoints that disagree: :class:`~indexer.chain.errors.FatalRpcError`). From then
  on an endpoint serving another chain is never used (``rpc_endpoint_wrong_chain``), and one
  that did not answer then is asked its chain before its first use. (Found by QA: the chain
  id came from whichever endpoint answered first, and a database was stamped with a wrong
  endpoint's chain while it held another's data.)
- Not thread-safe: one source per thread.
"""

from __future__ import annotations

import functools
import gc
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import msgspec.structs
import orjson
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from indexer.chain.errors import (
    FatalRpcError,
    RateLimitedError,
    RpcError,
    TransientRpcError,
    is_unknown_tag_error,
    mask_endpoint,
)
from indexer.chain.rpc import JsonRpcClient, Observer, RpcCall
from indexer.chain.types import LOGS_DECODER, BlockHeader, Log, LogFilter, is_hash
from indexer.logs import get_logger

__all__ = ["HttpChainSource", "decode_logs", "gc_paused", "parse_header", "parse_log"]

T = TypeVar("T")

log = get_logger("audifi.chain")


# --------------------------------------------------------------------------------------------
# Conversion of raw answers (hot path: keep it lean)


_NEVER_IN_LOWERCASE = tuple(bytes([c]) for c in b"ABCDEFGJKLMOPQRSUVWXYZ\\")
"""Bytes that a lowercase answer never holds: the keys of a log object use no capital but H,
I, N and T (``blockHash``, ``logIndex``, ``transactionIndex``, ``blockNumber``, …); a
backslash would be a JSON escape (``\\u0041`` is an ``A``), which hex text never needs."""


def _malformed_hashes(values: Iterable[str]) -> ValueError:
    return ValueError(f"not 32-byte hashes: {sorted(values)!r:.200}")


def _maybe_not_lowercase(text: bytes) -> bool:
    """False only when every text value of the answer is certainly lowercase ASCII."""
    return not text.isascii() or any(text.find(byte) >= 0 for byte in _NEVER_IN_LOWERCASE)


def decode_logs(raw: bytes | msgspec.Raw) -> list[Log]:
    """An ``eth_getLogs`` result (its JSON text) → ``list[Log]``, lowercase, hashes checked.

    Guarantees: every text field of every log is lowercase; every ``block_hash`` and
    ``tx_hash`` is 32-byte ``0x`` hex (they are stored in NOT NULL columns and compared with
    headers) — anything else raises ``ValueError`` or ``msgspec.ValidationError`` (a malformed
    answer), never a ``Log``. Cost: one msgspec decode, a scan of the text for bytes a
    lowercase answer never holds (:data:`_NEVER_IN_LOWERCASE`, non-ASCII; the usual answer
    is then not lowercased log by log) and one check per distinct hash (the logs of one
    transaction share both hashes)."""
    logs = LOGS_DECODER.decode(raw)
    text = memoryview(raw).tobytes() if isinstance(raw, msgspec.Raw) else raw
    if _maybe_not_lowercase(text):
        logs = [_lowercased(log) for log in logs]
    hashes = {log.block_hash for log in logs}
    hashes.update([log.tx_hash for log in logs])
    bad = [value for value in hashes if not is_hash(value)]
    if bad:
        raise _malformed_hashes(bad)
    return logs


def _lowercased(log: Log) -> Log:
    return msgspec.structs.replace(
        log,
        address=log.address.lower(),
        topics=tuple([topic.lower() for topic in log.topics]),
        data=log.data.lower(),
        block_hash=log.block_hash.lower(),
        tx_hash=log.tx_hash.lower(),
    )


def parse_log(raw: dict[str, Any]) -> Log:
    """One ``eth_getLogs`` element (parsed JSON) → :class:`Log`, as :func:`decode_logs`
    would give it (``ValueError`` for a malformed element)."""
    try:
        (log,) = decode_logs(orjson.dumps([raw]))
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    return log


def parse_header(raw: dict[str, Any] | None) -> BlockHeader | None:
    """A raw block (``eth_getBlockByNumber``) → :class:`BlockHeader`; null stays None. Its
    hash and parent hash must be 32-byte hex (``ValueError`` otherwise)."""
    if raw is None:
        return None
    block_hash, parent_hash = raw["hash"].lower(), raw["parentHash"].lower()
    if not (is_hash(block_hash) and is_hash(parent_hash)):
        raise _malformed_hashes((block_hash, parent_hash))
    bloom = raw.get("logsBloom")
    return BlockHeader(
        int(raw["number"], 16),
        block_hash,
        parent_hash,
        int(raw["timestamp"], 16),
        bloom.lower() if isinstance(bloom, str) else None,
    )


def _converted(client: JsonRpcClient, method: str, convert: Callable[[], T]) -> T:
    """``convert()``; a conversion failure is the endpoint's malformed answer (transient)."""
    try:
        return convert()
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        RecursionError,
        msgspec.MsgspecError,
    ) as exc:
        raise TransientRpcError(
            f"malformed answer: {type(exc).__name__}: {exc}",
            outcome="bad_response",
            endpoint=client.url,
            method=method,
        ) from None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large answer is decoded and converted.

    Decoding allocates hundreds of thousands of dicts and strings without any cycle; the
    collector, triggered by the allocation count, then spends about half of the time scanning
    them (measured: ~120k → ~230k logs/s with 100k logs per answer). Reference counting still
    frees memory meanwhile; the previous state is restored (nested or concurrent use only
    ever re-enables what it disabled).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


Fetched = tuple[list[list[Log]], list[BlockHeader | None]]


def _fetch_on(client: JsonRpcClient, calls: Sequence[RpcCall], split: int) -> Fetched:
    """One batch on one endpoint: ``calls[:split]`` are eth_getLogs, the rest headers. The
    logs go from the answer's bytes to :class:`Log` objects in one msgspec decode each."""
    with gc_paused():
        results = client.batch_raw(calls)
        logs = _converted(client, "eth_getLogs", lambda: [decode_logs(r) for r in results[:split]])
        headers = _converted(
            client,
            "eth_getBlockByNumber",
            lambda: [parse_header(msgspec.json.decode(r)) for r in results[split:]],
        )
    return logs, headers


def _fetch_attempt(
    filters: Sequence[LogFilter], header_numbers: Sequence[int]
) -> tuple[str, Callable[[JsonRpcClient], Fetched]]:
    """The method named in errors and metrics, and one attempt of a fetch on an endpoint."""
    calls: list[RpcCall] = [("eth_getLogs", [f.to_rpc()]) for f in filters]
    calls += [("eth_getBlockByNumber", [hex(n), False]) for n in header_numbers]
    split = len(filters)
    method = "eth_getLogs" if filters else "eth_getBlockByNumber"
    return method, lambda client: _fetch_on(client, calls, split)


def _quantity(raw: str) -> int:
    return int(raw, 16)


def _hex_data(raw: str) -> str:
    if not raw.startswith("0x"):
        raise ValueError(f"not 0x hex: {raw!r:.80}")
    return raw.lower()


# --------------------------------------------------------------------------------------------
# The source


@dataclass(slots=True)
class _Endpoint:
    client: JsonRpcClient
    cooldown_until: float = 0.0
    """``time.monotonic()`` before which the endpoint is not used (rate limited)."""
    chain_id: int | None = None
    """The chain the endpoint said it serves (asked once), None until it answered."""


class HttpChainSource:
    """:class:`~indexer.chain.source.ChainSource` over JSON-RPC HTTP endpoints (failover)."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = 10.0,
        max_attempts: int = 5,
        observer: Observer | None = None,
        *,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        max_wait: float = 30.0,
        rate_limit_pause: float = 1.0,
        expected_chain_id: int | None = None,
    ) -> None:
        if not urls:
            raise ValueError("HttpChainSource needs at least one endpoint URL")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._endpoints = [_Endpoint(JsonRpcClient(u, timeout, observer=observer)) for u in urls]
        self._same_settings: Callable[[], HttpChainSource] = functools.partial(
            HttpChainSource, tuple(urls), timeout, max_attempts, observer,
            backoff_base=backoff_base, backoff_max=backoff_max, max_wait=max_wait,
            rate_limit_pause=rate_limit_pause, expected_chain_id=expected_chain_id,
        )  # fmt: skip
        self._expected_chain = expected_chain_id
        self._chain: int | None = None
        """The pinned chain (see :meth:`chain_id`); None before."""
        self._current = 0
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_wait = max_wait
        self._rate_limit_pause = rate_limit_pause

    def clone(self) -> HttpChainSource:
        """A new source with the same endpoints and settings and connections of its own (for
        another thread: a source is not thread-safe). Cool-downs are not shared."""
        clone = self._same_settings()
        clone._chain = self._chain
        for mine, theirs in zip(self._endpoints, clone._endpoints, strict=True):
            theirs.chain_id = mine.chain_id
        return clone

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints, masked (safe to log)."""
        return tuple(mask_endpoint(e.client.url) for e in self._endpoints)

    # ---------------------------------------------------------------- ChainSource

    def chain_id(self) -> int:
        """The chain the endpoints serve, pinned by the first call: every endpoint is asked
        (one attempt each; none answering raises its error — the caller retries); the chain
        is the expected one where configured and served, else the one the answering
        endpoints agree on. Endpoints on another chain are left out from then on. The
        expected chain served by none: the first answer is returned, nothing pinned (the
        caller reports the mismatch)."""
        if self._chain is not None:
            return self._chain
        reported = self._run("eth_chainId", self._ask_every_endpoint)
        chains = {cid for _, cid in reported}
        if self._expected_chain is not None:
            if self._expected_chain not in chains:
                return reported[0][1]
            chain = self._expected_chain
        elif len(chains) > 1:
            served = ", ".join(f"{url} → {cid}" for url, cid in reported)
            raise FatalRpcError(
                f"the endpoints of AUDIFI_RPC_URL serve different chains ({served}): keep only "
                "the right network's endpoints, or set AUDIFI_CHAIN_ID to the chain to index",
                method="eth_chainId",
            )
        else:
            chain = chains.pop()
        self._chain = chain
        for endpoint in self._endpoints:
            if endpoint.chain_id not in (None, chain):
                self._log_wrong_chain(endpoint)
        return chain

    def head(self) -> int:
        return self._run("eth_blockNumber", lambda c: self._quantity_of(c, "eth_blockNumber"))

    def finalized(self) -> int | None:
        return self._run("eth_getBlockByNumber", self._finalized_on)

    def fetch(self, filters: Sequence[LogFilter], header_numbers: Sequence[int]) -> Fetched:
        if not filters and not header_numbers:
            return [], []
        method, attempt = _fetch_attempt(filters, header_numbers)
        return self._run(method, attempt)

    def headers(self, numbers: Sequence[int]) -> list[BlockHeader | None]:
        return self.fetch((), numbers)[1]

    def fetch_once(self, filters: Sequence[LogFilter], header_numbers: Sequence[int]) -> Fetched:
        """:meth:`fetch` with one attempt (on the current endpoint, moved past on failure):
        for requests whose answer is nice to have, so a failing node does not hold the caller
        up for a whole retry schedule."""
        if not filters and not header_numbers:
            return [], []
        method, attempt = _fetch_attempt(filters, header_numbers)
        return self._attempt(method, attempt)

    def call(self, to: str, data: str, block_hash: str) -> str:
        params = [{"to": to, "data": data}, {"blockHash": block_hash}]

        def attempt(client: JsonRpcClient) -> str:
            raw = client.call("eth_call", params)
            return _converted(client, "eth_call", lambda: _hex_data(raw))

        return self._run("eth_call", attempt)

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.client.close()

    # ---------------------------------------------------------------- extras

    def avoid_current(self, reason: str) -> None:
        """Move past the current endpoint: its answer passed this source but failed the
        caller's checks (a log's block hash differs from the header, a null header, a head
        below the stored one — a lagging node behind a load balancer). The next request goes
        to the next endpoint, which stays current while it answers well (sticky). No-op with
        one endpoint."""
        if len(self._endpoints) < 2:
            return
        left = self._endpoints[self._current]
        self._move_past(left)
        log.warning(
            "rpc_endpoint_avoided",
            endpoint=mask_endpoint(left.client.url),
            next_endpoint=mask_endpoint(self._endpoints[self._current].client.url),
            reason=reason[:300],
        )

    def request(self, method: str, params: Sequence[Any]) -> Any:
        """Any JSON-RPC method, raw result, with the same failover and retries."""
        return self._run(method, lambda c: c.call(method, params))

    # ---------------------------------------------------------------- per-endpoint steps

    @staticmethod
    def _quantity_of(client: JsonRpcClient, method: str) -> int:
        result = client.call(method, [])
        return _converted(client, method, lambda: _quantity(result))

    def _finalized_on(self, client: JsonRpcClient) -> int | None:
        method = "eth_getBlockByNumber"
        try:
            block = client.call(method, ["finalized", False])
        except RpcError as exc:
            if is_unknown_tag_error(exc):
                return None
            raise
        header = _converted(client, method, lambda: parse_header(block))
        return None if header is None else header.number

    # ---------------------------------------------------------------- failover and retries

    def _run(self, method: str, attempt: Callable[[JsonRpcClient], T]) -> T:
        retrying = Retrying(
            stop=self._should_stop,
            wait=self._wait_seconds,
            retry=retry_if_exception_type(TransientRpcError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        result: T = retrying(self._attempt, method, attempt)
        return result

    def _attempt(self, method: str, attempt: Callable[[JsonRpcClient], T]) -> T:
        endpoint = self._pick(method)
        try:
            if self._chain is not None and endpoint.chain_id is None:
                self._check_chain(endpoint)
            return attempt(endpoint.client)
        except RateLimitedError as exc:
            pause = exc.retry_after if exc.retry_after is not None else self._rate_limit_pause
            endpoint.cooldown_until = time.monotonic() + pause
            self._move_past(endpoint)
            raise
        except TransientRpcError:
            self._move_past(endpoint)
            raise

    def _ask_every_endpoint(self, _picked: JsonRpcClient) -> list[tuple[str, int]]:
        """(masked URL, chain id) of every endpoint that answers ``eth_chainId`` (asked once
        each); none answering raises the first error (retried by :meth:`_run`)."""
        first_error: RpcError | None = None
        for endpoint in self._endpoints:
            if endpoint.chain_id is None:
                try:
                    endpoint.chain_id = self._quantity_of(endpoint.client, "eth_chainId")
                except RpcError as exc:
                    first_error = first_error or exc
        reported = [
            (mask_endpoint(e.client.url), e.chain_id)
            for e in self._endpoints
            if e.chain_id is not None
        ]
        if not reported:
            assert first_error is not None
            raise first_error
        return reported

    def _check_chain(self, endpoint: _Endpoint) -> None:
        """Ask an endpoint not asked yet which chain it serves, before its first use once the
        chain is pinned; another chain: :class:`TransientRpcError` (the retry moves on), and
        the endpoint is never picked again."""
        endpoint.chain_id = self._quantity_of(endpoint.client, "eth_chainId")
        if endpoint.chain_id != self._chain:
            self._log_wrong_chain(endpoint)
            raise TransientRpcError(
                f"the endpoint serves chain {endpoint.chain_id}, not {self._chain}",
                endpoint=mask_endpoint(endpoint.client.url),
                method="eth_chainId",
                outcome="bad_response",
            )

    def _log_wrong_chain(self, endpoint: _Endpoint) -> None:
        log.error(
            "rpc_endpoint_wrong_chain",
            endpoint=mask_endpoint(endpoint.client.url),
            endpoint_chain_id=endpoint.chain_id,
            chain_id=self._chain,
            hint="this AUDIFI_RPC_URL endpoint is never used; remove it or point it at the "
            "right network",
        )

    def _usable(self) -> list[int]:
        """Indexes of the endpoints on the pinned chain (or not asked yet)."""
        chain = self._chain
        usable = [
            i
            for i, e in enumerate(self._endpoints)
            if chain is None or e.chain_id is None or e.chain_id == chain
        ]
        if not usable:
            raise FatalRpcError(
                f"no endpoint of AUDIFI_RPC_URL serves chain {chain} any more",
                method="eth_chainId",
            )
        return usable

    def _pick(self, method: str) -> _Endpoint:
        """The current endpoint, or the next one not cooling down (endpoints on another
        chain left out); sleeps (≤ ``max_wait``) when all are cooling down."""
        now = time.monotonic()
        count = len(self._endpoints)
        usable = self._usable()
        for k in range(count):
            index = (self._current + k) % count
            if index in usable and self._endpoints[index].cooldown_until <= now:
                self._current = index
                return self._endpoints[index]
        wait = self._cooldown_left()
        if wait > self._max_wait:
            raise RateLimitedError(
                f"every endpoint is rate limited for {wait:.1f}s more",
                retry_after=wait,
                endpoint=self._endpoints[self._current].client.url,
                method=method,
            )
        time.sleep(wait)
        return self._pick(method)

    def _move_past(self, endpoint: _Endpoint) -> None:
        if self._endpoints[self._current] is endpoint:
            self._current = (self._current + 1) % len(self._endpoints)

    def _cooldown_left(self) -> float:
        """Seconds until some endpoint may be used again (0 when one may be used now)."""
        now = time.monotonic()
        return max(0.0, min(self._endpoints[i].cooldown_until for i in self._usable()) - now)

    def _should_stop(self, state: RetryCallState) -> bool:
        return state.attempt_number >= self._max_attempts or self._cooldown_left() > self._max_wait

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if not isinstance(error, RpcError):
            return
        log.warning(
            "rpc_retry",
            method=error.method,
            endpoint=error.endpoint,
            outcome=error.outcome,
            error=error.detail,
            attempt=state.attempt_number,
            max_attempts=self._max_attempts,
            wait=round(state.upcoming_sleep, 3),
        )

    def _wait_seconds(self, state: RetryCallState) -> float:
        """No pause inside a round (next endpoint at once); jittered exponential backoff after
        each full round; never less than the time until an endpoint is usable."""
        rounds, rest = divmod(state.attempt_number, len(self._usable()))
        backoff = 0.0
        if rest == 0:
            ceiling = min(self._backoff_max, self._backoff_base * 2 ** (rounds - 1))
            backoff = ceiling * random.uniform(0.5, 1.0)
        return max(backoff, self._cooldown_left())
