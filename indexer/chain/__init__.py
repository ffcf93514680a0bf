"""Chain access: the :class:`ChainSource` interface, its data types and its error classes.

The sources themselves live in :mod:`indexer.chain.http_source` (JSON-RPC over HTTP with
batching and failover) and :mod:`indexer.chain.web3_source` (any web3 instance); import them
from there, so that importing this package stays cheap (no web3, no requests).
"""

from indexer.chain.errors import (
    CallRevertedError,
    FatalRpcError,
    InconsistentResponseError,
    RangeTooLargeError,
    RateLimitedError,
    RpcError,
    TransientRpcError,
)
from indexer.chain.source import ChainSource
from indexer.chain.types import BlockHeader, Log, LogFilter

__all__ = [
    "BlockHeader",
    "CallRevertedError",
    "ChainSource",
    "FatalRpcError",
    "InconsistentResponseError",
    "Log",
    "LogFilter",
    "RangeTooLargeError",
    "RateLimitedError",
    "RpcError",
    "TransientRpcError",
]
