"""Reading an artist coin's ``name()``, ``symbol()``, ``decimals()`` and ``totalSupply()`` by
``eth_call`` at the block of its deployment event — robustly.

Guarantees:

* Never raises for what the coin returns: a revert, an empty answer, a ``bytes32`` name
  (old tokens), invalid UTF-8 or NUL bytes all give a safe text value (NULs removed, invalid
  bytes replaced by U+FFFD, cut to the column width) and the raw answer is kept, hex, in the
  result's ``raw`` map so nothing is lost. Only RPC failures that are not reverts propagate
  (the step is retried).
* ``total_supply`` is in token units, exact: ``totalSupply() / 10**decimals()`` as a decimal
  string. ``artist_coins.total_supply`` is NUMERIC(78,18) (pinned by SPEC §8): it holds at
  most 60 whole digits and 18 decimal places. A supply it cannot hold exactly — more whole
  digits, a non-zero digit past the 18th decimal place —, or one the coin does not tell
  (``totalSupply()`` reverts or does not answer a uint256, ``decimals()`` answers no
  uint8) sets
  :attr:`CoinInfo.supply_problem`: the deployment is then kept as a dead letter (SPEC §4.6)
  rather than stored with a value that is not the coin's (see
  :meth:`indexer.projections.AudifiProjector.enrich`). A ``decimals()`` that reverts is taken
  as 18, the ERC-20 convention (``decimals()`` is optional in the standard), with a note.
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
    """Token units as an exact decimal string, as ``artist_coins.total_supply`` stores it
    (at most 18 decimal places) when :attr:`supply_problem` is None."""
    raw: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    supply_problem: str | None = None
    """Why the exact supply cannot be stored (or is not known); None when it can."""

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
                **({"supplyProblem": self.supply_problem} if self.supply_problem else {}),
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


def units_to_decimal(units: int, decimals: int) -> str:
    """``units / 10**decimals`` as an exact decimal string (no trailing zeros are cut)."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}" if decimals else f"{sign}{whole}"


def storable_supply(supply: str) -> str | None:
    """``supply`` (an exact decimal string) as ``artist_coins.total_supply`` NUMERIC(78,18)
    holds it — at most :data:`SUPPLY_SCALE` decimal places, the zeros past them dropped —, or
    None when it cannot hold it exactly."""
    whole, _, frac = supply.lstrip("-").partition(".")
    if len(whole.lstrip("0")) > SUPPLY_WHOLE_DIGITS or frac[SUPPLY_SCALE:].strip("0"):
        return None
    if len(frac) <= SUPPLY_SCALE:
        return supply
    kept = frac[:SUPPLY_SCALE]
    return supply[: len(supply) - len(frac) - 1] + (f".{kept}" if kept else "")


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

    decimals_answer, supply_answer = answers["decimals"], answers["totalSupply"]
    decimals = number("decimals", DEFAULT_DECIMALS)
    units = number("totalSupply", 0)
    if decimals_answer is None:
        notes.append(f"decimals() reverted: taken as {DEFAULT_DECIMALS} (the ERC-20 convention)")
    problem: str | None = None
    if supply_answer is None or len(supply_answer) < 32:
        problem = "totalSupply() did not answer a uint256"
    elif decimals_answer is not None and len(decimals_answer) < 32:
        problem = "decimals() did not answer a uint8"
    elif decimals > 255:
        problem = f"decimals() = {decimals} is not a uint8"
    if decimals > 255:
        decimals = DEFAULT_DECIMALS
    supply = units_to_decimal(units, decimals)
    stored = storable_supply(supply)
    if problem is None and stored is None:
        problem = (
            f"totalSupply() / 10^decimals() = {units} / 10^{decimals} = {supply} tokens: "
            f"artist_coins.total_supply NUMERIC(78,18) cannot hold it exactly (at most "
            f"{SUPPLY_WHOLE_DIGITS} whole digits and {SUPPLY_SCALE} decimal places)"
        )
    if problem is not None:
        notes.append(problem)
    return CoinInfo(
        name=text("name", NAME_WIDTH, FALLBACK_NAME),
        symbol=text("symbol", SYMBOL_WIDTH, FALLBACK_SYMBOL),
        decimals=decimals,
        total_supply_units=units,
        total_supply=supply if stored is None else stored,
        raw=raw,
        notes=notes,
        supply_problem=problem,
    )
