"""Byte layouts of the multi-packet messages: BRM (49 B), BCP (13 B), BCS (9 B), and the
variable-length BMV (cell voltages), BMT (temperatures) and BSP (reserved).

GB/T 27930-2015 §10: BRM's optional fields (manufacturer onwards) are sent as 0xFF when
the vehicle does not fill them; many vehicles send only the first 8 bytes' worth or the
41-byte variant, so decoding pads a short BRM with 0xFF.

Strict where it is safety, tolerant where it is information (docs/VEHICLE_DATA.md): BRM
is information from end to end, so it always decodes, and whatever does not decode is
kept raw and noted. BCP and BCS carry what the charger acts on; a value outside the
range the standard defines rejects the message.
"""

from __future__ import annotations

from agent.core.messages import BCP, BCS, BDP, BMT, BMV, BRM, BSP
from drivers.gbt27930.wire import (
    DecodeError,
    EncodeError,
    Notes,
    Oddity,
    charge_current,
    current_raw,
    put_u16,
    scaled,
    signed_current,
    u16,
)

BRM_LENGTH = 49
BCP_LENGTH = 13
BCS_LENGTH = 9
BDP_LENGTH = 11  # the project's V2G extension (docs/V2G.md), not GB/T 27930-2015
_YEAR_OFFSET = 1985  # BRM production year: 1 year/bit from 1985
# BRM battery type (SPN 2566): 01 lead-acid, 02 NiMH, 03 LFP, 04 LMO, 05 LCO, 06 NCM,
# 07 polymer Li-ion, 08 LTO, FF other.
_BATTERY_TYPES = frozenset({*range(1, 9), 0xFF})
_MAX_CELL_V = 24.0  # BCP SPN 2816: 0.01 V/bit, 0-24 V
_REMAINING_MAX_MIN = 600  # BCS SPN 3079: 0-600 min


def _note(notes: Notes | None, message: str, name: str, raw: bytes, detail: str) -> None:
    if notes is not None:
        notes.append(Oddity(message, name, bytes(raw), detail))


def _text(raw: bytes, name: str, notes: Notes | None) -> str:
    """Printable ASCII, padding (0xFF, or NUL as some vehicles send) stripped; anything
    else is noted and decodes as "" (the raw bytes stay in BRM.raw)."""
    text = raw.rstrip(b"\xff\x00")
    if any(b > 0x7E or b < 0x20 for b in text):
        _note(notes, "BRM", name, raw, "not printable ASCII; kept as raw bytes")
        return ""
    return text.decode("ascii")


def _put_ascii(text: str, length: int, name: str) -> bytes:
    raw = text.encode("ascii", errors="strict")
    if len(raw) > length or any(b > 0x7E or b < 0x20 for b in raw):
        raise EncodeError(f"BRM.{name}: at most {length} printable ASCII characters")
    return raw.ljust(length, b"\xff")


def encode_brm(m: BRM) -> bytes:
    if any(not 0 <= v <= 255 for v in m.version) or not 0 <= m.battery_type <= 255:
        raise EncodeError("BRM: version bytes and battery type must be 0..255")
    out = bytearray(bytes(m.version) + bytes([m.battery_type]))
    out += put_u16(scaled(m.rated_capacity_ah, 0.1, "BRM.rated_capacity"), "BRM.rated_capacity")
    out += put_u16(scaled(m.rated_voltage_v, 0.1, "BRM.rated_voltage"), "BRM.rated_voltage")
    out += _put_ascii(m.manufacturer, 4, "manufacturer")
    out += (0xFFFFFFFF if m.pack_serial is None else m.pack_serial).to_bytes(4, "little")
    if m.production_date is None:
        out += b"\xff\xff\xff"
    else:
        year, month, day = m.production_date
        if not (_YEAR_OFFSET <= year <= _YEAR_OFFSET + 254 and 1 <= month <= 12
                and 1 <= day <= 31):
            raise EncodeError(f"BRM.production_date: {m.production_date} not encodable")
        out += bytes([year - _YEAR_OFFSET, month, day])
    cycles = 0xFFFFFF if m.cycle_count is None else m.cycle_count
    if not 0 <= cycles <= 0xFFFFFF:
        raise EncodeError("BRM.cycle_count: 0..16777214")
    out += cycles.to_bytes(3, "little")
    out += bytes([0xFF if m.leased is None else (0 if m.leased else 1), 0xFF])
    out += _put_ascii(m.vin, 17, "vin")
    if len(m.software_version) not in (0, 8):
        raise EncodeError("BRM.software_version: 0 or 8 bytes")
    out += m.software_version or b"\xff" * 8
    return bytes(out)


def decode_brm(data: bytes, notes: Notes | None = None) -> BRM:
    """Never fails: BRM only identifies the vehicle, the charger acts on none of it."""
    raw = bytes(data)
    if len(raw) < 8:
        _note(notes, "BRM", "length", raw, f"{len(raw)} bytes, the mandatory fields need 8; "
              "missing fields read as not sent")
    d = raw[:BRM_LENGTH].ljust(BRM_LENGTH, b"\xff")
    if d[3] not in _BATTERY_TYPES:
        _note(notes, "BRM", "battery_type", d[3:4], "not a GB/T 27930-2015 battery type")
    date = None
    if d[16:19] != b"\xff\xff\xff":
        year, month, day = d[16] + _YEAR_OFFSET, d[17], d[18]
        if d[16] != 0xFF and 1 <= month <= 12 and 1 <= day <= 31:
            date = (year, month, day)
        else:
            _note(notes, "BRM", "production_date", d[16:19], "not a calendar date")
    serial = int.from_bytes(d[12:16], "little")
    cycles = int.from_bytes(d[19:22], "little")
    leased = None
    if d[22] in (0, 1):
        leased = d[22] == 0
    elif d[22] != 0xFF:
        _note(notes, "BRM", "ownership", d[22:23], "neither 0 (leased) nor 1 (owned)")
    if d[23] != 0xFF:
        _note(notes, "BRM", "reserved", d[23:24], "reserved byte not 0xFF (§7.9)")
    software = b"" if d[41:49] == b"\xff" * 8 else d[41:49]
    return BRM(
        version=(d[0], d[1], d[2]), battery_type=d[3], rated_capacity_ah=u16(d, 4) / 10,
        rated_voltage_v=u16(d, 6) / 10, manufacturer=_text(d[8:12], "manufacturer", notes),
        pack_serial=None if serial == 0xFFFFFFFF else serial, production_date=date,
        cycle_count=None if cycles == 0xFFFFFF else cycles, leased=leased,
        vin=_text(d[24:41], "vin", notes), software_version=software, raw=raw)


def encode_bcp(m: BCP) -> bytes:
    temp = scaled(m.max_temperature_c, 1, "BCP.max_temperature", -50)
    if not 0 <= temp <= 255:
        raise EncodeError("BCP.max_temperature: -50..205 °C")
    if not 0 <= m.max_cell_voltage_v <= _MAX_CELL_V or not 0 <= m.soc_pct <= 100:
        raise EncodeError(f"BCP: max cell voltage 0..{_MAX_CELL_V} V, SOC 0..100 %")
    return b"".join([
        put_u16(scaled(m.max_cell_voltage_v, 0.01, "BCP.max_cell"), "BCP.max_cell"),
        put_u16(current_raw(-m.max_charge_current_a, "BCP.max_current"), "BCP.max_current"),
        put_u16(scaled(m.nominal_energy_kwh, 0.1, "BCP.energy"), "BCP.energy"),
        put_u16(scaled(m.max_total_voltage_v, 0.1, "BCP.max_voltage"), "BCP.max_voltage"),
        bytes([temp]),
        put_u16(scaled(m.soc_pct, 0.1, "BCP.soc"), "BCP.soc"),
        put_u16(scaled(m.battery_voltage_v, 0.1, "BCP.voltage"), "BCP.voltage"),
    ])


def decode_bcp(data: bytes, notes: Notes | None = None) -> BCP:
    if len(data) < BCP_LENGTH:
        raise DecodeError(f"BCP: {len(data)} bytes, need {BCP_LENGTH}")
    soc = u16(data, 9) / 10
    if soc > 100.0:
        raise DecodeError(f"BCP: SOC {soc} % above 100 %")
    cell = u16(data, 0) / 100
    if cell > _MAX_CELL_V:
        raise DecodeError(f"BCP: max cell voltage {cell} V above the {_MAX_CELL_V} V range")
    return BCP(cell, abs(signed_current(u16(data, 2))), u16(data, 4) / 10,
               u16(data, 6) / 10, float(data[8] - 50), soc, u16(data, 11) / 10)


def encode_bcs(m: BCS) -> bytes:
    cell = scaled(m.max_cell_voltage_v, 0.01, "BCS.max_cell")
    if not 0 <= cell <= 0xFFF or not 0 <= m.max_cell_group <= 0xF:
        raise EncodeError("BCS: max cell voltage 0..40.95 V, group 0..15")
    soc = scaled(m.soc_pct, 1, "BCS.soc")
    if not 0 <= soc <= 100:
        raise EncodeError("BCS.soc: 0..100 %")
    return b"".join([
        put_u16(scaled(m.measured_voltage_v, 0.1, "BCS.voltage"), "BCS.voltage"),
        put_u16(current_raw(-m.measured_current_a, "BCS.current"), "BCS.current"),
        put_u16(cell | m.max_cell_group << 12, "BCS.max_cell"),
        bytes([soc]),
        put_u16(m.remaining_min, "BCS.remaining"),
    ])


def decode_bcs(data: bytes, notes: Notes | None = None) -> BCS:
    if len(data) < BCS_LENGTH:
        raise DecodeError(f"BCS: {len(data)} bytes, need {BCS_LENGTH}")
    if data[6] > 100:
        raise DecodeError(f"BCS: SOC {data[6]} % above 100 %")
    remaining = u16(data, 7)
    if remaining > _REMAINING_MAX_MIN:
        _note(notes, "BCS", "remaining_min", data[7:9], "above the 600 min range")
    cell = u16(data, 4)
    return BCS(u16(data, 0) / 10, charge_current(u16(data, 2)), (cell & 0xFFF) / 100,
               cell >> 12, float(data[6]), remaining)


def encode_bmv(m: BMV) -> bytes:
    if len(m.cell_voltages_v) != len(m.groups) or not m.cell_voltages_v:
        raise EncodeError("BMV: one group per cell, at least one cell")
    out = bytearray()
    for volts, group in zip(m.cell_voltages_v, m.groups, strict=True):
        if volts is None:
            out += b"\xff\xff"
            continue
        raw = scaled(volts, 0.01, "BMV.cell")
        if not 0 <= raw <= 0xFFF or not 0 <= group <= 0xF or raw | group << 12 == 0xFFFF:
            raise EncodeError("BMV: cell voltage 0..40.95 V, group 0..15, not both at their "
                              "maximum (0xFFFF is 'not available')")
        out += put_u16(raw | group << 12, "BMV.cell")
    return bytes(out)


def decode_bmv(data: bytes, notes: Notes | None = None) -> BMV:
    if len(data) < 2:
        raise DecodeError(f"BMV: {len(data)} bytes, need 2 a cell")
    if len(data) % 2:
        _note(notes, "BMV", "length", data[-1:], "odd length: the last byte is no cell")
    words = [u16(data, i) for i in range(0, len(data) - 1, 2)]
    return BMV(tuple(None if w == 0xFFFF else (w & 0xFFF) / 100 for w in words),
               tuple(0 if w == 0xFFFF else w >> 12 for w in words))


def encode_bmt(m: BMT) -> bytes:
    raws = [0xFF if c is None else scaled(c, 1, "BMT.temperature", -50)
            for c in m.temperatures_c]
    if not raws or any(not 0 <= r <= 0xFF for r in raws):
        raise EncodeError("BMT: at least one sensor, each -50..204 °C")
    return bytes(raws)


def decode_bmt(data: bytes, notes: Notes | None = None) -> BMT:
    if not data:
        raise DecodeError("BMT: no sensor")
    return BMT(tuple(None if b == 0xFF else float(b - 50) for b in data))


def encode_bsp(m: BSP) -> bytes:
    if not m.raw:
        raise EncodeError("BSP: empty")
    return bytes(m.raw)


def decode_bsp(data: bytes, notes: Notes | None = None) -> BSP:
    return BSP(bytes(data))


# ---- BDP: the project's V2G extension (docs/V2G.md), not GB/T 27930-2015 ---------------
# Consent is a safety field: only 0xAA (given) and 0x00 (not given) are accepted.
CONSENT_GIVEN = 0xAA
CONSENT_NOT_GIVEN = 0x00


def consent_byte(consent: bool) -> int:
    return CONSENT_GIVEN if consent else CONSENT_NOT_GIVEN


def consent_of(raw: int, message: str) -> bool:
    if raw not in (CONSENT_GIVEN, CONSENT_NOT_GIVEN):
        raise DecodeError(f"{message}: consent byte 0x{raw:02X} is neither 0xAA nor 0x00")
    return raw == CONSENT_GIVEN


def discharge_magnitude(raw: int) -> float:
    """A discharge current limit sent in §4.5's sign (+ = discharge); a vehicle that sends it
    with the other sign means the same magnitude (tolerant, as CML's decoding is)."""
    return abs(signed_current(raw))


def encode_bdp(m: BDP) -> bytes:
    if not 0 <= m.soc_floor_pct <= 100:
        raise EncodeError("BDP.soc_floor: 0..100 %")
    return b"".join([
        bytes([consent_byte(m.consent)]),
        put_u16(current_raw(m.max_discharge_current_a, "BDP.max_current"), "BDP.max_current"),
        put_u16(scaled(m.max_discharge_power_w, 100, "BDP.max_power"), "BDP.max_power"),
        put_u16(scaled(m.min_discharge_voltage_v, 0.1, "BDP.min_voltage"), "BDP.min_voltage"),
        put_u16(scaled(m.soc_floor_pct, 0.1, "BDP.soc_floor"), "BDP.soc_floor"),
        put_u16(scaled(m.energy_kwh, 0.1, "BDP.energy"), "BDP.energy"),
    ])


def decode_bdp(data: bytes, notes: Notes | None = None) -> BDP:
    """Every field is one the charger acts on: a short message, a consent byte that is not
    0xAA/0x00 or a SOC floor over 100 % rejects it (the session then stays charge-only)."""
    d = bytes(data)
    if len(d) < BDP_LENGTH:
        raise DecodeError(f"BDP: {len(d)} bytes, need {BDP_LENGTH}")
    floor = u16(d, 7) / 10
    if floor > 100:
        raise DecodeError(f"BDP: SOC floor {floor} % above 100 %")
    if any(b != 0xFF for b in d[BDP_LENGTH:]):
        _note(notes, "BDP", "length", d, f"{len(d)} bytes where {BDP_LENGTH} are defined")
    return BDP(consent_of(d[0], "BDP"), discharge_magnitude(u16(d, 1)), u16(d, 3) * 100.0,
               u16(d, 5) / 10, floor, u16(d, 9) / 10)
