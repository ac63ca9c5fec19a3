"""The power-module register map: loaded from register_map.toml, validated, typed.

Pure data and arithmetic, no I/O besides reading the TOML file: the driver and the simulator
both encode and decode through these objects, so scaling lives in exactly one place.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

DEFAULT_MAP_PATH = Path(__file__).with_name("register_map.toml")


class RegisterMapError(ValueError):
    """The map file itself is wrong (our fault, found at load time)."""


class RegType(StrEnum):
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"

    @property
    def width(self) -> int:
        return 2 if self is RegType.UINT32 else 1

    @property
    def raw_range(self) -> tuple[int, int]:
        if self is RegType.INT16:
            return -0x8000, 0x7FFF
        if self is RegType.UINT16:
            return 0, 0xFFFF
        return 0, 0xFFFF_FFFF


class Access(StrEnum):
    RW = "rw"
    RO = "ro"


@dataclass(frozen=True, slots=True)
class Register:
    name: str
    address: int
    type: RegType
    scale: float
    unit: str
    access: Access
    minimum: float
    maximum: float
    description: str
    default: float | None = None
    values: Mapping[int, str] = field(default_factory=dict)
    bits: Mapping[int, str] = field(default_factory=dict)
    # How a value between two raw steps is written: "nearest", or "toward_zero" for a
    # limit, which must never be rounded above what was asked (a 0.06 A limit on a 0.1 A
    # register is written as 0.0 A, not 0.1 A).
    rounding: str = "nearest"
    # Derived once (a simulation encodes and decodes hundreds of registers a simulated
    # second): words, addresses, and min..max and the type's range in raw counts.
    width: int = field(init=False, repr=False, compare=False)
    addresses: range = field(init=False, repr=False, compare=False)
    _raw_range: tuple[int, int] = field(init=False, repr=False, compare=False)
    _plausible_raw: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = self.type.width
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "addresses", range(self.address, self.address + width))
        object.__setattr__(self, "_raw_range", self.type.raw_range)
        # Bounds compared in raw counts: 11000 * 0.1 is 1100.0000000000002 in floats.
        object.__setattr__(self, "_plausible_raw", (round(self.minimum / self.scale),
                                                    round(self.maximum / self.scale)))

    def _where(self) -> str:
        return f"register {self.name!r} (address {self.address})"

    def to_raw(self, value: float) -> int:
        """Engineering value -> integer raw value; ValueError if NaN or out of range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self._where()}: {value!r} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"{self._where()}: {value!r} {self.unit} is not finite")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(
                f"{self._where()}: {value!r} {self.unit} outside "
                f"{self.minimum:g}..{self.maximum:g} {self.unit}"
            )
        steps = value / self.scale
        # The 1e-9 keeps 2.3 A (22.999999999999996 steps in binary) from losing a step.
        raw = math.trunc(steps + math.copysign(1e-9, steps)) if self.rounding == "toward_zero" \
            else round(steps)
        lo, hi = self._raw_range
        # min/max were checked against the raw range at load time; clamp absorbs rounding only.
        return min(max(raw, lo), hi)

    def encode(self, value: float) -> list[int]:
        """Engineering value -> register words (high word first)."""
        raw = self.to_raw(value)
        if self.type is RegType.INT16:
            return [raw & 0xFFFF]
        if self.type is RegType.UINT32:
            return [(raw >> 16) & 0xFFFF, raw & 0xFFFF]
        return [raw]

    def raw_from_words(self, words: Sequence[int]) -> int:
        """Register words -> raw integer, without range checks on the value."""
        if len(words) != self.width:
            raise ValueError(f"{self._where()}: expected {self.width} words, got {len(words)}")
        for word in words:
            if not isinstance(word, int) or not 0 <= word <= 0xFFFF:
                raise ValueError(f"{self._where()}: {word!r} is not a 16-bit register value")
        if self.type is RegType.INT16:
            return words[0] - 0x10000 if words[0] & 0x8000 else words[0]
        if self.type is RegType.UINT32:
            return (words[0] << 16) | words[1]
        return words[0]

    def decode(self, words: Sequence[int]) -> float:
        """Register words -> engineering value; ValueError if outside min..max."""
        raw = self.raw_from_words(words)
        value = round(raw * self.scale, 9)
        lo, hi = self._plausible_raw
        if not lo <= raw <= hi:
            raise ValueError(
                f"{self._where()}: {value:g} {self.unit} outside plausible "
                f"{self.minimum:g}..{self.maximum:g} {self.unit}"
            )
        return value

    def bit(self, name: str) -> int:
        """Mask of a named bit of this bit field."""
        for index, bit_name in self.bits.items():
            if bit_name == name:
                return 1 << index
        raise KeyError(f"{self._where()} has no bit {name!r}")


@dataclass(frozen=True, slots=True)
class RegisterMap:
    registers: Mapping[str, Register]
    meta: Mapping[str, Any] = field(default_factory=dict)
    # Addresses from the first to the last register: what one status poll reads. Computed
    # once: every poll and every simulated register write needs it.
    span: range = field(init=False, repr=False, compare=False)
    _by_address: tuple[Register, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.registers:
            raise RegisterMapError("register map: no registers")
        first = min(r.address for r in self.registers.values())
        last = max(r.addresses.stop for r in self.registers.values())
        object.__setattr__(self, "span", range(first, last))
        object.__setattr__(self, "_by_address", tuple(
            sorted(self.registers.values(), key=lambda r: r.address)))

    def __getitem__(self, name: str) -> Register:
        return self.registers[name]

    def __iter__(self) -> Iterator[Register]:
        return iter(self._by_address)

    def by_address(self, address: int) -> Register | None:
        for reg in self.registers.values():
            if address in reg.addresses:
                return reg
        return None

    def words_of(self, name: str, block: Sequence[int], block_start: int) -> Sequence[int]:
        reg = self.registers[name]
        offset = reg.address - block_start
        return block[offset : offset + reg.width]


_REQUIRED = ("name", "address", "type", "scale", "unit", "access", "min", "max", "description")
_KNOWN = {*_REQUIRED, "default", "values", "bits", "rounding"}
_ROUNDINGS = ("nearest", "toward_zero")


def _labels(entry: Mapping[str, Any], key: str, where: str) -> dict[int, str]:
    raw = entry.get(key, {})
    if not isinstance(raw, Mapping):
        raise RegisterMapError(f"{where}: {key!r} must be a table")
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = str(v)
        except ValueError as exc:
            raise RegisterMapError(f"{where}: {key!r} key {k!r} is not an integer") from exc
    return out


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RegisterMapError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _parse_entry(index: int, entry: Any) -> Register:
    if not isinstance(entry, Mapping):
        raise RegisterMapError(f"register entry #{index}: must be a table")
    where = f"register entry #{index} ({entry.get('name', '?')!r})"
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise RegisterMapError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise RegisterMapError(f"{where}: unknown keys {', '.join(unknown)}")
    name, address = entry["name"], entry["address"]
    if not isinstance(name, str) or not name.isidentifier():
        raise RegisterMapError(f"{where}: name must be an identifier")
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        raise RegisterMapError(f"{where}: address must be an integer 0..65535, got {address!r}")
    try:
        reg_type, access = RegType(entry["type"]), Access(entry["access"])
    except ValueError as exc:
        raise RegisterMapError(f"{where}: {exc}") from exc
    if address + reg_type.width - 1 > 0xFFFF:
        raise RegisterMapError(f"{where}: runs past address 65535")
    scale, lo, hi = (_number(entry, k, where) for k in ("scale", "min", "max"))
    if scale <= 0:
        raise RegisterMapError(f"{where}: scale must be > 0, got {scale:g}")
    if lo > hi:
        raise RegisterMapError(f"{where}: min {lo:g} > max {hi:g}")
    raw_lo, raw_hi = reg_type.raw_range
    if round(lo / scale) < raw_lo or round(hi / scale) > raw_hi:
        raise RegisterMapError(
            f"{where}: {lo:g}..{hi:g} does not fit {reg_type} at scale {scale:g}"
        )
    default = _number(entry, "default", where) if "default" in entry else None
    if default is not None and not lo <= default <= hi:
        raise RegisterMapError(f"{where}: default {default:g} outside {lo:g}..{hi:g}")
    if access is Access.RW and default is None:
        raise RegisterMapError(f"{where}: a rw register needs a default (its power-on value)")
    rounding = entry.get("rounding", "nearest")
    if rounding not in _ROUNDINGS:
        raise RegisterMapError(f"{where}: rounding must be one of {', '.join(_ROUNDINGS)}, "
                               f"got {rounding!r}")
    for text_key in ("unit", "description"):
        if not isinstance(entry[text_key], str):
            raise RegisterMapError(f"{where}: {text_key!r} must be a string")
    return Register(
        name=name, address=address, type=reg_type, scale=scale, unit=entry["unit"],
        access=access, minimum=lo, maximum=hi, description=entry["description"],
        default=default, values=_labels(entry, "values", where), bits=_labels(entry, "bits", where),
        rounding=rounding,
    )


def parse_register_map(document: Mapping[str, Any]) -> RegisterMap:
    """Validate a parsed TOML document; RegisterMapError names the offending entry."""
    entries = document.get("register")
    if not isinstance(entries, list) or not entries:
        raise RegisterMapError("register map: no [[register]] entries")
    registers: dict[str, Register] = {}
    owner: dict[int, str] = {}
    for index, entry in enumerate(entries):
        reg = _parse_entry(index, entry)
        if reg.name in registers:
            raise RegisterMapError(f"register entry #{index}: duplicate name {reg.name!r}")
        for addr in reg.addresses:
            if addr in owner:
                raise RegisterMapError(
                    f"register entry #{index} ({reg.name!r}): "
                    f"address {addr} overlaps {owner[addr]!r}"
                )
            owner[addr] = reg.name
        registers[reg.name] = reg
    meta = document.get("meta", {})
    if not isinstance(meta, Mapping):
        raise RegisterMapError("register map: [meta] must be a table")
    if meta.get("word_order", "big") != "big":
        raise RegisterMapError("register map: only word_order = 'big' is supported")
    return RegisterMap(registers=registers, meta=dict(meta))


def load_register_map(path: Path | None = None) -> RegisterMap:
    path = path or DEFAULT_MAP_PATH
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError(f"{path}: not valid TOML: {exc}") from exc
    return parse_register_map(document)
