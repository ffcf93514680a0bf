"""Ethereum log blooms (yellow paper §4.3.1): could a block hold a log of a given emitter with a
given topic?

A header's ``logsBloom`` is a 2048-bit filter over the address and the topics of every log in
the block. For each item the bloom sets three bits, taken from the first six bytes of its
Keccak-256 hash. A clear bit proves the item absent; all bits set means "maybe" (false
positives grow with the number of logs in the block). The engine uses this to catch a node
that answers ``eth_getLogs`` with fewer logs than the block holds (see
:func:`indexer.sync.missing_log_blocks`).
"""

from __future__ import annotations

import functools

from eth_utils.crypto import keccak

BLOOM_BITS = 2048


@functools.lru_cache(maxsize=65_536)
def item_mask(item: str) -> int:
    """The three bloom bits of ``item`` (``0x`` hex: a 20-byte address or a 32-byte topic)."""
    digest = keccak(bytes.fromhex(item[2:]))
    mask = 0
    for i in (0, 2, 4):
        mask |= 1 << (((digest[i] << 8) | digest[i + 1]) & (BLOOM_BITS - 1))
    return mask


def pair_mask(address: str, topic: str) -> int:
    """The bits a log of ``address`` with ``topic`` sets (both must be present)."""
    return item_mask(address) | item_mask(topic)


def parse_bloom(text: str | None) -> int | None:
    """A header's ``logsBloom`` as an integer; None when absent or empty (no log at all)."""
    if not text:
        return None
    return int(text, 16) or None


def false_alarm_odds(bloom: int, masks: int, bits_per_mask: int = 6) -> float:
    """About how likely ``masks`` masks of ``bits_per_mask`` random bits all find their bits
    set in ``bloom`` by chance: a bloom that many logs filled says "maybe" to almost anything."""
    return masks * (bloom.bit_count() / BLOOM_BITS) ** bits_per_mask


def may_contain(bloom: int, mask: int) -> bool:
    return bloom & mask == mask
