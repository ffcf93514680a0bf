"""indexer.decode: the fast path of decode_json gives exactly what decode gives, or its error."""

from __future__ import annotations

import uuid

import pytest

from indexer.chain.types import Log
from indexer.decode import TOPIC0, DecodeError, EventType, args_to_json, decode, decode_json

ALICE = "0x" + "0" * 24 + "ab" * 20
BOB = "0x" + "0" * 24 + "cd" * 20
MASTER = "0x" + uuid.UUID(int=7).hex + "0" * 32


def _log(topics: list[str], data: str = "0x") -> Log:
    return Log("0x" + "ee" * 20, tuple(topics), data, 1, "0x" + "11" * 32, "0x" + "22" * 32, 0, 0)


def _token(value: int) -> str:
    return f"0x{value:064x}"


TRANSFER = TOPIC0[EventType.TRANSFER]
CASES = {
    "mint": (_log([TRANSFER, "0x" + "00" * 32, ALICE, _token(1)]), EventType.TRANSFER),
    "largest token": (_log([TRANSFER, ALICE, BOB, _token(2**256 - 1)]), EventType.TRANSFER),
    "burn": (_log([TRANSFER, ALICE, "0x" + "00" * 32, _token(0)]), EventType.TRANSFER),
    "dirty address padding": (
        _log([TRANSFER, "0x" + "01" + "0" * 22 + "ab" * 20, BOB, _token(1)]),
        EventType.TRANSFER,
    ),
    "short token word": (_log([TRANSFER, ALICE, BOB, "0x01"]), EventType.TRANSFER),
    "uppercase hex": (
        _log([TRANSFER, ALICE.upper().replace("0X", "0x"), BOB, _token(1)]),
        EventType.TRANSFER,
    ),
    "data where none belongs": (
        _log([TRANSFER, ALICE, BOB, _token(1)], data="0x" + "00" * 32),
        EventType.TRANSFER,
    ),
    "dividend": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data=_token(10**30)),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "largest dividend": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data=_token(2**256 - 1)),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "zero dividend": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data=_token(0)),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with dirty bytes16 padding": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER[:-1] + "1"], data=_token(5)),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with uppercase data": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data=_token(0xABC).upper()),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with uppercase master": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], "0x" + MASTER[2:].upper()], data=_token(1)),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with short data": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data="0x" + "00" * 31),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with long data": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data=_token(1) + "00"),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with non-hex data": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], MASTER], data="0x" + "zz" * 32),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "dividend with a short master": (
        _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], "0x" + uuid.UUID(int=7).hex], data=_token(1)),
        EventType.DIVIDEND_DEPOSITED,
    ),
    "registration": (
        _log([TOPIC0[EventType.MASTER_REGISTERED], MASTER, BOB]),
        EventType.MASTER_REGISTERED,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_decode_json_equals_decode(name: str) -> None:
    log, event = CASES[name]
    try:
        expected = args_to_json(decode(log, event).args)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as raised:
            decode_json(log, event)
        assert str(raised.value) == str(exc)
    else:
        assert decode_json(log, event) == expected


def test_dividend_fast_path_values() -> None:
    master = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    log = _log([TOPIC0[EventType.DIVIDEND_DEPOSITED], "0x" + master.hex + "0" * 32], _token(10**30))
    assert decode_json(log, EventType.DIVIDEND_DEPOSITED) == {
        "masterId": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "amount": str(10**30),
    }


def test_fast_path_values() -> None:
    log, event = CASES["largest token"]
    assert decode_json(log, event) == {
        "from": "0x" + "ab" * 20,
        "to": "0x" + "cd" * 20,
        "tokenId": str(2**256 - 1),
    }
