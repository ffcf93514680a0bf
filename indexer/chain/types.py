"""Chain data as the engine sees it: plain, immutable, lowercase ``0x`` hex.

Every JSON-RPC answer is turned into these types at the chain-client boundary, so the engine
never handles web3 objects, HexBytes or checksummed addresses. Hashes and addresses are
lowercase ``0x`` hex strings; ``topics`` keep their order; ``data`` is the raw hex of the log
data (``"0x"`` when empty).

``Log`` is a frozen :mod:`msgspec` struct that is also its own wire format: a backfill holds
one per log (100,000 per 100,000 events), and :data:`LOGS_DECODER` builds them straight from
the bytes of an ``eth_getLogs`` answer in C, fields renamed from the node's camelCase and
unknown fields (``blockTimestamp``, …) skipped — about three times less CPU than parsing the
answer into dicts and building the objects in Python. Its ``__post_init__`` runs for every
``Log``, decoded or built in Python: ``block_number``, ``tx_index`` and ``log_index`` become
ints (the node's hex quantities are converted; ints given in Python are kept; a JSON number
or a negative value is refused) and ``removed`` a bool (a null from the node is ``False``).
Case and hash shape are the sources' part: :func:`indexer.chain.http_source.decode_logs`
lowercases and checks whole answers at once.

``BlockHeader`` is a named tuple (a range needs only a few).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import msgspec
from msgspec.structs import force_setattr

__all__ = ["LOGS_DECODER", "BlockHeader", "Log", "LogFilter", "is_hash"]

is_hash = re.compile(r"0x[0-9a-f]{64}").fullmatch
"""A lowercase 32-byte ``0x`` hex string (block and transaction hashes)."""


class BlockHeader(NamedTuple):
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    """Seconds since the epoch (the block's own time, UTC)."""
    logs_bloom: str | None = None
    """The header's ``logsBloom`` (lowercase ``0x`` hex), when the node gave one: the engine
    checks answers against it (:mod:`indexer.chain.bloom`)."""


_WIRE_NAMES = {
    "block_number": "blockNumber",
    "block_hash": "blockHash",
    "tx_hash": "transactionHash",
    "tx_index": "transactionIndex",
    "log_index": "logIndex",
}


class Log(msgspec.Struct, frozen=True, gc=False, rename=_WIRE_NAMES):
    """One log. The type checker sees the engine's types; at run time the quantities may
    also arrive as hex text (the wire's), which ``__post_init__`` converts."""

    address: str
    topics: tuple[str, ...]
    data: str
    if TYPE_CHECKING:
        block_number: int
        block_hash: str
        tx_hash: str
        tx_index: int
        log_index: int
        removed: bool = False
    else:  # the wire's types: quantities are hex text (a JSON number is refused)
        block_number: str
        block_hash: str
        tx_hash: str
        tx_index: str
        log_index: str
        removed: bool | None = False

    def __post_init__(self) -> None:
        number: int | str = self.block_number
        if type(number) is str:
            force_setattr(self, "block_number", int(number, 16))
        tx_index: int | str = self.tx_index
        if type(tx_index) is str:
            force_setattr(self, "tx_index", int(tx_index, 16))
        log_index: int | str = self.log_index
        if type(log_index) is str:
            force_setattr(self, "log_index", int(log_index, 16))
        if self.removed is None:
            force_setattr(self, "removed", False)
        if self.block_number < 0 or self.tx_index < 0 or self.log_index < 0:
            raise ValueError(f"negative quantity in a log: {self!r:.300}")

    @property
    def position(self) -> tuple[int, int]:
        """Chain order of the log: (block number, log index)."""
        return (self.block_number, self.log_index)


LOGS_DECODER = msgspec.json.Decoder(list[Log])
"""An ``eth_getLogs`` result (the JSON array, as bytes) → ``list[Log]``."""


@dataclass(frozen=True, slots=True)
class LogFilter:
    """One ``eth_getLogs`` filter over a block range.

    ``addresses`` empty means any emitter; ``topic0`` empty means any event signature.
    """

    from_block: int
    to_block: int
    addresses: tuple[str, ...] = ()
    topic0: tuple[str, ...] = ()

    def to_rpc(self) -> dict[str, object]:
        params: dict[str, object] = {
            "fromBlock": hex(self.from_block),
            "toBlock": hex(self.to_block),
        }
        if self.addresses:
            params["address"] = list(self.addresses)
        if self.topic0:
            params["topics"] = [list(self.topic0)]
        return params
