"""Unit tests of :mod:`indexer.coins`: the supply as ``artist_coins.total_supply`` stores it."""

from __future__ import annotations

import pytest
from eth_abi import encode

from indexer.coins import SELECTORS, read_coin, storable_supply, units_to_decimal


@pytest.mark.parametrize(
    "units, decimals, exact",
    [
        (0, 18, "0.000000000000000000"),
        (7 * 10**18, 18, "7.000000000000000000"),
        (5, 0, "5"),
        (10**30 + 5, 20, "10000000000.00000000000000000005"),
        (2**256 - 1, 77, "1." + str(2**256 - 1)[1:]),
    ],
)
def test_units_to_decimal_is_exact(units: int, decimals: int, exact: str) -> None:
    assert units_to_decimal(units, decimals) == exact


@pytest.mark.parametrize(
    "supply, stored",
    [
        ("0.000000000000000000", "0.000000000000000000"),
        ("5", "5"),
        ("1000000.000000000000000000000000", "1000000.000000000000000000"),  # zeros past 18
        ("1.000000000000000000000001", None),  # a digit past the 18th decimal place
        ("9" * 60 + "." + "9" * 18, "9" * 60 + "." + "9" * 18),  # NUMERIC(78,18)'s largest
        ("1" + "0" * 60, None),  # 61 whole digits
        (str(2**256 - 1), None),
        ("0." + "0" * 18 + "000", "0." + "0" * 18),
    ],
)
def test_storable_supply_is_exact_or_none(supply: str, stored: str | None) -> None:
    assert storable_supply(supply) == stored


class _Answers:
    """A chain source whose ``eth_call`` answers are given (hex), per selector."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def call(self, address: str, data: str, block_hash: str) -> str:
        return self.answers[data]


def _word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


@pytest.mark.parametrize(
    "decimals, supply, problem",
    [
        (_word(6), _word(5 * 10**6), None),
        ("0x" + "12", _word(10**18), "decimals() did not answer a uint8"),  # one byte
        (_word(300), _word(10**18), "decimals() = 300 is not a uint8"),
        (_word(18), "0x", "totalSupply() did not answer a uint256"),
        (_word(0), _word(2**256 - 1), "cannot hold it exactly"),
    ],
)
def test_read_coin_says_when_the_supply_cannot_be_stored_as_the_coin_has_it(
    decimals: str, supply: str, problem: str | None
) -> None:
    name = "0x" + encode(["string"], ["Coin"]).hex()
    source = _Answers(
        {SELECTORS["name"]: name, SELECTORS["symbol"]: name, SELECTORS["decimals"]: decimals,
         SELECTORS["totalSupply"]: supply}
    )  # fmt: skip
    info = read_coin(source, "0x" + "ab" * 20, "0x" + "cd" * 32)  # type: ignore[arg-type]
    if problem is None:
        assert info.supply_problem is None and info.total_supply == "5.000000"
    else:
        assert info.supply_problem is not None and problem in info.supply_problem
        assert problem in " ".join(info.notes)
