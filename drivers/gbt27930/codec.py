"""GB/T 27930-2015 messages ⇄ payload bytes.

Single-frame layouts come from `gbt27930.dbc` through cantools; the multi-packet BRM,
BCP and BCS (carried by J1939 TP) are laid out here. Conversions at this edge:
- current sign: GB/T 27930 §4.5 counts discharge positive; the dataclasses count
  energy into the vehicle positive. Signed currents (BCL, BCS, CCS) are negated here.
- limits that are magnitudes (BCP max current, CML max/min) are decoded as abs() of the
  signed value, and CML max/min are sorted, because vehicles and chargers in the field
  disagree on both the sign and the field order (see the fact sheet's CML example).
- unused bits are sent as 1 (§7.9); reserved bits that are not 1 are noted, never
  rejected. 2-bit status fields: 00 normal, 01 set, 10 untrusted (taken as set: the
  cautious reading), 11 (not defined for these fields) also taken as set, and noted.
- strict where it is safety, tolerant where it is information (docs/VEHICLE_DATA.md):
  an informational field that does not decode is kept raw and reported as an `Oddity`
  by `decode_noting`; a field the charger acts on that is out of its range rejects the
  message (`DecodeError`).
Every failure is a `DecodeError` (or `EncodeError`), both ValueErrors; a PGN that is not
a GB/T 27930-2015 message is an `UnknownPgn`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cantools

from agent.core.messages import (
    BCL,
    BCP,
    BCS,
    BDP,
    BDS,
    BEM,
    BHM,
    BMT,
    BMV,
    BRM,
    BRO,
    BSD,
    BSM,
    BSP,
    BST,
    CCS,
    CDP,
    CEM,
    CHM,
    CML,
    CRM,
    CRO,
    CSD,
    CST,
    CTS,
    BemTimeout,
    BmsError,
    BmsFault,
    BmsStopReason,
    CemTimeout,
    ChargeMode,
    ChargerError,
    ChargerFault,
    ChargerStopReason,
    GbtMessage,
    Level,
    Ready,
)
from drivers.gbt27930.tp_layouts import (
    consent_byte,
    consent_of,
    decode_bcp,
    decode_bcs,
    decode_bdp,
    decode_bmt,
    decode_bmv,
    decode_brm,
    decode_bsp,
    discharge_magnitude,
    encode_bcp,
    encode_bcs,
    encode_bdp,
    encode_bmt,
    encode_bmv,
    encode_brm,
    encode_bsp,
)
from drivers.gbt27930.wire import (
    DecodeError,
    EncodeError,
    Notes,
    Oddity,
    UnknownPgn,
    charge_current,
    current_raw,
    signed_current,
)

DBC_PATH = Path(__file__).with_name("gbt27930.dbc")
_DB: Any = cantools.database.load_file(str(DBC_PATH))

# PGN (PF << 8) and priority per message, GB/T 27930-2015 message table.
PGN: dict[type[Any], int] = {
    CHM: 0x2600, BHM: 0x2700, CRM: 0x0100, BRM: 0x0200, BCP: 0x0600, CTS: 0x0700,
    CML: 0x0800, BRO: 0x0900, CRO: 0x0A00, BCL: 0x1000, BCS: 0x1100, CCS: 0x1200,
    BSM: 0x1300, BMV: 0x1500, BMT: 0x1600, BSP: 0x1700, BST: 0x1900, CST: 0x1A00,
    BSD: 0x1C00, CSD: 0x1D00, BEM: 0x1E00, CEM: 0x1F00,
    # The project's V2G extension (docs/V2G.md), not GB/T 27930-2015: default PGNs, which
    # `assign_extension_pgns` replaces from config (a vehicle programme may assign others).
    CDP: 0x3100, BDP: 0x3200, BDS: 0x3300,
}
EXTENSION: dict[str, type[Any]] = {"CDP": CDP, "BDP": BDP, "BDS": BDS}
PRIORITY: dict[type[Any], int] = {
    CHM: 6, BHM: 6, CRM: 6, BRM: 7, BCP: 7, CTS: 6, CML: 6, BRO: 4, CRO: 4, BCL: 6,
    BCS: 7, CCS: 6, BSM: 6, BMV: 7, BMT: 7, BSP: 7, BST: 4, CST: 4, BSD: 6, CSD: 6, BEM: 2,
    CEM: 2, CDP: 6, BDP: 7, BDS: 6,
}
TYPE_BY_PGN: dict[int, type[Any]] = {pgn: cls for cls, pgn in PGN.items()}


def assign_extension_pgns(pgns: dict[str, int]) -> None:
    """Put the V2G extension's messages on other PGNs ({"CDP": 0x3100, ...}); ValueError as
    `extension_pgn_table`. The codec is one per process: so is the CAN layout."""
    new = extension_pgn_table(pgns)
    PGN.clear()
    PGN.update(new)
    TYPE_BY_PGN.clear()
    TYPE_BY_PGN.update({pgn: cls for cls, pgn in PGN.items()})


def extension_pgn_table(pgns: dict[str, int]) -> dict[type[Any], int]:
    """The PGN table with the extension's messages moved, without applying it; ValueError,
    naming the message, for an unknown name, a PGN outside a PDU1 PF byte (0xXX00) or one
    that another message already uses (config validation calls this)."""
    new = dict(PGN)
    for name, pgn in pgns.items():
        cls = EXTENSION.get(name)
        if cls is None:
            raise ValueError(f"v2g: {name} is not an extension message (CDP, BDP, BDS)")
        if not (isinstance(pgn, int) and 0 <= pgn <= 0xFF00 and pgn & 0xFF == 0
                and pgn >> 8 < 0xF0):
            raise ValueError(f"v2g: PGN for {name} must be a PDU1 PGN 0x0000..0xEF00 (PF << 8),"
                             f" got {pgn!r}")
        new[cls] = pgn
    used: dict[int, str] = {}
    for cls, pgn in new.items():
        if pgn in used or pgn in (0xEB00, 0xEC00):  # J1939 TP.DT / TP.CM
            raise ValueError(f"v2g: PGN 0x{pgn:04X} of {cls.__name__} is already used by "
                             f"{used.get(pgn, 'J1939 TP')}")
        used[pgn] = cls.__name__
    return new
# BRM, BCP, BCS, BMV, BMT and BSP are laid out in tp_layouts.py; the link sends any payload
# over 8 bytes through J1939 TP (BMV, BMT and BSP have the length the BMS gives them, and
# may fit one frame).


def pgn_of(message: GbtMessage) -> int:
    return PGN[type(message)]


def priority_of(message: GbtMessage) -> int:
    return PRIORITY[type(message)]


# ---- single frames through the DBC --------------------------------------------


def _frame(name: str) -> Any:
    return _DB.get_message_by_name(name)


def _padding_mask(msg: Any) -> int:
    used: int = 0
    for sig in msg.signals:
        used |= ((1 << sig.length) - 1) << sig.start
    full: int = (1 << (8 * msg.length)) - 1
    return full & ~used


_PADDING = {m.name: _padding_mask(m) for m in _DB.messages}
# The 2-bit status signals of each frame (status, flags and timeouts; not BSM's permit).
_TWO_BIT = {m.name: frozenset(s.name for s in m.signals if s.length == 2
                              and s.name not in ("charge_permitted", "permitted"))
            for m in _DB.messages}


def _pack(name: str, raw: dict[str, int]) -> bytes:
    msg = _frame(name)
    for sig in msg.signals:
        value = raw[sig.name]
        if not 0 <= value < (1 << sig.length):
            raise EncodeError(f"{name}.{sig.name}: raw {value} outside 0..{(1 << sig.length) - 1}")
    body = int.from_bytes(msg.encode(raw, scaling=False, strict=False), "little")
    return (body | _PADDING[name]).to_bytes(msg.length, "little")


def _unpack(name: str, data: bytes, notes: Notes | None = None) -> dict[str, int]:
    msg = _frame(name)
    if len(data) < msg.length:
        raise DecodeError(f"{name}: {len(data)} bytes, need {msg.length}")
    body = bytes(data[: msg.length])
    try:
        out = msg.decode(body, scaling=False, decode_choices=False)
    except Exception as exc:  # cantools raises several types; one error type leaves here
        raise DecodeError(f"{name}: {exc}") from exc
    if notes is not None:
        padding = _PADDING[name]
        if int.from_bytes(body, "little") & padding != padding:
            notes.append(Oddity(name, "reserved", bytes(data),
                                "reserved bits not all 1 (GB/T 27930-2015 §7.9)"))
        if any(b != 0xFF for b in data[msg.length:]):
            notes.append(Oddity(name, "length", bytes(data),
                                f"{len(data)} bytes where {msg.length} are defined; the rest "
                                "is not 0xFF padding"))
    return {k: int(v) for k, v in out.items()}


def _r(value: float, scale: float, name: str, offset: float = 0.0) -> int:
    if value != value or value in (float("inf"), float("-inf")):
        raise EncodeError(f"{name}: not a finite number: {value!r}")
    return round((value - offset) / scale)


def _flag(raw: int) -> bool:
    """A 2-bit status field: 00 normal; 01 set; 10 untrusted and 11 undefined, both read as
    set (a status that cannot be confirmed normal is not normal)."""
    return raw != 0


def _note_undefined(name: str, raw: dict[str, int], data: bytes, notes: Notes | None) -> None:
    if notes is not None:
        notes.extend(Oddity(name, key, bytes(data), "2-bit status 11 is not defined; read as set")
                     for key, value in raw.items() if key in _TWO_BIT[name] and value == 3)


def _flags(names: dict[str, Any], raw: dict[str, int]) -> frozenset[Any]:
    return frozenset(member for key, member in names.items() if _flag(raw[key]))


def _bcd(value: int, name: str) -> int:
    if not 0 <= value <= 99:
        raise EncodeError(f"CTS.{name}: {value} not representable in one BCD byte")
    return (value // 10) << 4 | value % 10


def _from_bcd(raw: int, name: str) -> int:
    hi, lo = raw >> 4, raw & 0xF
    if hi > 9 or lo > 9:
        raise DecodeError(f"CTS.{name}: 0x{raw:02X} is not BCD")
    return hi * 10 + lo


def _ready(raw: int, name: str) -> Ready:
    try:
        return Ready(raw)
    except ValueError:
        raise DecodeError(f"{name}: ready byte 0x{raw:02X} is not 0x00, 0xAA or 0xFF") from None


_BST_REASONS = {"soc_reached": BmsStopReason.SOC_REACHED,
                "total_voltage_reached": BmsStopReason.TOTAL_VOLTAGE_REACHED,
                "cell_voltage_reached": BmsStopReason.CELL_VOLTAGE_REACHED,
                "charger_stopped": BmsStopReason.CHARGER_STOPPED}
_BST_FAULTS = {f"fault_{f.value}": f for f in BmsFault}
_BST_ERRORS = {f"error_{e.value}": e for e in BmsError}
_CST_REASONS = {r.value: r for r in ChargerStopReason}
_CST_FAULTS = {f"fault_{f.value}": f for f in ChargerFault}
_CST_ERRORS = {f"error_{e.value}": e for e in ChargerError}
_BEM = {t.value: t for t in BemTimeout}
_CEM = {t.value: t for t in CemTimeout}


def _set_flags(names: dict[str, Any], members: frozenset[Any]) -> dict[str, int]:
    return {key: 1 if member in members else 0 for key, member in names.items()}


def _level(raw: int) -> Level:
    return Level(raw)


# ---- public API ------------------------------------------------------------------


def encode(message: GbtMessage) -> tuple[int, bytes]:
    """(PGN, payload) for a message; multi-packet payloads are the whole message."""
    try:
        return pgn_of(message), _ENCODERS[type(message)](message)
    except EncodeError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"{type(message).__name__}: {exc}") from exc


def decode(pgn: int, data: bytes) -> GbtMessage:
    """The message for a PGN and its payload; raises DecodeError for anything else."""
    return decode_noting(pgn, data)[0]


def decode_noting(pgn: int, data: bytes) -> tuple[GbtMessage, list[Oddity]]:
    """The message and what was odd in its informational fields; DecodeError if a field
    the charger acts on is out of its range, UnknownPgn for a PGN GB/T does not define."""
    cls = TYPE_BY_PGN.get(pgn)
    if cls is None:
        raise UnknownPgn(f"PGN 0x{pgn:04X} is not a GB/T 27930-2015 message")
    notes: Notes = []
    try:
        message: GbtMessage = _DECODERS[cls](bytes(data), notes)
    except DecodeError:
        raise
    except Exception as exc:  # malformed input must surface as one error type
        raise DecodeError(f"{cls.__name__}: {exc!r}") from exc
    return message, notes


def name_of(pgn: int) -> str:
    cls = TYPE_BY_PGN.get(pgn)
    return cls.__name__ if cls is not None else f"PGN 0x{pgn:04X}"


def _enc_chm(m: CHM) -> bytes:
    a, b, c = m.version
    return _pack("CHM", {"version_major": a, "version_minor": b, "version_patch": c})


def _dec_chm(d: bytes, notes: Notes) -> CHM:
    r = _unpack("CHM", d, notes)
    return CHM((r["version_major"], r["version_minor"], r["version_patch"]))


def _enc_crm(m: CRM) -> bytes:
    region = m.region.encode("ascii")
    if len(region) > 3:
        raise EncodeError("CRM.region: at most 3 ASCII characters")
    region_raw = int.from_bytes(region.ljust(3, b"\xff"), "little")
    return _pack("CRM", {"recognition": 0xAA if m.recognized else 0x00,
                         "charger_number": m.charger_number, "region": region_raw})


def _dec_crm(d: bytes, notes: Notes) -> CRM:
    r = _unpack("CRM", d, notes)
    if r["recognition"] not in (0x00, 0xAA):
        raise DecodeError(f"CRM: recognition 0x{r['recognition']:02X} is not 0x00 or 0xAA")
    raw_region = r["region"].to_bytes(3, "little")
    region = raw_region.rstrip(b"\xff")
    if any(b > 0x7E or b < 0x20 for b in region):
        notes.append(Oddity("CRM", "region", raw_region, "not printable ASCII"))
        region = b""
    return CRM(r["recognition"] == 0xAA, r["charger_number"], region.decode("ascii"))


def _enc_cts(m: CTS) -> bytes:
    if m.timestamp is None:
        return b"\xff" * int(_frame("CTS").length)
    year, month, day, hour, minute, second = m.timestamp
    if not (0 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= 31 and 0 <= hour <= 23
            and 0 <= minute <= 59 and 0 <= second <= 59):
        raise EncodeError(f"CTS: {m.timestamp} is not a calendar time")
    return _pack("CTS", {"second_bcd": _bcd(second, "second"), "minute_bcd": _bcd(minute, "minute"),
                         "hour_bcd": _bcd(hour, "hour"), "day_bcd": _bcd(day, "day"),
                         "month_bcd": _bcd(month, "month"),
                         "year_low_bcd": _bcd(year % 100, "year"),
                         "year_high_bcd": _bcd(year // 100, "year")})


def _dec_cts(d: bytes, notes: Notes) -> CTS:
    """Time sync is information: a clock that is not BCD (or all 0xFF, "no time") gives
    CTS(None) and a note, never a rejected message."""
    r = _unpack("CTS", d)
    raw = bytes(d[:_frame("CTS").length])
    if raw == b"\xff" * len(raw):
        notes.append(Oddity("CTS", "timestamp", raw, "all 0xFF: no time sent"))
        return CTS(None, raw=raw)
    try:
        year = _from_bcd(r["year_high_bcd"], "year") * 100 + _from_bcd(r["year_low_bcd"], "year")
        stamp = (year, _from_bcd(r["month_bcd"], "month"), _from_bcd(r["day_bcd"], "day"),
                 _from_bcd(r["hour_bcd"], "hour"), _from_bcd(r["minute_bcd"], "minute"),
                 _from_bcd(r["second_bcd"], "second"))
    except DecodeError as exc:
        notes.append(Oddity("CTS", "timestamp", raw, str(exc)))
        return CTS(None, raw=raw)
    return CTS(stamp, raw=raw)


def _enc_cml(m: CML) -> bytes:
    return _pack("CML", {"max_voltage": _r(m.max_voltage_v, 0.1, "CML.max_voltage"),
                         "min_voltage": _r(m.min_voltage_v, 0.1, "CML.min_voltage"),
                         "max_current": current_raw(-m.max_current_a, "CML.max_current"),
                         "min_current": current_raw(-m.min_current_a, "CML.min_current")})


def _dec_cml(d: bytes, notes: Notes) -> CML:
    r = _unpack("CML", d, notes)
    a = abs(signed_current(r["max_current"]))
    b = abs(signed_current(r["min_current"]))
    return CML(r["max_voltage"] / 10, r["min_voltage"] / 10, max(a, b), min(a, b))


def _enc_bcl(m: BCL) -> bytes:
    return _pack("BCL", {"voltage_demand": _r(m.voltage_demand_v, 0.1, "BCL.voltage_demand"),
                         "current_demand": current_raw(-m.current_demand_a, "BCL.current_demand"),
                         "mode": int(m.mode)})


def _dec_bcl(d: bytes, notes: Notes) -> BCL:
    r = _unpack("BCL", d, notes)
    try:
        mode = ChargeMode(r["mode"])
    except ValueError:
        raise DecodeError(f"BCL: mode 0x{r['mode']:02X} is neither CV (1) nor CC (2)") from None
    # Signed per §4.5: a charge demand arrives negative and becomes positive here.
    return BCL(r["voltage_demand"] / 10, charge_current(r["current_demand"]), mode)


def _enc_ccs(m: CCS) -> bytes:
    return _pack("CCS", {"output_voltage": _r(m.output_voltage_v, 0.1, "CCS.output_voltage"),
                         "output_current": current_raw(-m.output_current_a, "CCS.output_current"),
                         "charging_time": m.charging_min, "permitted": 1 if m.permitted else 0})


def _dec_ccs(d: bytes, notes: Notes) -> CCS:
    r = _unpack("CCS", d, notes)
    return CCS(r["output_voltage"] / 10, charge_current(r["output_current"]),
               r["charging_time"], r["permitted"] == 1)


def _enc_bsm(m: BSM) -> bytes:
    return _pack("BSM", {
        "max_cell_voltage_index": m.max_cell_voltage_index - 1,
        "max_temperature": _r(m.max_temperature_c, 1, "BSM.max_temperature", -50),
        "max_temperature_index": m.max_temperature_index - 1,
        "min_temperature": _r(m.min_temperature_c, 1, "BSM.min_temperature", -50),
        "min_temperature_index": m.min_temperature_index - 1,
        "cell_voltage_state": int(m.cell_voltage), "soc_state": int(m.soc),
        "over_current": int(m.over_current), "over_temperature": int(m.over_temperature),
        "insulation": int(m.insulation_fault), "connector": int(m.connector_fault),
        "charge_permitted": int(m.charge_permitted)})


def _dec_bsm(d: bytes, notes: Notes) -> BSM:
    r = _unpack("BSM", d, notes)
    _note_undefined("BSM", r, d, notes)
    # charge_permitted: 01 allows; 00 forbids (a pause), and 10/11 are not an allowance.
    return BSM(r["max_cell_voltage_index"] + 1, r["max_temperature"] - 50,
               r["max_temperature_index"] + 1, r["min_temperature"] - 50,
               r["min_temperature_index"] + 1, _level(r["cell_voltage_state"]),
               _level(r["soc_state"]), _flag(r["over_current"]), _flag(r["over_temperature"]),
               _flag(r["insulation"]), _flag(r["connector"]), r["charge_permitted"] == 1)


def _enc_bst(m: BST) -> bytes:
    return _pack("BST", {**_set_flags(_BST_REASONS, m.reasons), **_set_flags(_BST_FAULTS, m.faults),
                         **_set_flags(_BST_ERRORS, m.errors)})


def _dec_bst(d: bytes, notes: Notes) -> BST:
    r = _unpack("BST", d, notes)
    _note_undefined("BST", r, d, notes)
    return BST(_flags(_BST_REASONS, r), _flags(_BST_FAULTS, r), _flags(_BST_ERRORS, r))


def _enc_cst(m: CST) -> bytes:
    return _pack("CST", {**_set_flags(_CST_REASONS, m.reasons), **_set_flags(_CST_FAULTS, m.faults),
                         **_set_flags(_CST_ERRORS, m.errors)})


def _dec_cst(d: bytes, notes: Notes) -> CST:
    r = _unpack("CST", d, notes)
    _note_undefined("CST", r, d, notes)
    return CST(_flags(_CST_REASONS, r), _flags(_CST_FAULTS, r), _flags(_CST_ERRORS, r))


def _enc_bsd(m: BSD) -> bytes:
    return _pack("BSD", {"end_soc": _r(m.end_soc_pct, 1, "BSD.end_soc"),
                         "min_cell_voltage": _r(m.min_cell_voltage_v, 0.01, "BSD.min_cell"),
                         "max_cell_voltage": _r(m.max_cell_voltage_v, 0.01, "BSD.max_cell"),
                         "min_temperature": _r(m.min_temperature_c, 1, "BSD.min_temp", -50),
                         "max_temperature": _r(m.max_temperature_c, 1, "BSD.max_temp", -50)})


def _dec_bsd(d: bytes, notes: Notes) -> BSD:
    """End-of-session statistics: information, reported as sent (an end SOC over 100 % is
    noted, not refused)."""
    r = _unpack("BSD", d, notes)
    if r["end_soc"] > 100:
        notes.append(Oddity("BSD", "end_soc", bytes(d[:1]), "above 100 %"))
    return BSD(float(r["end_soc"]), r["min_cell_voltage"] / 100, r["max_cell_voltage"] / 100,
               float(r["min_temperature"] - 50), float(r["max_temperature"] - 50))


def _enc_csd(m: CSD) -> bytes:
    return _pack("CSD", {"charging_time": m.charging_min,
                         "energy": _r(m.energy_kwh, 0.1, "CSD.energy"),
                         "charger_number": m.charger_number})


def _dec_csd(d: bytes, notes: Notes) -> CSD:
    r = _unpack("CSD", d, notes)
    return CSD(r["charging_time"], r["energy"] / 10, r["charger_number"])


def _enc_cdp(m: CDP) -> bytes:
    return _pack("CDP", {
        "offered": consent_byte(m.offered),
        "max_discharge_current": current_raw(m.max_discharge_current_a,
                                             "CDP.max_discharge_current"),
        "max_discharge_power": _r(m.max_discharge_power_w, 100, "CDP.max_discharge_power"),
        "min_input_voltage": _r(m.min_input_voltage_v, 0.1, "CDP.min_input_voltage"),
        "version": m.version})


def _dec_cdp(d: bytes, notes: Notes) -> CDP:
    r = _unpack("CDP", d, notes)
    return CDP(consent_of(r["offered"], "CDP"), discharge_magnitude(r["max_discharge_current"]),
               r["max_discharge_power"] * 100.0, r["min_input_voltage"] / 10, r["version"])


def _enc_bds(m: BDS) -> bytes:
    return _pack("BDS", {
        "consent": consent_byte(m.consent),
        "max_discharge_current": current_raw(m.max_discharge_current_a,
                                             "BDS.max_discharge_current"),
        "remaining_energy": _r(m.remaining_energy_kwh, 0.1, "BDS.remaining_energy"),
        "soc_floor": _r(m.soc_floor_pct, 0.1, "BDS.soc_floor")})


def _dec_bds(d: bytes, notes: Notes) -> BDS:
    """Consent and limits the charger acts on: a consent byte that is not 0xAA/0x00 or a
    floor over 100 % rejects the message (its watchdog, and the last good BDS, then rule)."""
    r = _unpack("BDS", d, notes)
    floor = r["soc_floor"] / 10
    if floor > 100:
        raise DecodeError(f"BDS: SOC floor {floor} % above 100 %")
    return BDS(consent_of(r["consent"], "BDS"), discharge_magnitude(r["max_discharge_current"]),
               r["remaining_energy"] / 10, floor)


def _ready_codec(name: str, cls: Callable[[Ready], Any]) -> tuple[Callable[[Any], bytes],
                                                                 Callable[[bytes, Notes], Any]]:
    return (lambda m: _pack(name, {"ready": int(m.ready)}),
            lambda d, notes: cls(_ready(_unpack(name, d, notes)["ready"], name)))


def _timeouts_codec(name: str, names: dict[str, Any], cls: Callable[[frozenset[Any]], Any],
                    ) -> tuple[Callable[[Any], bytes], Callable[[bytes, Notes], Any]]:
    def dec(d: bytes, notes: Notes) -> Any:
        r = _unpack(name, d, notes)
        _note_undefined(name, r, d, notes)
        return cls(_flags(names, r))
    return (lambda m: _pack(name, _set_flags(names, m.timeouts))), dec


_BRO = _ready_codec("BRO", BRO)
_CRO = _ready_codec("CRO", CRO)
_BEM_CODEC = _timeouts_codec("BEM", _BEM, BEM)
_CEM_CODEC = _timeouts_codec("CEM", _CEM, CEM)

_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {
    CHM: _enc_chm,
    BHM: lambda m: _pack("BHM", {"max_charge_voltage": _r(m.max_charge_voltage_v, 0.1, "BHM")}),
    CRM: _enc_crm, BRM: encode_brm, BCP: encode_bcp, CTS: _enc_cts, CML: _enc_cml,
    BRO: _BRO[0], CRO: _CRO[0], BCL: _enc_bcl, BCS: encode_bcs, CCS: _enc_ccs, BSM: _enc_bsm,
    BMV: encode_bmv, BMT: encode_bmt, BSP: encode_bsp,
    BST: _enc_bst, CST: _enc_cst, BSD: _enc_bsd, CSD: _enc_csd,
    BEM: _BEM_CODEC[0], CEM: _CEM_CODEC[0],
    CDP: _enc_cdp, BDP: encode_bdp, BDS: _enc_bds,
}
_DECODERS: dict[type[Any], Callable[[bytes, Notes], Any]] = {
    CHM: _dec_chm,
    BHM: lambda d, notes: BHM(_unpack("BHM", d, notes)["max_charge_voltage"] / 10),
    CRM: _dec_crm, BRM: decode_brm, BCP: decode_bcp, CTS: _dec_cts, CML: _dec_cml,
    BRO: _BRO[1], CRO: _CRO[1], BCL: _dec_bcl, BCS: decode_bcs, CCS: _dec_ccs, BSM: _dec_bsm,
    BMV: decode_bmv, BMT: decode_bmt, BSP: decode_bsp,
    BST: _dec_bst, CST: _dec_cst, BSD: _dec_bsd, CSD: _dec_csd,
    BEM: _BEM_CODEC[1], CEM: _CEM_CODEC[1],
    CDP: _dec_cdp, BDP: decode_bdp, BDS: _dec_bds,
}

__all__ = [
    "PGN",
    "DecodeError",
    "EncodeError",
    "Oddity",
    "UnknownPgn",
    "assign_extension_pgns",
    "decode",
    "decode_noting",
    "encode",
    "name_of",
    "pgn_of",
    "priority_of",
]
