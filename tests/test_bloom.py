"""Log blooms (indexer/chain/bloom.py) and the engine's use of them (indexer.sync)."""

from __future__ import annotations

from indexer.chain.bloom import BLOOM_BITS, item_mask, pair_mask, parse_bloom
from indexer.chain.types import BlockHeader, Log
from indexer.decode import TOPIC0, EventType
from indexer.sync import Trust, missing_log_blocks, watched_masks

REGISTRY = "0x" + "11" * 20
DISTRIBUTOR = "0x" + "22" * 20
MASTER = "0x" + "33" * 20
TRUST = Trust(registry=REGISTRY, dividends=frozenset({DISTRIBUTOR}), coin_factory=None)


def _header(number: int, bloom: int | None) -> BlockHeader:
    text = None if bloom is None else "0x" + bloom.to_bytes(BLOOM_BITS // 8, "big").hex()
    return BlockHeader(number, "0x" + f"{number:064x}", "0x" + "00" * 32, 0, text)


def _log(number: int, address: str) -> Log:
    return Log(address, (TOPIC0[EventType.TRANSFER],), "0x", number, "0x" + "ab" * 32,
               "0x" + "cd" * 32, 0, 0)  # fmt: skip


def test_masks_set_at_most_three_bits_per_item() -> None:
    for item in (REGISTRY, MASTER, TOPIC0[EventType.TRANSFER]):
        assert 1 <= item_mask(item).bit_count() <= 3
    assert pair_mask(MASTER, TOPIC0[EventType.TRANSFER]).bit_count() <= 6
    assert parse_bloom("0x" + "00" * 256) is None and parse_bloom(None) is None


def test_a_block_whose_bloom_shows_a_watched_event_needs_its_log() -> None:
    watched = watched_masks(TRUST, [MASTER])
    assert set(watched) == {REGISTRY, DISTRIBUTOR, MASTER}
    transfer = watched[MASTER]
    header = _header(7, transfer)
    assert missing_log_blocks([header], [], watched) == [(header, MASTER)]
    assert missing_log_blocks([header], [_log(7, MASTER)], watched) == []
    assert missing_log_blocks([header], [_log(8, MASTER)], watched) == [(header, MASTER)]
    # another watched emitter's log in the block: not judged (shared topic bits)
    assert missing_log_blocks([header], [_log(7, DISTRIBUTOR)], watched) == []
    # an unwatched emitter's log does not count as an answer for the block
    assert missing_log_blocks([header], [_log(7, "0x" + "44" * 20)], watched) == [(header, MASTER)]
    # only the address, or only the topic, in the bloom: not a watched event
    assert missing_log_blocks([_header(7, item_mask(MASTER))], [], watched) == []
    # no bloom; a bloom too full to tell anything
    assert missing_log_blocks([_header(7, None)], [], watched) == []
    assert missing_log_blocks([_header(7, (1 << BLOOM_BITS) - 1)], [], watched) == []


def test_fetched_by_signature_any_audifi_log_answers_its_block() -> None:
    """Spoofed transfers counted (the default): the range is fetched by AudiFi signature, so a
    registered contract's ``Approval`` is not fetched, yet sets its address bits; another
    token's ``Transfer`` (fetched, not watched) sets the topic bits. Such a block is answered
    (found by the property test: a false alarm). A block with nothing fetched is judged, and
    a configured contract's other event (its own filter's answer) answers nothing."""
    watched = watched_masks(TRUST, [MASTER])
    approval = "0x" + "8c" * 32
    header = _header(7, watched[MASTER])
    coin_transfer = _log(7, "0x" + "44" * 20)
    assert missing_log_blocks([header], [coin_transfer], watched, by_signature=True) == []
    assert missing_log_blocks([header], [], watched, by_signature=True) == [(header, MASTER)]
    other = Log(REGISTRY, (approval,), "0x", 7, "0x" + "ab" * 32, "0x" + "cd" * 32, 0, 1)
    assert missing_log_blocks([header], [other], watched, by_signature=True) == [(header, MASTER)]
    assert missing_log_blocks([header], [other], watched) == []
