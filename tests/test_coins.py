"""Unit tests of :mod:`indexer.coins`: the supply as ``artist_coins.total_supply`` stores it."""

from __future__ import annotations

import pytest

from indexer.coins import storable_supply, units_to_decimal


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
