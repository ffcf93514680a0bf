"""A chain source over any web3 instance: the in-process eth-tester chain (fast tests) or an
HTTP web3 (comparison with :class:`~indexer.chain.http_source.HttpChainSource`).

Guarantees:

- Same contract as :class:`~indexer.chain.source.ChainSource`, with the same types:
  lowercase ``0x`` hex (HexBytes via ``.to_0x_hex()``, addresses lowercased), plain ints.
- Goes through ``w3.eth`` (``get_logs``, ``get_block``, ``call``): eth-tester's provider
  cannot take raw camelCase ``eth_getLogs`` params.
- No batching: :meth:`Web3ChainSource.fetch` makes its calls one after another, so it is not
  one round trip; the engine's checks still compare logs and headers.
- No retries: every web3, eth-tester and HTTP exception is mapped to
  :mod:`indexer.chain.errors` at once (revert → CallRevertedError; JSON-RPC error objects go
  through the same :func:`~indexer.chain.errors.classify_rpc_error` as the HTTP source).
- ``finalized()`` returns what the node says (eth-tester: finalized = latest); None when the
  node does not know the tag.
- ``call()`` at a block hash: eth-tester cannot take a block hash, so the hash is resolved to
  its height, the call runs at that height, and the hash at that height is checked again
  afterwards; a block that is not (or no longer) canonical raises TransientRpcError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec.structs
import requests
from hexbytes import HexBytes
from web3 import Web3
from web3 import exceptions as w3x

from indexer.chain.errors import (
    CallRevertedError,
    FatalRpcError,
    RateLimitedError,
    RpcError,
    TransientRpcError,
    classify_rpc_error,
    is_unknown_tag_error,
)
from indexer.chain.types import BlockHeader, Log, LogFilter

try:  # eth-tester ships with web3[tester]; an HTTP-only install may lack it
    from eth_tester.exceptions import BlockNotFound as TesterBlockNotFound
    from eth_tester.exceptions import TransactionFailed as TesterTransactionFailed
except ImportError:  # pragma: no cover
    TesterBlockNotFound = TesterTransactionFailed = type("_Never", (Exception,), {})

__all__ = ["Web3ChainSource"]

T = TypeVar("T")

_FATAL_WEB3 = (
    w3x.MethodNotSupported,
    w3x.Web3ValidationError,
    w3x.InvalidAddress,
    w3x.Web3ValueError,
    w3x.Web3TypeError,
)
_TIMEOUTS = (w3x.RequestTimedOut, w3x.TimeExhausted, requests.Timeout)
_CONNECTION = (w3x.ProviderConnectionError, requests.ConnectionError)


def _hex(value: Any) -> str:
    return HexBytes(value).to_0x_hex()


def _to_log(entry: Mapping[str, Any]) -> Log:
    return Log(
        address=str(entry["address"]).lower(),
        topics=tuple(_hex(topic) for topic in entry["topics"]),
        data=_hex(entry["data"]),
        block_number=int(entry["blockNumber"]),
        block_hash=_hex(entry["blockHash"]),
        tx_hash=_hex(entry["transactionHash"]),
        tx_index=int(entry["transactionIndex"]),
        log_index=int(entry["logIndex"]),
        removed=bool(entry.get("removed", False)),
    )


def _to_header(block: Mapping[str, Any]) -> BlockHeader:
    return BlockHeader(
        number=int(block["number"]),
        hash=_hex(block["hash"]),
        parent_hash=_hex(block["parentHash"]),
        timestamp=int(block["timestamp"]),
        logs_bloom=_hex(block["logsBloom"]) if block.get("logsBloom") is not None else None,
    )


class Web3ChainSource:
    """:class:`~indexer.chain.source.ChainSource` through a caller-owned web3 instance."""

    def __init__(self, w3: Web3) -> None:
        self._w3 = w3
        provider = w3.provider
        self.endpoint = str(getattr(provider, "endpoint_uri", None) or type(provider).__name__)

    # ---------------------------------------------------------------- ChainSource

    def chain_id(self) -> int:
        return self._guarded("eth_chainId", lambda: int(self._w3.eth.chain_id))

    def head(self) -> int:
        return self._guarded("eth_blockNumber", lambda: int(self._w3.eth.block_number))

    def finalized(self) -> int | None:
        try:
            header = self._header("finalized")
        except RpcError as exc:
            if is_unknown_tag_error(exc):
                return None
            raise
        return None if header is None else header.number

    def fetch(
        self, filters: Sequence[LogFilter], header_numbers: Sequence[int]
    ) -> tuple[list[list[Log]], list[BlockHeader | None]]:
        logs = [self._logs(f) for f in filters]
        return logs, self.headers(header_numbers)

    def headers(self, numbers: Sequence[int]) -> list[BlockHeader | None]:
        return [self._header(n) for n in numbers]

    def call(self, to: str, data: str, block_hash: str) -> str:
        header = self._header(block_hash)
        if header is None:
            raise self._not_canonical(block_hash, None)
        tx: Any = {"to": Web3.to_checksum_address(to), "data": data}
        result = self._guarded("eth_call", lambda: self._w3.eth.call(tx, header.number))
        now = self._header(header.number)
        if now is None or now.hash != header.hash:
            raise self._not_canonical(block_hash, now)
        return _hex(result)

    def close(self) -> None:
        """Nothing to release: the web3 instance belongs to the caller."""

    # ---------------------------------------------------------------- helpers

    def _logs(self, log_filter: LogFilter) -> list[Log]:
        """Logs of the filter with JSON-RPC's block-wide ``logIndex``.

        eth-tester restarts ``logIndex`` at 0 in every transaction, so (block, log index) would
        not identify a log. This source therefore reads *every* log of the range, numbers them
        across each block in chain order (transaction index, then index within it) — as
        JSON-RPC nodes do — and applies the filter's addresses and topic0 itself.
        """
        params: Any = {"fromBlock": log_filter.from_block, "toBlock": log_filter.to_block}
        entries = self._guarded("eth_getLogs", lambda: self._w3.eth.get_logs(params))
        ordered = sorted(
            (_to_log(entry) for entry in entries),
            key=lambda log: (log.block_number, log.tx_index, log.log_index),
        )
        addresses = set(log_filter.addresses)
        topics = set(log_filter.topic0)
        out: list[Log] = []
        block, index = -1, 0
        for log in ordered:
            index = index + 1 if log.block_number == block else 0
            block = log.block_number
            if addresses and log.address not in addresses:
                continue
            if topics and (not log.topics or log.topics[0] not in topics):
                continue
            out.append(msgspec.structs.replace(log, log_index=index))
        return out

    def _header(self, block_id: Any) -> BlockHeader | None:
        """Header by number (int), tag or hash (str); None when the node has no such block."""
        try:
            block = self._guarded("eth_getBlockByNumber", lambda: self._w3.eth.get_block(block_id))
        except _BlockMissing:
            return None
        return _to_header(block)

    def _not_canonical(self, block_hash: str, now: BlockHeader | None) -> TransientRpcError:
        at = "nothing" if now is None else f"{now.hash} at {now.number}"
        return TransientRpcError(
            f"block {block_hash} is not on the canonical chain (node has {at})",
            endpoint=self.endpoint,
            method="eth_call",
        )

    def _guarded(self, method: str, action: Callable[[], T]) -> T:
        with self._translated(method):
            return action()

    @contextmanager
    def _translated(self, method: str) -> Iterator[None]:
        """Map web3 / eth-tester / HTTP exceptions to :mod:`indexer.chain.errors`; a missing
        block becomes :class:`_BlockMissing` for the caller to turn into None."""
        kw: dict[str, Any] = {"endpoint": self.endpoint, "method": method}
        try:
            yield
        except (w3x.BlockNotFound, TesterBlockNotFound) as exc:
            raise _BlockMissing(str(exc), **kw) from None
        except w3x.ContractLogicError as exc:
            data = exc.data if isinstance(exc.data, str) else None
            raise CallRevertedError(str(exc.message or exc), data=data, **kw) from None
        except TesterTransactionFailed as exc:
            raise CallRevertedError(str(exc), **kw) from None
        except w3x.TooManyRequests as exc:
            raise RateLimitedError(str(exc), **kw) from None
        except _TIMEOUTS as exc:
            raise TransientRpcError(str(exc), outcome="timeout", **kw) from None
        except _CONNECTION as exc:
            raise TransientRpcError(str(exc), outcome="connection_error", **kw) from None
        except w3x.Web3RPCError as exc:
            raise _from_rpc_error(exc, method, self.endpoint) from None
        except _FATAL_WEB3 as exc:
            raise FatalRpcError(f"{type(exc).__name__}: {exc}", **kw) from None
        except (w3x.Web3Exception, requests.RequestException) as exc:
            raise TransientRpcError(f"{type(exc).__name__}: {exc}", **kw) from None


class _BlockMissing(TransientRpcError):
    """Internal: the node has no block with that id (a null header)."""


def _from_rpc_error(exc: w3x.Web3RPCError, method: str, endpoint: str) -> RpcError:
    error = (exc.rpc_response or {}).get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        return classify_rpc_error(
            code if isinstance(code, int) else None,
            str(error.get("message", "")),
            error.get("data"),
            method=method,
            endpoint=endpoint,
        )
    return classify_rpc_error(None, str(exc.message or exc), method=method, endpoint=endpoint)
