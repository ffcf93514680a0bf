"""Exceptions of the chain client, and the one place where node answers are classified.

Guarantees:

- Every failure of a chain source is one of the classes below (all :class:`RpcError`, all
  :class:`~indexer.errors.IndexerError`); callers decide what to do by class, never by text:

  ==========================  ===========================================================
  class                       meaning, and what the caller does
  ==========================  ===========================================================
  TransientRpcError           timeout, connection refused/reset, HTTP 5xx, malformed or
                              incomplete answer, unknown block: retry (another endpoint)
  RateLimitedError            HTTP 429 or a JSON-RPC rate-limit error: retry later;
                              ``retry_after`` (seconds) when the node said so
  InconsistentResponseError   an answer broke a rule (raised by the engine's validation):
                              retry, commit nothing
  RangeTooLargeError          ``eth_getLogs`` refused the block range: split it;
                              ``suggested`` is the node's hint, when it gave a usable one
  CallRevertedError           ``eth_call`` reverted; ``data`` is the revert data (hex)
  FatalRpcError               retrying cannot help (method not found, bad params, HTTP
                              401/403/404, unsupported chain): never retried
  ==========================  ===========================================================

- ``endpoint`` and the message never contain credentials: URL passwords, API keys in the
  path (``/v3/<key>``), in the user name or in query parameters are shown as ``***``.
- :func:`classify_rpc_error` is pure and is shared by every transport (raw HTTP and web3),
  so the same node answer gives the same class whichever source saw it.
- ``outcome`` is a short, stable label for metrics (``timeout``, ``rate_limited`` …).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from indexer.config import mask_url
from indexer.errors import IndexerError

__all__ = [
    "CallRevertedError",
    "FatalRpcError",
    "InconsistentResponseError",
    "RangeTooLargeError",
    "RateLimitedError",
    "RpcError",
    "TransientRpcError",
    "classify_http_status",
    "classify_rpc_error",
    "is_unknown_tag_error",
    "mask_endpoint",
    "parse_retry_after",
    "parse_suggested_range",
]

MASK = "***"
_MIN_SCRUB = 4


# --------------------------------------------------------------------------------------------
# Credential masking

_KEYLIKE_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-]+")


def _looks_like_key(text: str) -> bool:
    """An opaque token: long, URL-safe characters, and not an ordinary word."""
    if not _TOKEN_CHARS.fullmatch(text):
        return False
    has_digit = any(c.isdigit() for c in text)
    return (len(text) >= 16 and has_digit) or len(text) >= 32


def _secrets_of(url: str) -> list[str]:
    """The credential-like substrings of ``url`` (password, key-like user name, key-like path
    segments, values of key-like query parameters), longest first; to scrub free text."""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return []
    found = {password} if password else set()
    if username and _looks_like_key(username):
        found.add(username)
    found.update(seg for seg in parts.path.split("/") if _looks_like_key(seg))
    found.update(
        value
        for name, value in parse_qsl(parts.query)
        if _KEYLIKE_PARAM.search(name) or _looks_like_key(value)
    )
    # Shorter strings cannot be replaced in free text without mangling it.
    return sorted((s for s in found if len(s) >= _MIN_SCRUB), key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _mask_query_value(match: re.Match[str]) -> str:
    name, value = match.group(2), match.group(3)
    hidden = value and (_KEYLIKE_PARAM.search(name) or _looks_like_key(value))
    return f"{match.group(1)}{name}={MASK if hidden else value}"


def _mask_path_segment(match: re.Match[str]) -> str:
    return MASK if _looks_like_key(match.group(0)) else match.group(0)


def mask_endpoint(url: str) -> str:
    """``url`` safe to log: password (via :func:`indexer.config.mask_url`), a key-like user
    name, API keys in the path (``/v3/<key>``) and key-like query values shown as ``***``."""
    masked = mask_url(url)
    try:
        parts = urlsplit(masked)
    except ValueError:
        return masked
    if not parts.scheme or not parts.netloc:
        return masked
    userinfo, at, host = parts.netloc.rpartition("@")
    name, colon, password = userinfo.partition(":")
    netloc = f"{MASK if _looks_like_key(name) else name}{colon}{password}{at}{host}"
    path = re.sub(r"[^/]+", _mask_path_segment, parts.path)
    query = re.sub(r"(^|&)([^=&]+)=([^&]*)", _mask_query_value, parts.query)
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


# --------------------------------------------------------------------------------------------
# Exceptions


class RpcError(IndexerError):
    """Base class: a chain request failed.

    ``endpoint`` is the masked URL (or a provider name), ``method`` the JSON-RPC method,
    ``code`` the JSON-RPC error code when the node answered with an error object.
    """

    default_outcome: ClassVar[str] = "error"

    def __init__(
        self,
        detail: str,
        *,
        endpoint: str = "",
        method: str = "",
        code: int | None = None,
        outcome: str | None = None,
    ) -> None:
        secrets = _secrets_of(endpoint)
        self.endpoint = mask_endpoint(endpoint)
        self.method = method
        self.code = code
        self.outcome = outcome or self.default_outcome
        self.detail = _scrub(detail, secrets)
        where = " at ".join(part for part in (method, self.endpoint) if part)
        super().__init__(f"{self.detail} ({where})" if where else self.detail)


class TransientRpcError(RpcError):
    """Worth retrying, on this or another endpoint."""

    default_outcome = "transient"


class RateLimitedError(TransientRpcError):
    """The endpoint asked us to slow down; do not use it for ``retry_after`` seconds."""

    default_outcome = "rate_limited"

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(detail, **kwargs)


class InconsistentResponseError(TransientRpcError):
    """An answer broke a rule of :mod:`indexer.chain` (e.g. a log's block hash differs from
    the header at that height). Message: ``rule <rule> broken: k=v, …``."""

    default_outcome = "inconsistent"

    def __init__(self, rule: str, values: Mapping[str, object], **kwargs: Any) -> None:
        self.rule = rule
        self.values = dict(values)
        shown = ", ".join(f"{k}={v}" for k, v in self.values.items())
        super().__init__(f"rule {rule} broken: {shown}", **kwargs)


class RangeTooLargeError(RpcError):
    """``eth_getLogs`` refused the range; ``suggested`` = (from, to) the node proposed."""

    default_outcome = "range_too_large"

    def __init__(
        self, detail: str, *, suggested: tuple[int, int] | None = None, **kwargs: Any
    ) -> None:
        self.suggested = suggested
        super().__init__(detail, **kwargs)


class FatalRpcError(RpcError):
    """Retrying cannot help: a configuration or programming problem."""

    default_outcome = "fatal"


class CallRevertedError(RpcError):
    """``eth_call`` reverted; ``data`` is the revert data as ``0x`` hex, or None."""

    default_outcome = "reverted"

    def __init__(self, detail: str, *, data: str | None = None, **kwargs: Any) -> None:
        self.data = data
        super().__init__(detail, **kwargs)


# --------------------------------------------------------------------------------------------
# Classification of JSON-RPC error objects

_RANGE_MESSAGE = re.compile(
    r"more than \d[\d,]* results|too many (?:results|logs)|block range|range (?:is )?too"
    r"|range limit|max(?:imum)? (?:block )?range|exceeds? max results"
    r"|response size (?:exceeded|too)|limited to a [\d,]+ (?:blocks? )?range"
    r"|range [\d,]+ exceeds (?:the )?limit|narrow your filter",
    re.IGNORECASE,
)
_NUM = r"(0x[0-9a-fA-F]+|\d+)"
_BRACKET_RANGE = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*\]")
_DASH_RANGE = re.compile(rf"range:?\s+{_NUM}\s*-\s*{_NUM}", re.IGNORECASE)
_RATE_MESSAGE = re.compile(
    r"rate.?limit|too many requests|limit exceeded|exceeded .*(?:capacity|quota)"
    r"|compute units|throughput|request limit|daily limit",
    re.IGNORECASE,
)
_RATE_CODES = frozenset({-32005, -32029, 429})
_RETRY_IN = re.compile(
    r"(?:retry|try again)\s+(?:after|in)\s+(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)?", re.IGNORECASE
)
_REVERT_MESSAGE = re.compile(r"revert", re.IGNORECASE)
_TRANSIENT_MESSAGE = re.compile(
    r"out.?of.?range|header not found|unknown block|block not found|not found|missing trie"
    r"|state (?:is )?(?:not available|unavailable|missing)|pruned|timeout|timed out|try again"
    r"|busy|overloaded|unavailable|internal error|syncing",
    re.IGNORECASE,
)
_FATAL_MESSAGE = re.compile(
    r"method not found|does not exist|not supported|unsupported|not available"
    r"|not whitelisted|not allowed|unauthori[sz]ed|forbidden|invalid api key|api key"
    r"|project id|unknown chain|invalid chain|chain not",
    re.IGNORECASE,
)
_FATAL_CODES_FIRST = frozenset({-32601, -32600})
_FATAL_MESSAGE_FIRST = re.compile(
    r"method not found|method \S+ (?:does not exist|is not available|is not supported)",
    re.IGNORECASE,
)
_VM_ERROR_CODES = frozenset({-32000, -32015})
_CALL_METHODS = frozenset({"eth_call", "eth_estimateGas"})
_FATAL_CODES_LAST = frozenset({-32602, -32604, -32006})


def _int(text: str) -> int:
    return int(text, 16) if text[:2].lower() == "0x" else int(text)


def _valid_range(lo: int, hi: int) -> tuple[int, int] | None:
    return (lo, hi) if 0 <= lo <= hi else None


def _range_from_data(data: object) -> tuple[int, int] | None:
    if isinstance(data, Mapping):
        lo, hi = data.get("from"), data.get("to")
        if isinstance(lo, str) and isinstance(hi, str):
            try:
                return _valid_range(_int(lo), _int(hi))
            except ValueError:
                return None
    return None


def parse_suggested_range(message: str, data: object = None) -> tuple[int, int] | None:
    """The block range a "too many results" answer proposes, if any.

    Understands ``[0x1, 0x2]`` and ``[1, 2]`` (Infura, Alchemy), ``range 1-2`` and an Infura
    style ``data: {"from": "0x1", "to": "0x2"}``. An inverted range gives None.
    """
    from_data = _range_from_data(data)
    if from_data is not None:
        return from_data
    text = message if not isinstance(data, str) else f"{message} {data}"
    match = _BRACKET_RANGE.search(text) or _DASH_RANGE.search(text)
    if match is None:
        return None
    return _valid_range(_int(match.group(1)), _int(match.group(2)))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from time import time

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time())


def _retry_after_from(message: str, data: object) -> float | None:
    if isinstance(data, Mapping):
        for key in ("retry_after", "retryAfter", "backoff_seconds", "try_again_in"):
            value = data.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    match = _RETRY_IN.search(message)
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds / 1000 if (match.group(2) or "").lower() == "ms" else seconds


def _revert_data(data: object) -> str | None:
    if isinstance(data, Mapping):
        data = data.get("data", data.get("result"))
    if isinstance(data, str) and data[:2].lower() == "0x":
        return data.lower()
    return None


def _is_revert(code: int | None, message: str, data: object, method: str) -> bool:
    """Code 3, a message saying "revert", or a VM error code carrying revert data."""
    if code == 3 or _REVERT_MESSAGE.search(message):
        return True
    return method in _CALL_METHODS and code in _VM_ERROR_CODES and bool(_revert_data(data))


def _data_text(data: object) -> str:
    """The text an error's ``data`` carries: itself, or the text values of an object (some
    gateways say "invalid params" and explain in ``data``, e.g. ``{"payload": "range 9009594 is
    bigger than range limit 2000"}``)."""
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping):
        return " ".join(v for v in data.values() if isinstance(v, str))
    return ""


def classify_rpc_error(
    code: int | None, message: str, data: object = None, *, method: str, endpoint: str
) -> RpcError:
    """Turn a JSON-RPC error object into the exception the caller should see.

    Order matters: a range refusal (``eth_getLogs`` only) beats a rate limit (Infura uses
    -32005 for both); a revert beats the generic -32000; "method not found" beats message
    heuristics. An unknown error is transient: retries are bounded, while a wrong "fatal"
    would stop indexing for a passing fault.
    """
    kw: dict[str, Any] = {"endpoint": endpoint, "method": method, "code": code}
    text = f"JSON-RPC error {code}: {message}"
    if method == "eth_getLogs" and _RANGE_MESSAGE.search(f"{message} {_data_text(data)}"):
        return RangeTooLargeError(text, suggested=parse_suggested_range(message, data), **kw)
    if code in _RATE_CODES or _RATE_MESSAGE.search(message):
        return RateLimitedError(text, retry_after=_retry_after_from(message, data), **kw)
    if _is_revert(code, message, data, method):
        return CallRevertedError(text, data=_revert_data(data), **kw)
    if code in _FATAL_CODES_FIRST or _FATAL_MESSAGE_FIRST.search(message):
        return FatalRpcError(text, **kw)
    if _TRANSIENT_MESSAGE.search(message):
        return TransientRpcError(text, **kw)
    if code in _FATAL_CODES_LAST or _FATAL_MESSAGE.search(message):
        return FatalRpcError(text, **kw)
    return TransientRpcError(text, **kw)


def classify_http_status(
    status: int, reason: str, retry_after: str | None, *, method: str, endpoint: str
) -> RpcError:
    """An HTTP failure without a usable JSON-RPC answer: 429 → rate limited, 408/5xx →
    transient, any other status → fatal (401/403/404: credentials, plan or URL are wrong)."""
    kw: dict[str, Any] = {"endpoint": endpoint, "method": method}
    text = f"HTTP {status} {reason}".rstrip()
    if status == 429:
        return RateLimitedError(text, retry_after=parse_retry_after(retry_after), **kw)
    if status == 408 or status >= 500:
        return TransientRpcError(text, outcome="http_error", **kw)
    return FatalRpcError(text, outcome="http_error", **kw)


_UNKNOWN_TAG = re.compile(
    r"finalized|tag|hex string|invalid argument|unmarshal|not found|invalid block|unknown block",
    re.IGNORECASE,
)
_METHOD_NOT_FOUND = -32601


def is_unknown_tag_error(exc: RpcError) -> bool:
    """The node answered an error object saying it does not know a block tag such as
    ``finalized`` (pre-merge or non-Ethereum nodes): the caller treats it as "no such tag"."""
    return (
        exc.code is not None
        and exc.code != _METHOD_NOT_FOUND
        and not isinstance(exc, RateLimitedError)
        and _UNKNOWN_TAG.search(exc.detail) is not None
    )
