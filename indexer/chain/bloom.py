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
SATURATED_BITS = BLOOM_BITS // 2
"""A bloom with more bits set than this says "maybe" to almost anything: it is not used."""


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
    """A header's ``logsBloom`` as an integer; None when absent, empty, or too full to tell
    anything (more than :data:`SATURATED_BITS` bits set)."""
    if not text:
        return None
    bloom = int(text, 16)
    if bloom == 0 or bloom.bit_count() > SATURATED_BITS:
        return None
    return bloom


def may_contain(bloom: int, mask: int) -> bool:
    return bloom & mask == mask
