"""Wire-level helpers shared by the single-frame and multi-packet layouts."""

from __future__ import annotations

import math
from dataclasses import dataclass

# GB/T 27930-2015 §4.5: current fields are 0.1 A/bit with a -400 A offset.
CURRENT_OFFSET_A = -400.0
CURRENT_SCALE_A = 0.1


class DecodeError(ValueError):
    """Bytes that are not a valid GB/T 27930 message (the peer's fault)."""


class EncodeError(ValueError):
    """A message whose values cannot be put on the wire (our fault)."""


class UnknownPgn(DecodeError):
    """A PGN that is not a GB/T 27930-2015 message (counted by the link, never acted on)."""


@dataclass(frozen=True, slots=True)
class Oddity:
    """An informational field that did not decode as the standard describes, or reserved
    bits that are not 1 (§7.9). The message is still accepted; this says what was odd."""

    message: str
    field: str
    raw: bytes
    detail: str


Notes = list[Oddity]


def current_raw(gbt_signed_a: float, name: str) -> int:
    """Raw 16-bit value for a current already in the standard's sign (+ = discharge)."""
    if not math.isfinite(gbt_signed_a):
        raise EncodeError(f"{name}: not a finite number: {gbt_signed_a!r}")
    raw = round((gbt_signed_a - CURRENT_OFFSET_A) / CURRENT_SCALE_A)
    if not 0 <= raw <= 0xFFFF:
        raise EncodeError(f"{name}: {gbt_signed_a} A outside -400..6153.5 A")
    return raw


def signed_current(raw: int) -> float:
    """The standard's signed current (+ = discharge) for a raw 16-bit value."""
    return round(raw * CURRENT_SCALE_A + CURRENT_OFFSET_A, 1)


def charge_current(raw: int) -> float:
    """Our signed current (+ = into the vehicle) for a raw 16-bit value; raw 4000 is 0.0 A,
    never -0.0 (which would print, compare in text, and serialise as a discharge)."""
    return -signed_current(raw) + 0.0


def u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 2], "little")


def put_u16(value: int, name: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise EncodeError(f"{name}: raw {value} outside 0..65535")
    return value.to_bytes(2, "little")


def scaled(value: float, scale: float, name: str, offset: float = 0.0) -> int:
    if not math.isfinite(value):
        raise EncodeError(f"{name}: not a finite number: {value!r}")
    return round((value - offset) / scale)
