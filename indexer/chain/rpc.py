"""A minimal JSON-RPC 2.0 client over HTTP: one endpoint, single calls and batches.

Guarantees:

- One HTTP POST per :meth:`JsonRpcClient.call` and per :meth:`JsonRpcClient.batch` (a JSON
  array); connections are kept alive (``requests.Session``); bodies are encoded and decoded
  with orjson. No retries here: retry and failover belong to the caller
  (:class:`indexer.chain.http_source.HttpChainSource`).
- Batch answers are matched to requests by ``id``, never by position; an answer missing an
  id, or not valid JSON-RPC, raises :class:`~indexer.chain.errors.TransientRpcError`.
- :meth:`JsonRpcClient.batch_raw` is :meth:`JsonRpcClient.batch` with every result left as
  its JSON text (``msgspec.Raw``) for the caller's typed decoder: the envelopes are decoded
  by msgspec without building the results (the bulk of an ``eth_getLogs`` answer) as Python
  objects. Same checks, same errors; an answer msgspec cannot take as a list of envelopes goes
  through the same path as :meth:`~JsonRpcClient.batch`.
- Every failure is one of :mod:`indexer.chain.errors`, classified once: HTTP status,
  timeout, connection error, JSON-RPC error object. In a batch with several failed elements
  the most decisive one is raised (fatal, then range too large, then revert, then rate limit,
  then transient), with the failed element's method, so an ``eth_getLogs`` refusal inside a
  batch comes out as :class:`~indexer.chain.errors.RangeTooLargeError`.
- Exceptions are raised ``from None``: a chained driver exception could carry the URL with
  its credentials into a traceback.
- The optional ``observer(method, endpoint, outcome, seconds)`` is called once per request
  (for a batch, once per distinct method in it, with the worst outcome of that method's
  elements and the batch's wall time). ``endpoint`` is masked. Outcomes: ``ok`` or the
  ``outcome`` of the error (``timeout``, ``connection_error``, ``http_error``,
  ``bad_response``, ``rate_limited``, ``range_too_large``, ``reverted``, ``fatal``,
  ``transient``). The observer must not raise.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import orjson
import requests

from indexer.chain.errors import (
    CallRevertedError,
    FatalRpcError,
    RangeTooLargeError,
    RateLimitedError,
    RpcError,
    TransientRpcError,
    classify_http_status,
    classify_rpc_error,
    mask_endpoint,
)

__all__ = ["JsonRpcClient", "Observer", "RpcCall"]

Observer = Callable[[str, str, str, float], None]
"""``(method, endpoint, outcome, seconds) -> None``: a latency/outcome hook (metrics)."""

RpcCall = tuple[str, Sequence[Any]]
"""``(method, params)``."""

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
Entries = dict[Any, tuple[bool, Any, Any]]
"""A batch answer by ``id``: (has a result, the result, the error object or None)."""


class _Envelope(msgspec.Struct, gc=False):
    """One element of a batch answer, its result left undecoded."""

    id: int | str | None = None
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: Any = None


_ENVELOPES = msgspec.json.Decoder(list[_Envelope])

_FATAL_FIRST: tuple[type[RpcError], ...] = (
    FatalRpcError,
    RangeTooLargeError,
    CallRevertedError,
    RateLimitedError,
)


def _severity(error: RpcError) -> int:
    """Lower is more decisive for the caller."""
    for rank, cls in enumerate(_FATAL_FIRST):
        if isinstance(error, cls):
            return rank
    return len(_FATAL_FIRST)


class JsonRpcClient:
    """JSON-RPC over HTTP(S) to one endpoint. Not thread-safe: one client per thread."""

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.url = url
        self.endpoint = mask_endpoint(url)
        self.timeout = timeout
        self.observer = observer
        self._session = session if session is not None else requests.Session()
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- public

    def call(self, method: str, params: Sequence[Any]) -> Any:
        """One request; returns its ``result`` or raises the classified error."""
        request_id = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        started = time.perf_counter()
        try:
            answer = self._post(payload, method)
            result = self._single_result(answer, request_id, method)
        except RpcError as exc:
            self._observe((method,), exc.outcome, started)
            raise
        self._observe((method,), "ok", started)
        return result

    def batch(self, calls: Sequence[RpcCall]) -> list[Any]:
        """All ``calls`` in one HTTP request; results in the order of ``calls``."""
        return self._batch(calls, raw=False)

    def batch_raw(self, calls: Sequence[RpcCall]) -> list[msgspec.Raw]:
        """:meth:`batch` with each result as its JSON text, for a typed decoder."""
        results: list[msgspec.Raw] = self._batch(calls, raw=True)
        return results

    def _batch(self, calls: Sequence[RpcCall], raw: bool) -> list[Any]:
        if not calls:
            return []
        first = next(self._ids)
        self._ids = itertools.count(first + len(calls))
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        methods = [method for method, _ in calls]
        label = "batch" if len(set(methods)) > 1 else methods[0]
        started = time.perf_counter()
        try:
            response = self._send(payload, label)
            entries = self._raw_entries(response) if raw else None
            if entries is None:
                entries = self._entries(self._decode(response, label))
                if raw:
                    entries = {key: _as_raw(entry) for key, entry in entries.items()}
            results, errors = self._batch_results(entries, first, methods)
        except RpcError as exc:
            self._observe(methods, exc.outcome, started)
            raise
        self._observe_batch(methods, errors, started)
        if errors:
            raise min(errors.values(), key=_severity)
        return results

    def close(self) -> None:
        self._session.close()

    # ---------------------------------------------------------------- transport

    def _post(self, payload: object, method: str) -> Any:
        return self._decode(self._send(payload, method), method)

    def _send(self, payload: object, method: str) -> requests.Response:
        kw: dict[str, Any] = {"endpoint": self.url, "method": method}
        try:
            return self._session.post(
                self.url, data=orjson.dumps(payload), headers=_HEADERS, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise TransientRpcError(
                f"timeout after {self.timeout}s: {exc}", outcome="timeout", **kw
            ) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientRpcError(
                f"connection failed: {exc}", outcome="connection_error", **kw
            ) from None
        except requests.RequestException as exc:
            raise FatalRpcError(f"cannot send the request: {exc}", **kw) from None

    @staticmethod
    def _raw_entries(response: requests.Response) -> Entries | None:
        """The entries of a 200 answer that is a list of envelopes, results undecoded; None
        for anything else (the generic path then classifies it)."""
        if response.status_code != 200:
            return None
        try:
            envelopes = _ENVELOPES.decode(response.content)
        except (msgspec.MsgspecError, ValueError, RecursionError):  # bad UTF-8, deep nesting
            return None
        return {e.id: (e.result is not msgspec.UNSET, e.result, e.error) for e in envelopes}

    def _decode(self, response: requests.Response, method: str) -> Any:
        """The parsed JSON body; an HTTP error status wins unless the body is a JSON-RPC
        error of a 4xx other than 401/403/404/429 (some nodes answer 400 + error object)."""
        status = response.status_code
        body: Any = None
        if status != 200 and status not in (401, 403, 404, 429) and status < 500:
            body = _loads_or_none(response.content)
        if status != 200 and not _is_jsonrpc_error(body):
            raise classify_http_status(
                status,
                response.reason or "",
                response.headers.get("Retry-After"),
                method=method,
                endpoint=self.url,
            )
        if body is not None:
            return body
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            snippet = response.content[:120].decode("utf-8", "replace")
            raise TransientRpcError(
                f"malformed JSON ({exc}): {snippet!r}",
                outcome="bad_response",
                endpoint=self.url,
                method=method,
            ) from None

    # ---------------------------------------------------------------- answers

    def _bad(self, detail: str, method: str) -> TransientRpcError:
        return TransientRpcError(detail, outcome="bad_response", endpoint=self.url, method=method)

    def _error(self, error: Any, method: str) -> RpcError:
        if not isinstance(error, dict):
            return self._bad(f"malformed error object: {error!r:.200}", method)
        code = error.get("code")
        return classify_rpc_error(
            code if isinstance(code, int) else None,
            str(error.get("message", "")),
            error.get("data"),
            method=method,
            endpoint=self.url,
        )

    def _single_result(self, answer: Any, request_id: int, method: str) -> Any:
        if isinstance(answer, dict) and "error" in answer and answer["error"] is not None:
            raise self._error(answer["error"], method)
        if not isinstance(answer, dict) or answer.get("id") != request_id:
            raise self._bad(f"answer does not match request id {request_id}", method)
        if "result" not in answer:
            raise self._bad("answer has neither result nor error", method)
        return answer["result"]

    def _entries(self, answer: Any) -> Entries:
        """The entries of a parsed batch answer; a whole-batch error object raises."""
        if isinstance(answer, dict) and answer.get("error") is not None:
            raise self._error(answer["error"], "batch")
        if not isinstance(answer, list):
            raise self._bad(f"batch answer is not a list: {type(answer).__name__}", "batch")
        return {
            item.get("id"): ("result" in item, item.get("result"), item.get("error"))
            for item in answer
            if isinstance(item, dict) and type(item.get("id")) in (int, str)
        }

    def _batch_results(
        self, entries: Entries, first: int, methods: Sequence[str]
    ) -> tuple[list[Any], dict[int, RpcError]]:
        """(results by position, errors by position)."""
        results: list[Any] = [None] * len(methods)
        errors: dict[int, RpcError] = {}
        for i, method in enumerate(methods):
            entry = entries.get(first + i)
            if entry is None:
                errors[i] = self._bad(f"batch answer misses id {first + i}", method)
                continue
            has_result, result, error = entry
            if error is not None:
                errors[i] = self._error(error, method)
            elif not has_result:
                errors[i] = self._bad("answer has neither result nor error", method)
            else:
                results[i] = result
        return results, errors

    # ---------------------------------------------------------------- observation

    def _observe(self, methods: Sequence[str], outcome: str, started: float) -> None:
        if self.observer is None:
            return
        elapsed = time.perf_counter() - started
        for method in dict.fromkeys(methods):
            self.observer(method, self.endpoint, outcome, elapsed)

    def _observe_batch(
        self, methods: Sequence[str], errors: dict[int, RpcError], started: float
    ) -> None:
        if self.observer is None:
            return
        elapsed = time.perf_counter() - started
        worst: dict[str, RpcError | None] = dict.fromkeys(methods)
        for i, error in errors.items():
            current = worst[methods[i]]
            if current is None or _severity(error) < _severity(current):
                worst[methods[i]] = error
        for method, failed in worst.items():
            outcome = "ok" if failed is None else failed.outcome
            self.observer(method, self.endpoint, outcome, elapsed)


def _as_raw(entry: tuple[bool, Any, Any]) -> tuple[bool, Any, Any]:
    has_result, result, error = entry
    return has_result, msgspec.Raw(orjson.dumps(result)) if has_result else None, error


def _loads_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _is_jsonrpc_error(body: Any) -> bool:
    if isinstance(body, list):
        return bool(body) and all(isinstance(item, dict) for item in body)
    return isinstance(body, dict) and isinstance(body.get("error"), dict)
