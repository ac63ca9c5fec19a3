"""An independent GB/T 27930-2015 decoder for tests, written from the fact sheet
(../shared/reference/vehicle-protocols.md §1) with plain int parsing. It deliberately
shares no code with `drivers/` (no cantools, no DBC), so a bug in the driver's tables
cannot hide itself in the tests that use this.
"""

from __future__ import annotations

from collections.abc import Iterable

NAMES = {0x26: "CHM", 0x27: "BHM", 0x01: "CRM", 0x02: "BRM", 0x06: "BCP", 0x07: "CTS",
         0x08: "CML", 0x09: "BRO", 0x0A: "CRO", 0x10: "BCL", 0x11: "BCS", 0x12: "CCS",
         0x13: "BSM", 0x15: "BMV", 0x16: "BMT", 0x17: "BSP", 0x19: "BST", 0x1A: "CST",
         0x1C: "BSD", 0x1D: "CSD", 0x1E: "BEM", 0x1F: "CEM"}


def _u16(d: bytes, i: int) -> int:
    return d[i] | d[i + 1] << 8


def _charge_a(raw: int) -> float:
    # §4.5: 0.1 A/bit, -400 A offset, discharge positive; returned as charge positive.
    return round(400.0 - raw / 10.0, 1)


def fields_of(name: str, d: bytes) -> dict[str, float]:
    if name == "BCL" and len(d) >= 5:
        return {"voltage": _u16(d, 0) / 10, "current": _charge_a(_u16(d, 2)), "mode": d[4]}
    if name == "CCS" and len(d) >= 4:
        return {"voltage": _u16(d, 0) / 10, "current": _charge_a(_u16(d, 2))}
    if name == "BCS" and len(d) >= 7:
        return {"voltage": _u16(d, 0) / 10, "current": _charge_a(_u16(d, 2)), "soc": d[6]}
    if name == "BCP" and len(d) >= 13:
        return {"max_current": abs(_charge_a(_u16(d, 2))), "soc": _u16(d, 9) / 10,
                "voltage": _u16(d, 11) / 10}
    if name == "CML" and len(d) >= 8:
        return {"max_voltage": _u16(d, 0) / 10,
                "max_current": max(abs(_charge_a(_u16(d, 4))), abs(_charge_a(_u16(d, 6))))}
    if name in ("BRO", "CRO", "CRM") and d:
        return {"ready": d[0]}
    return {}


def decode_log(lines: Iterable[str]) -> list[tuple[str, dict[str, float]]]:
    """Message names in bus order, with a few fields; TP messages when complete."""
    return [(name, fields) for _t, name, fields in decode_log_timed(lines)]


def decode_log_timed(lines: Iterable[str]) -> list[tuple[float, str, dict[str, float]]]:
    """As decode_log, each with the candump line's time stamp (a TP message: its last
    packet's)."""
    out: list[tuple[float, str, dict[str, float]]] = []
    transfers: dict[int, tuple[int, int, bytearray]] = {}  # source -> (pf, size, data)
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or "#" not in parts[2]:
            continue
        ident_hex, data_hex = parts[2].split("#")
        stamp = float(parts[0].strip("()"))
        ident, data = int(ident_hex, 16), bytes.fromhex(data_hex)
        pf, source = (ident >> 16) & 0xFF, ident & 0xFF
        if pf == 0xEC and data and data[0] == 0x10:  # TP.CM_RTS
            transfers[source] = (data[6], _u16(data, 1), bytearray())
        elif pf == 0xEB and source in transfers:  # TP.DT
            tpf, size, buf = transfers[source]
            buf += data[1:8]
            if len(buf) >= size:
                del transfers[source]
                name = NAMES.get(tpf, f"PF{tpf:02X}")
                out.append((stamp, name, fields_of(name, bytes(buf[:size]))))
        elif pf in NAMES:
            out.append((stamp, NAMES[pf], fields_of(NAMES[pf], data)))
    return out


def cml_raw(d: bytes) -> dict[str, float]:
    """CML as laid out (SPN 2824-2827), each field where it stands, currents as raw counts:
    a charging current is raw < 4000 (§4.5: discharge counts positive)."""
    return {"max_voltage": _u16(d, 0) / 10, "min_voltage": _u16(d, 2) / 10,
            "max_current_raw": _u16(d, 4), "min_current_raw": _u16(d, 6)}


def charge_amps(raw: int) -> float:
    return _charge_a(raw)
