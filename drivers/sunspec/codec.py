"""The SunSpec-style map of drivers/sunspec/sunspec_map.toml: layout, register image,
writes. Sans-I/O.

`layout(n_ports)` places every point at its address; `encode_image` turns the pile's
snapshot (the agent's units and signs) into the registers a client reads; `decode_write`
turns a client's write into engineering values, or the Modbus exception the write gets
(02: not a writable point or only part of one; 03: a value out of its range).
This is the only place where SunSpec's sign (+ = injection) meets the agent's.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

SUNS = (0x5375, 0x6E53)  # "SunS"
END_MODEL = 0xFFFF
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03

_WORDS = {"uint16": 1, "int16": 1, "enum16": 1, "bitfield16": 1, "sunssf": 1, "pad": 1,
          "uint32": 2, "int32": 2, "bitfield32": 2, "uint64": 4}
# SunSpec "not implemented" values, by type (strings: all zero).
_NOT_IMPLEMENTED = {"uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
                    "int16": 0x8000, "sunssf": 0x8000, "pad": 0x8000,
                    "uint32": 0xFFFF_FFFF, "bitfield32": 0xFFFF_FFFF, "int32": 0x8000_0000,
                    "uint64": 0xFFFF_FFFF_FFFF_FFFF}
_SIGNED = {"int16", "int32", "sunssf"}


class MapError(ValueError):
    """The map file cannot be used; the message names the model and point."""


@dataclass(frozen=True, slots=True)
class Point:
    model: int
    name: str  # "WSet"; a port's points carry their index: "Prt[0].DCA"
    type: str
    words: int
    sf: str = ""  # the scale-factor point of the same model
    value: str = ""  # snapshot key; "" = not implemented
    sign: int = 1
    fixed: int | None = None  # a sunssf's value
    writable: bool = False
    write: str = ""
    min: float = -math.inf
    max: float = math.inf
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Model:
    id: int
    name: str
    points: tuple[Point, ...]
    port_points: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    base: int
    size: int  # registers from base to the end model, inclusive
    header: dict[int, int]  # address -> fixed word (SunS, IDs, lengths, end model)
    points: dict[int, Point]  # first address -> point
    scale: dict[tuple[int, str], int]  # (model, sf point name) -> exponent

    def address_of(self, name: str, model: int | None = None) -> int:
        for address, p in self.points.items():
            if p.name == name and (model is None or p.model == model):
                return address
        raise KeyError(name)

    def exponent(self, p: Point) -> int:
        return self.scale[(p.model, p.sf)] if p.sf else 0


def load_map(path: str | Path | None = None) -> tuple[int, tuple[Model, ...]]:
    if path is None:
        text = resources.files("drivers.sunspec").joinpath("sunspec_map.toml").read_text()
    else:
        text = Path(path).read_text()
    doc = tomllib.loads(text)
    models = tuple(_model(m) for m in doc.get("model", []))
    if not models or models[0].id != 1:
        raise MapError("the first model must be the common model 1")
    return int(doc.get("base", 40000)), models


def _model(table: Mapping[str, object]) -> Model:
    mid = table.get("id")
    if not isinstance(mid, int):
        raise MapError(f"model {table.get('name')!r}: id must be an integer")
    pts = tuple(_point(mid, p) for p in _tables(table.get("points", []), mid))
    port = tuple(_point(mid, p) for p in _tables(table.get("port_points", []), mid))
    sfs = {p.name for p in pts if p.type == "sunssf"}
    for p in (*pts, *port):
        if p.sf and p.sf not in sfs:
            raise MapError(f"model {mid} point {p.name}: scale factor {p.sf} not in the model")
        if p.type == "sunssf" and p.fixed is None:
            raise MapError(f"model {mid} point {p.name}: a sunssf needs `fixed`")
    return Model(mid, str(table.get("name", "")), pts, port)


def _tables(value: object, mid: int) -> list[Mapping[str, object]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MapError(f"model {mid}: points must be a list of tables")
    return value


def _point(mid: int, t: Mapping[str, object]) -> Point:
    name, kind = str(t.get("name", "")), str(t.get("type", ""))
    if kind == "string":
        size = t.get("size")
        if not isinstance(size, int) or size <= 0:
            raise MapError(f"model {mid} point {name}: a string needs a size in registers")
        words = size
    elif kind in _WORDS:
        words = _WORDS[kind]
    else:
        raise MapError(f"model {mid} point {name}: unknown type {kind!r}")
    access = str(t.get("access", "r"))
    fixed = t.get("fixed")
    return Point(mid, name, kind, words, sf=str(t.get("sf", "")), value=str(t.get("value", "")),
                 sign=int(t.get("sign", 1)),  # type: ignore[call-overload]
                 fixed=fixed if isinstance(fixed, int) else None,
                 writable=access == "rw", write=str(t.get("write", "")),
                 min=float(t.get("min", -math.inf)),  # type: ignore[arg-type]
                 max=float(t.get("max", math.inf)))  # type: ignore[arg-type]


def layout(base: int, models: Sequence[Model], n_ports: int) -> Layout:
    header = {base: SUNS[0], base + 1: SUNS[1]}
    points: dict[int, Point] = {}
    scale: dict[tuple[int, str], int] = {}
    address = base + 2
    for m in models:
        body = list(m.points)
        for i in range(n_ports if m.port_points else 0):
            body += [replace(p, name=p.name.replace("Prt.", f"Prt[{i}]."), port=i)
                     for p in m.port_points]
        length = sum(p.words for p in body)
        header[address], header[address + 1] = m.id, length
        address += 2
        for p in body:
            points[address] = p
            if p.type == "sunssf" and p.fixed is not None:
                scale[(m.id, p.name)] = p.fixed
            address += p.words
    header[address], header[address + 1] = END_MODEL, 0
    return Layout(base, address + 2 - base, header, points, scale)


# ---- reads ------------------------------------------------------------------------

Snapshot = Mapping[str, float | str | None]


def encode_image(lay: Layout, snapshot: Snapshot,
                 ports: Sequence[Snapshot] = ()) -> list[int]:
    """Every register from base: the header, then each point from the snapshot (a
    port's points from its own snapshot); a missing or unrepresentable value is served
    as SunSpec's "not implemented"."""
    image = [0] * lay.size
    for address, word in lay.header.items():
        image[address - lay.base] = word
    for address, p in lay.points.items():
        source = ports[p.port] if p.port is not None and p.port < len(ports) else snapshot
        words = encode_point(lay, p, source.get(p.value) if p.value else None)
        image[address - lay.base: address - lay.base + p.words] = words
    return image


def encode_point(lay: Layout, p: Point, value: float | str | None) -> list[int]:
    if p.type == "sunssf" and p.fixed is not None:
        return [p.fixed & 0xFFFF]
    if p.type == "string":
        raw = (value if isinstance(value, str) else "").encode("utf-8")[: 2 * p.words]
        raw = raw.ljust(2 * p.words, b"\0")
        return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    number = _number(lay, p, value)
    if number is None:
        number = _NOT_IMPLEMENTED[p.type]
    return [(number >> (16 * (p.words - 1 - i))) & 0xFFFF for i in range(p.words)]


def _number(lay: Layout, p: Point, value: float | str | None) -> int | None:
    if value is None or isinstance(value, str) or not math.isfinite(value):
        return None
    raw = round(p.sign * value / 10.0 ** lay.exponent(p))
    bits = 16 * p.words
    if p.type in _SIGNED:
        lo, hi = -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1  # the lowest is NI
        return raw & ((1 << bits) - 1) if lo <= raw <= hi else None
    return raw if 0 <= raw < (1 << bits) - 1 else None


# ---- writes -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Written:
    point: Point
    value: float  # engineering units, the agent's sign


def decode_write(lay: Layout, address: int, words: Sequence[int]) -> list[Written] | int:
    """The points a write sets, or the Modbus exception code it gets. A write must cover
    whole rw points only; each value must be within its point's min/max."""
    out: list[Written] = []
    a, end = address, address + len(words)
    while a < end:
        p = lay.points.get(a)
        if p is None or not p.writable or a + p.words > end:
            return ILLEGAL_DATA_ADDRESS
        raw = 0
        for w in words[a - address: a - address + p.words]:
            raw = (raw << 16) | (w & 0xFFFF)
        if raw == _NOT_IMPLEMENTED.get(p.type):
            return ILLEGAL_DATA_VALUE
        bits = 16 * p.words
        if p.type in _SIGNED and raw >= 1 << (bits - 1):
            raw -= 1 << bits
        value = raw * 10.0 ** lay.exponent(p)  # SunSpec's units and sign: min/max are
        if not p.min <= value <= p.max:
            return ILLEGAL_DATA_VALUE
        out.append(Written(p, p.sign * value))
        a += p.words
    return out
