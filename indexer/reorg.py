"""Pure fork handling over stored block references: no I/O, easy to test.

The engine stores ``(number, hash, parent_hash)`` of the blocks inside the reorg window. When
the chain no longer links to the stored head, :func:`find_common_ancestor` compares the stored
blocks with the node's canonical headers at the same heights and returns the highest block
both agree on — the point to roll back to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockRef:
    number: int
    hash: str
    parent_hash: str


class NodeMissingBlocksError(Exception):
    """The node has no header at a height we must compare (it is behind or lagging)."""


def find_common_ancestor(
    stored: Iterable[BlockRef], canonical: Mapping[int, str | None]
) -> BlockRef | None:
    """The highest stored block whose hash equals the canonical hash at its height.

    ``canonical`` maps each stored height to the node's hash there (None: the node returned a
    null header). Returns None when no stored block matches: the fork is deeper than the
    stored window. Raises :class:`NodeMissingBlocksError` when the node lacks a header at a
    height above the first match — nothing can be concluded from a node that is behind.
    """
    for block in sorted(stored, key=lambda b: b.number, reverse=True):
        node_hash = canonical.get(block.number)
        if node_hash is None:
            raise NodeMissingBlocksError(f"node returned no header at block {block.number}")
        if node_hash == block.hash:
            return block
    return None


def links(parent_hash: str, stored_head: BlockRef | None) -> bool:
    """Whether a block with ``parent_hash`` extends ``stored_head`` (always, with no head)."""
    return stored_head is None or parent_hash == stored_head.hash
