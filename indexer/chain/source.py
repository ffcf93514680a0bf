"""The chain-source interface the engine depends on, and nothing more.

Two implementations: :class:`indexer.chain.http_source.HttpChainSource` (raw JSON-RPC over
HTTP with batching and failover: production, anvil) and
:class:`indexer.chain.web3_source.Web3ChainSource` (any web3 instance: the in-process
eth-tester chain for fast tests).

Contract of every method: answers are converted to :mod:`indexer.chain.types`; failures raise
the exceptions of :mod:`indexer.chain.errors` (never a driver or HTTP exception).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from indexer.chain.types import BlockHeader, Log, LogFilter


class ChainSource(Protocol):
    def chain_id(self) -> int:
        """``eth_chainId``."""

    def head(self) -> int:
        """Number of the ``latest`` block."""

    def finalized(self) -> int | None:
        """Number of the ``finalized`` block, or None when the node has no such tag."""

    def fetch(
        self, filters: Sequence[LogFilter], header_numbers: Sequence[int]
    ) -> tuple[list[list[Log]], list[BlockHeader | None]]:
        """In ONE round trip (a JSON-RPC batch where the transport has them), the logs of
        each filter and the headers at the given heights (None where the node returned a
        null header). Logs are returned as the node gave them (no validation here); results
        are in the order of the arguments.
        """

    def headers(self, numbers: Sequence[int]) -> list[BlockHeader | None]:
        """Headers at the given heights, in one round trip; None for a null header."""

    def call(self, to: str, data: str, block_hash: str) -> str:
        """``eth_call`` of ``data`` on contract ``to`` at the block with ``block_hash``
        (EIP-1898 ``{"blockHash": …}``); returns the raw result as ``0x`` hex. A revert raises
        :class:`indexer.chain.errors.CallRevertedError`."""

    def close(self) -> None:
        """Release connections."""
