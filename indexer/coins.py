"""Reading an artist coin's ``name()``, ``symbol()``, ``decimals()`` and ``totalSupply()`` by
``eth_call`` at the block of its deployment event — robustly.

Guarantees:

* Never raises for what the coin returns: a revert, an empty answer, a ``bytes32`` name
  (old tokens), invalid UTF-8 or NUL bytes all give a safe text value (NULs removed, invalid
  bytes replaced by U+FFFD, cut to the column width) and the raw answer is kept, hex, in the
  result's ``raw`` map so nothing is lost. Only RPC failures that are not reverts propagate
  (the step is retried).
* ``total_supply`` is in token units, exact: ``totalSupply() / 10**decimals()`` written as a
  decimal string with up to 18 fractional digits (``artist_coins.total_supply`` is
  NUMERIC(78,18)); a token with more than 18 decimals is cut (not rounded) to 18 and says so.
  A supply with more than 60 whole digits (a huge ``totalSupply()`` with few decimals) cannot
  be stored there at all: it is written as 0 and says so (the exact units stay in the event's
  context), rather than failing every retry of the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from indexer.chain.errors import CallRevertedError
from indexer.chain.source import ChainSource

SELECTORS = {
    "name": "0x06fdde03",
    "symbol": "0x95d89b41",
    "decimals": "0x313ce567",
    "totalSupply": "0x18160ddd",
}
NAME_WIDTH = 100
SYMBOL_WIDTH = 10
SUPPLY_SCALE = 18
SUPPLY_WHOLE_DIGITS = 78 - SUPPLY_SCALE  # NUMERIC(78,18) holds at most 60 whole digits
FALLBACK_NAME = "(unreadable name)"
FALLBACK_SYMBOL = "?"
DEFAULT_DECIMALS = 18


@dataclass(frozen=True)
class CoinInfo:
    name: str
    symbol: str
    decimals: int
    total_supply_units: int
    total_supply: str
    """Token units as an exact decimal string (see module docstring)."""
    raw: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_context(self) -> dict[str, Any]:
        return {
            "coin": {
                "name": self.name,
                "symbol": self.symbol,
                "decimals": self.decimals,
                "totalSupplyUnits": str(self.total_supply_units),
                "totalSupply": self.total_supply,
                "raw": self.raw,
                "notes": self.notes,
            }
        }


def clean_text(raw: bytes, width: int) -> str:
    """Text safe for PostgreSQL: invalid UTF-8 replaced, NUL bytes removed, cut to ``width``."""
    text = raw.decode("utf-8", errors="replace").replace("\x00", "")
    return text.strip()[:width]


def decode_string(result: bytes) -> bytes | None:
    """The bytes of an ABI ``string`` return value, or of a ``bytes32`` one; None if neither."""
    if len(result) >= 64:
        offset = int.from_bytes(result[:32], "big")
        if offset + 32 <= len(result):
            length = int.from_bytes(result[offset : offset + 32], "big")
            start = offset + 32
            if start + length <= len(result):
                return result[start : start + length]
    if len(result) == 32:  # bytes32-style (old ERC-20s): the text, right-padded with NULs
        return result.rstrip(b"\x00")
    return None


def units_to_decimal(units: int, decimals: int) -> tuple[str, bool]:
    """``units / 10**decimals`` as an exact decimal string with at most 18 fractional digits;
    the flag says whether digits were cut (more than 18 decimals)."""
    negative = units < 0
    units = abs(units)
    cut = False
    if decimals > SUPPLY_SCALE:
        divisor = 10 ** (decimals - SUPPLY_SCALE)
        cut = units % divisor != 0
        units //= divisor
        decimals = SUPPLY_SCALE
    whole, frac = divmod(units, 10**decimals) if decimals else (units, 0)
    text = f"{whole}.{frac:0{decimals}d}" if decimals else str(whole)
    return ("-" if negative else "") + text, cut


def storable_supply(supply: str) -> str:
    """``supply`` (a decimal string) when ``artist_coins.total_supply`` NUMERIC(78,18) can hold
    it, else ``"0"`` (more than :data:`SUPPLY_WHOLE_DIGITS` whole digits)."""
    whole = supply.lstrip("-").split(".", 1)[0]
    return supply if len(whole) <= SUPPLY_WHOLE_DIGITS else "0"


def _call(source: ChainSource, address: str, fn: str, block_hash: str) -> tuple[bytes | None, str]:
    try:
        result = source.call(address, SELECTORS[fn], block_hash)
    except CallRevertedError as exc:
        return None, f"{fn}() reverted: {exc}"
    return bytes.fromhex(result[2:] if result.startswith("0x") else result), ""


def read_coin(source: ChainSource, address: str, block_hash: str) -> CoinInfo:
    raw: dict[str, str | None] = {}
    notes: list[str] = []
    answers: dict[str, bytes | None] = {}
    for fn in SELECTORS:
        answer, note = _call(source, address, fn, block_hash)
        answers[fn] = answer
        raw[fn] = None if answer is None else "0x" + answer.hex()
        if note:
            notes.append(note)

    def text(fn: str, width: int, fallback: str) -> str:
        answer = answers[fn]
        data = decode_string(answer) if answer else None
        if data is None:
            if answer is not None:
                notes.append(f"{fn}() returned no decodable string")
            return fallback
        cleaned = clean_text(data, width)
        if cleaned != data.decode("utf-8", errors="ignore").strip():
            notes.append(f"{fn}() text was cleaned (invalid UTF-8, NUL bytes or too long)")
        return cleaned or fallback

    def number(fn: str, default: int) -> int:
        answer = answers[fn]
        if answer is None or len(answer) < 32:
            if answer is not None:
                notes.append(f"{fn}() returned {len(answer)} bytes, not a uint256")
            return default
        return int.from_bytes(answer[:32], "big")

    decimals = number("decimals", DEFAULT_DECIMALS)
    if decimals > 255:
        notes.append(f"decimals() = {decimals} is not a uint8; using {DEFAULT_DECIMALS}")
        decimals = DEFAULT_DECIMALS
    units = number("totalSupply", 0)
    supply, cut = units_to_decimal(units, decimals)
    if cut:
        notes.append(f"total supply cut to {SUPPLY_SCALE} decimals (token has {decimals})")
    if storable_supply(supply) != supply:
        notes.append(
            f"total supply {supply} does not fit NUMERIC(78,18) (more than "
            f"{SUPPLY_WHOLE_DIGITS} whole digits); stored as 0, the exact totalSupply() is "
            "kept in the event's context (totalSupplyUnits)"
        )
        supply = "0"
    return CoinInfo(
        name=text("name", NAME_WIDTH, FALLBACK_NAME),
        symbol=text("symbol", SYMBOL_WIDTH, FALLBACK_SYMBOL),
        decimals=decimals,
        total_supply_units=units,
        total_supply=supply,
        raw=raw,
        notes=notes,
    )
