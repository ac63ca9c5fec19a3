"""Strict where it is safety, tolerant where it is information (docs/VEHICLE_DATA.md),
field by field: informational oddities are kept raw and noticed once; fields the charger
acts on reject their message when out of range; nothing is dropped silently."""

from __future__ import annotations

import math

import can
import pytest

from agent.core import messages as m
from agent.core.commands import Notice
from agent.core.events import DriverError, Tick, VehicleDataNotice, VehicleMessage
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from agent.core.vehicle_data_log import REPEAT_S
from drivers.gbt27930.codec import DecodeError, decode, decode_noting, encode
from drivers.gbt27930.link import BMS_ADDRESS, CHARGER_ADDRESS, GbtLink, LinkNotice, Role, can_id
from hil.ev_bms import VehicleConfig
from hil.plant import InProcessPile

# The BRM of session-b's car (CATL), 49 bytes: everything optional left at 0xFF.
REAL_BRM = bytes.fromhex("010100060807" "8A0D" "4341544C") + b"\xff" * 37


def _with(data: bytes, offset: int, patch: str) -> bytes:
    raw = bytes.fromhex(patch)
    return data[:offset] + raw + data[offset + len(raw):]


# ---- information: decoded where possible, kept raw, noted ----------------------------

INFORMATIONAL = [
    # (PGN, payload, field noted, raw bytes noted)
    (0x0200, _with(REAL_BRM, 8, "01000000"), "manufacturer", "01000000"),
    (0x0200, _with(REAL_BRM, 24, "4C53" + "00" * 3 + "E9" + "41" * 11), "vin",
     "4c53000000e9" + "41" * 11),
    (0x0200, _with(REAL_BRM, 16, "260D01"), "production_date", "260d01"),  # month 13
    (0x0200, _with(REAL_BRM, 22, "07"), "ownership", "07"),
    (0x0200, _with(REAL_BRM, 23, "00"), "reserved", "00"),
    (0x0200, _with(REAL_BRM, 3, "42"), "battery_type", "42"),
    (0x0200, REAL_BRM[:6], "length", REAL_BRM[:6].hex()),
    (0x0700, bytes.fromhex("FF" * 7), "timestamp", "ff" * 7),
    (0x0700, bytes.fromhex("1A061414150000"), "timestamp", "1a061414150000"),  # session-a
    (0x0100, bytes.fromhex("AA00000000" "01E941"), "region", "01e941"),
    (0x1100, bytes.fromhex("920DA00F6A7122FEFF"), "remaining_min", "feff"),
    (0x1C00, bytes.fromhex("FE6801A401474A"), "end_soc", "fe"),
    (0x1300, bytes.fromhex("494F034D1A0010"), "reserved", "494f034d1a0010"),  # BSM bits 6-7
    (0x1500, bytes.fromhex("6A716A71FF"), "length", "ff"),  # BMV with a stray byte
]


@pytest.mark.parametrize(("pgn", "payload", "name", "raw_hex"), INFORMATIONAL,
                         ids=[f"{hex(p)}-{n}" for p, _d, n, _r in INFORMATIONAL])
def test_an_odd_informational_field_is_accepted_and_noted(pgn: int, payload: bytes, name: str,
                                                          raw_hex: str) -> None:
    message, notes = decode_noting(pgn, payload)
    assert [(n.field, n.raw.hex()) for n in notes] == [(name, raw_hex)]
    assert notes[0].message == type(message).__name__


def test_a_brm_with_a_non_ascii_manufacturer_keeps_its_raw_bytes_and_the_rest() -> None:
    brm = decode(0x0200, _with(REAL_BRM, 8, "01000000"))
    assert isinstance(brm, m.BRM)
    assert brm.manufacturer == "" and brm.raw[8:12] == bytes.fromhex("01000000")
    assert (brm.battery_type, brm.rated_capacity_ah, brm.rated_voltage_v) == (6, 180.0, 346.6)


def test_a_cts_without_a_clock_decodes_with_no_time() -> None:
    for raw in ("FF" * 7, "1A061414150000"):
        cts = decode(0x0700, bytes.fromhex(raw))
        assert isinstance(cts, m.CTS) and cts.timestamp is None
        assert cts.raw == bytes.fromhex(raw)
    assert encode(m.CTS(None))[1] == b"\xff" * 7


def test_a_clean_real_message_has_no_notes() -> None:
    assert decode_noting(0x0200, REAL_BRM)[1] == []
    assert decode_noting(0x1300, bytes.fromhex("494F034D1A00D0"))[1] == []


# ---- safety: out of range rejects the message -------------------------------------

SAFETY = [
    (0x0600, bytes.fromhex("A101D0077A02D80F69E9039000"), "SOC 100.1 %"),
    (0x0600, bytes.fromhex("6509D0077A02D80F695701900D"), "max cell 24.05 V"),
    (0x1100, bytes.fromhex("920DA00F6A71655802"), "SOC 101 %"),
    (0x1000, bytes.fromhex("D80FD00703"), "BCL mode 3"),
    (0x1000, bytes.fromhex("D80FD0"), "short BCL"),
    (0x0900, bytes.fromhex("55"), "BRO 0x55"),
    (0x0600, bytes.fromhex("A101D0077A02"), "short BCP"),
    (0x1100, bytes.fromhex("920DA00F"), "short BCS"),
]


@pytest.mark.parametrize(("pgn", "payload", "why"), SAFETY, ids=[w for _p, _d, w in SAFETY])
def test_a_safety_field_out_of_range_rejects_the_message(pgn: int, payload: bytes,
                                                         why: str) -> None:
    with pytest.raises(DecodeError):
        decode(pgn, payload)


BSM_FLAGS = [  # (field, byte, shift)
    ("cell_voltage", 5, 0), ("soc", 5, 2), ("over_current", 5, 4),
    ("over_temperature", 5, 6), ("insulation_fault", 6, 0), ("connector_fault", 6, 2)]


@pytest.mark.parametrize(("name", "byte", "shift"), BSM_FLAGS, ids=[f[0] for f in BSM_FLAGS])
@pytest.mark.parametrize("value", [0b01, 0b10, 0b11])
def test_every_bsm_alarm_is_set_in_every_non_normal_encoding(name: str, byte: int, shift: int,
                                                             value: int) -> None:
    payload = bytearray.fromhex("494F034D1A00D0")
    payload[byte] |= value << shift
    bsm = decode(0x1300, bytes(payload))
    assert isinstance(bsm, m.BSM) and bsm.abnormal(), f"{name}={value:02b}"
    assert getattr(bsm, name) not in (False, m.Level.NORMAL)


@pytest.mark.parametrize(("bits", "permitted"), [(0b00, False), (0b01, True), (0b10, False),
                                                  (0b11, False)])
def test_only_01_permits_charging(bits: int, permitted: bool) -> None:
    payload = bytearray.fromhex("494F034D1A0000")
    payload[6] = 0xC0 | bits << 4
    bsm = decode(0x1300, bytes(payload))
    assert isinstance(bsm, m.BSM) and bsm.charge_permitted is permitted and not bsm.abnormal()


@pytest.mark.parametrize(("pgn", "offset"), [(0x1000, 2), (0x1200, 2)])
def test_a_raw_current_of_4000_is_plus_zero_amps(pgn: int, offset: int) -> None:
    payload = bytearray.fromhex("D80FD00702" if pgn == 0x1000 else "700DA00F000001")
    payload[offset:offset + 2] = (4000).to_bytes(2, "little")
    message = decode(pgn, bytes(payload))
    amps = getattr(message, "current_demand_a", getattr(message, "output_current_a", None))
    assert amps == 0.0 and math.copysign(1.0, amps) == 1.0
    bcs = decode(0x1100, bytes.fromhex("920DA00F6A71225802"))
    assert isinstance(bcs, m.BCS) and math.copysign(1.0, bcs.measured_current_a) == 1.0


# ---- cell-level messages ----------------------------------------------------------


def test_cell_voltages_and_temperatures_arrive_over_tp() -> None:
    cells = m.BMV(tuple([3.61] * 95 + [None]), tuple([1] * 95 + [0]))
    temps = m.BMT((25.0, 26.0, None, 24.0) * 8)
    channel = "vehicle-data-tp"
    with can.Bus(interface="virtual", channel=channel) as a, \
            can.Bus(interface="virtual", channel=channel) as b:
        bms, charger = GbtLink(a, Role.BMS), GbtLink(b, Role.CHARGER)
        got: list[object] = []
        for i, msg in enumerate([cells, temps, m.BSP(b"\x01\x02\x03")]):
            bms.send(msg, i * 1.0)
            for step in range(5):
                got += charger.poll(i + step * 0.01)
                bms.poll(i + step * 0.01)
    assert got == [cells, temps, m.BSP(b"\x01\x02\x03")]


# ---- nothing dropped silently: counted, and noticed without flooding ---------------


def test_unknown_pgns_and_rejected_messages_reach_the_core_as_notices() -> None:
    channel = "vehicle-data-notices"
    with can.Bus(interface="virtual", channel=channel) as a, \
            can.Bus(interface="virtual", channel=channel) as b:
        charger = GbtLink(b, Role.CHARGER)
        a.send(can.Message(arbitration_id=can_id(6, 0x4200, CHARGER_ADDRESS, BMS_ADDRESS),
                           data=b"\x01\x02", is_extended_id=True))
        a.send(can.Message(arbitration_id=can_id(6, 0x1000, CHARGER_ADDRESS, BMS_ADDRESS),
                           data=bytes.fromhex("D80FD00709"), is_extended_id=True))
        items = charger.poll(0.0)
    assert [(i.kind, i.message, i.raw) for i in items if isinstance(i, LinkNotice)] == [
        ("unknown_pgn", "PGN 0x4200", b"\x01\x02"),
        ("rejected", "BCL", bytes.fromhex("D80FD00709"))]


def _notices(session: GunSession, event: object) -> list[Notice]:
    return [c for c in session.handle(event) if isinstance(c, Notice)]  # type: ignore[arg-type]


def test_the_core_counts_every_rejection_and_notices_it_at_most_every_repeat_interval() -> None:
    s = GunSession(GunRatings())
    shown = []
    for i in range(50):  # BCL rejected 20 times a second for 2.5 s
        t = i * 0.05
        shown += _notices(s, VehicleDataNotice(t, "rejected", "BCL", "", "D80FD00709", "mode 9"))
    assert s.data.vehicle_data.counts["rejected BCL"] == 50
    assert len(shown) == 1 and "D80FD00709" in shown[0].detail
    later = _notices(s, VehicleDataNotice(REPEAT_S + 1, "rejected", "BCL", "", "D80FD00709",
                                          "mode 9"))
    assert len(later) == 1 and "#51" in later[0].detail
    odd = [_notices(s, VehicleDataNotice(t, "oddity", "BRM", "manufacturer", "01000000", "x"))
           for t in (20.0, 40.0, 60.0)]
    assert [len(n) for n in odd] == [1, 0, 0] and "01000000" in odd[0][0].detail
    driver = _notices(s, DriverError(61.0, "can", "TP receive timed out"))
    assert len(driver) == 1 and driver[0].kind == "driver_problem"


def test_a_car_with_a_non_ascii_manufacturer_gets_its_charge() -> None:
    """The issue's first finding, end to end through the codec: the car's BRM carries
    01 00 00 00 as manufacturer. It is identified, charged, and the operator is told once."""
    pile = InProcessPile(vehicle=VehicleConfig(start_soc_pct=50.0, target_soc_pct=51.0))
    pile.vehicle_wire = lambda pgn, payload: _with(payload, 8, "01000000") \
        if pgn == 0x0200 else payload
    pile.plug_in()
    assert pile.run_until(lambda q: q.session.state in (State.FINISHED, State.FAULT), 600)
    assert pile.log.reports[-1].outcome == "finished"
    assert pile.log.reports[-1].energy_kwh > 0.3  # 1 % of a 42 kWh pack
    odd = [c for _t, c in pile.log.all_commands
           if isinstance(c, Notice) and c.kind == "vehicle_oddity"]
    assert len(odd) == 1 and "BRM.manufacturer" in odd[0].detail and "01000000" in odd[0].detail
    assert pile.log.reports[-1].vehicle_data["oddity BRM.manufacturer"] >= 1


def test_a_rejected_bcs_is_counted_in_the_session_report() -> None:
    s = GunSession(GunRatings())
    s.handle(VehicleDataNotice(0.0, "rejected", "BCS", "", "920DA00F6A71655802", "SOC 101 %"))
    s.handle(VehicleMessage(0.1, m.BHM(400.0)))
    s.handle(Tick(0.2))
    assert s.state is State.IDLE and s.data.vehicle_data.counts == {"rejected BCS": 1}
