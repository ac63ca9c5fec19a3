"""Byte layouts of the multi-packet messages BRM (49 B), BCP (13 B) and BCS (9 B).

GB/T 27930-2015 §10: BRM's optional fields (manufacturer onwards) are sent as 0xFF
when the vehicle does not fill them; many vehicles send only the first 8 bytes' worth
or the 41-byte variant, so decoding pads a short BRM with 0xFF.
"""

from __future__ import annotations

from agent.core.messages import BCP, BCS, BRM
from drivers.gbt27930.wire import (
    DecodeError,
    EncodeError,
    current_raw,
    put_u16,
    scaled,
    signed_current,
    u16,
)

BRM_LENGTH = 49
BCP_LENGTH = 13
BCS_LENGTH = 9
_BRM_MIN = 8  # version, battery type, rated capacity and voltage are mandatory
_YEAR_OFFSET = 1985  # BRM production year: 1 year/bit from 1985


def _ascii(field: bytes, name: str) -> str:
    text = field.rstrip(b"\xff")
    if any(b > 0x7E or b < 0x20 for b in text):
        raise DecodeError(f"BRM.{name}: not printable ASCII: {text!r}")
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


def decode_brm(data: bytes) -> BRM:
    if len(data) < _BRM_MIN:
        raise DecodeError(f"BRM: {len(data)} bytes, need at least {_BRM_MIN}")
    d = bytes(data[:BRM_LENGTH]).ljust(BRM_LENGTH, b"\xff")
    serial = int.from_bytes(d[12:16], "little")
    date = None if d[16:19] == b"\xff\xff\xff" else (d[16] + _YEAR_OFFSET, d[17], d[18])
    cycles = int.from_bytes(d[19:22], "little")
    leased = None if d[22] == 0xFF else d[22] == 0
    software = b"" if d[41:49] == b"\xff" * 8 else d[41:49]
    return BRM(
        version=(d[0], d[1], d[2]), battery_type=d[3], rated_capacity_ah=u16(d, 4) / 10,
        rated_voltage_v=u16(d, 6) / 10, manufacturer=_ascii(d[8:12], "manufacturer"),
        pack_serial=None if serial == 0xFFFFFFFF else serial, production_date=date,
        cycle_count=None if cycles == 0xFFFFFF else cycles, leased=leased,
        vin=_ascii(d[24:41], "vin"), software_version=software)


def encode_bcp(m: BCP) -> bytes:
    temp = scaled(m.max_temperature_c, 1, "BCP.max_temperature", -50)
    if not 0 <= temp <= 255:
        raise EncodeError("BCP.max_temperature: -50..205 °C")
    return b"".join([
        put_u16(scaled(m.max_cell_voltage_v, 0.01, "BCP.max_cell"), "BCP.max_cell"),
        put_u16(current_raw(-m.max_charge_current_a, "BCP.max_current"), "BCP.max_current"),
        put_u16(scaled(m.nominal_energy_kwh, 0.1, "BCP.energy"), "BCP.energy"),
        put_u16(scaled(m.max_total_voltage_v, 0.1, "BCP.max_voltage"), "BCP.max_voltage"),
        bytes([temp]),
        put_u16(scaled(m.soc_pct, 0.1, "BCP.soc"), "BCP.soc"),
        put_u16(scaled(m.battery_voltage_v, 0.1, "BCP.voltage"), "BCP.voltage"),
    ])


def decode_bcp(data: bytes) -> BCP:
    if len(data) < BCP_LENGTH:
        raise DecodeError(f"BCP: {len(data)} bytes, need {BCP_LENGTH}")
    soc = u16(data, 9) / 10
    if soc > 100.0:
        raise DecodeError(f"BCP: SOC {soc} % above 100 %")
    return BCP(u16(data, 0) / 100, abs(signed_current(u16(data, 2))), u16(data, 4) / 10,
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


def decode_bcs(data: bytes) -> BCS:
    if len(data) < BCS_LENGTH:
        raise DecodeError(f"BCS: {len(data)} bytes, need {BCS_LENGTH}")
    if data[6] > 100:
        raise DecodeError(f"BCS: SOC {data[6]} % above 100 %")
    cell = u16(data, 4)
    return BCS(u16(data, 0) / 10, -signed_current(u16(data, 2)), (cell & 0xFFF) / 100,
               cell >> 12, float(data[6]), u16(data, 7))
