"""GB/T 27930 codec: round-trips for every message, real-trace vectors, fuzzing."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import messages as m
from drivers.gbt27930.codec import PGN, DecodeError, EncodeError, decode, encode


def tenths(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.integers(int(lo * 10), int(hi * 10)).map(lambda x: x / 10)


def hundredths(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.integers(int(lo * 100), int(hi * 100)).map(lambda x: x / 100)


volts = tenths(0, 6553.5)
# Charging currents on the wire grid: GB/T raw (400 - I) * 10 must stay in 0..65535.
charge_a = tenths(-6153.5, 400)
magnitude_a = tenths(0, 400)
discharge_a = tenths(0, 6153.5)
hundred_w = st.integers(0, 65535).map(lambda x: x * 100.0)
temp_c = st.integers(-50, 205).map(float)
flags = st.booleans()
ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E))


def subset(enum: Any) -> st.SearchStrategy[frozenset[Any]]:
    return st.frozensets(st.sampled_from(list(enum)))


MESSAGES: dict[type[Any], st.SearchStrategy[Any]] = {
    m.CHM: st.builds(m.CHM, st.tuples(*[st.integers(0, 255)] * 3)),
    m.BHM: st.builds(m.BHM, volts),
    m.CRM: st.builds(m.CRM, flags, st.integers(0, 0xFFFFFFFF),
                     st.text(alphabet="ABCXYZ0189", max_size=3)),
    m.BRM: st.builds(
        m.BRM, st.tuples(*[st.integers(0, 255)] * 3), st.integers(0, 255), tenths(0, 6553.5),
        volts, ascii_text.filter(lambda s: len(s) <= 4),
        st.one_of(st.none(), st.integers(0, 0xFFFFFFFE)),
        st.one_of(st.none(), st.tuples(st.integers(1985, 2239), st.integers(1, 12),
                                       st.integers(1, 31))),
        st.one_of(st.none(), st.integers(0, 0xFFFFFE)), st.one_of(st.none(), flags),
        ascii_text.filter(lambda s: len(s) <= 17),
        st.one_of(st.just(b""), st.binary(min_size=8, max_size=8).filter(
            lambda b: b != b"\xff" * 8))),
    m.BCP: st.builds(m.BCP, hundredths(0, 24), magnitude_a, tenths(0, 6553.5), volts,
                     temp_c, tenths(0, 100), volts),
    m.CTS: st.builds(m.CTS, st.one_of(st.none(), st.tuples(
        st.integers(0, 9999), st.integers(1, 12), st.integers(1, 31), st.integers(0, 23),
        st.integers(0, 59), st.integers(0, 59)))),
    m.CML: st.builds(lambda a, b, c, d: m.CML(a, b, max(c, d), min(c, d)), volts, volts,
                     magnitude_a, magnitude_a),
    m.BRO: st.builds(m.BRO, st.sampled_from(list(m.Ready))),
    m.CRO: st.builds(m.CRO, st.sampled_from(list(m.Ready))),
    m.BCL: st.builds(m.BCL, volts, charge_a, st.sampled_from(list(m.ChargeMode))),
    m.BCS: st.builds(m.BCS, volts, charge_a, hundredths(0, 40.95), st.integers(0, 15),
                     st.integers(0, 100).map(float), st.integers(0, 65535)),
    m.CCS: st.builds(m.CCS, volts, charge_a, st.integers(0, 65535), flags),
    m.BSM: st.builds(m.BSM, st.integers(1, 256), temp_c, st.integers(1, 256), temp_c,
                     st.integers(1, 256), st.sampled_from(list(m.Level)),
                     st.sampled_from(list(m.Level)), flags, flags, flags, flags, flags),
    m.BMV: st.integers(1, 96).flatmap(lambda n: st.builds(
        m.BMV, st.lists(st.one_of(st.none(), hundredths(0, 40.94)), min_size=n, max_size=n)
        .map(tuple), st.lists(st.integers(0, 15), min_size=n, max_size=n).map(tuple))
        ).map(lambda b: m.BMV(b.cell_voltages_v, tuple(0 if v is None else g for v, g in
                                                       zip(b.cell_voltages_v, b.groups,
                                                           strict=True)))),
    m.BMT: st.builds(m.BMT, st.lists(st.one_of(st.none(), st.integers(-50, 204).map(float)),
                                     min_size=1, max_size=128).map(tuple)),
    m.BSP: st.builds(m.BSP, st.binary(min_size=1, max_size=64)),
    m.BST: st.builds(m.BST, subset(m.BmsStopReason), subset(m.BmsFault), subset(m.BmsError)),
    m.CST: st.builds(m.CST, subset(m.ChargerStopReason), subset(m.ChargerFault),
                     subset(m.ChargerError)),
    m.BSD: st.builds(m.BSD, st.integers(0, 255).map(float), hundredths(0, 655.35),
                     hundredths(0, 655.35), temp_c, temp_c),
    m.CSD: st.builds(m.CSD, st.integers(0, 65535), tenths(0, 6553.5), st.integers(0, 2**32 - 1)),
    m.BEM: st.builds(m.BEM, subset(m.BemTimeout)),
    m.CEM: st.builds(m.CEM, subset(m.CemTimeout)),
    # The V2G extension (docs/V2G.md): discharge limits are magnitudes in §4.5's + direction.
    m.CDP: st.builds(m.CDP, flags, discharge_a, hundred_w, volts, st.integers(0, 255)),
    m.BDP: st.builds(m.BDP, flags, discharge_a, hundred_w, volts, tenths(0, 100),
                     tenths(0, 6553.5)),
    m.BDS: st.builds(m.BDS, flags, discharge_a, tenths(0, 6553.5), tenths(0, 100)),
}


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGES) == set(PGN)


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
def test_round_trip(cls: type[Any]) -> None:
    @settings(max_examples=60, deadline=None)
    @given(MESSAGES[cls])
    def check(message: Any) -> None:
        if cls is m.BCS and message.soc_pct > 100:
            return
        pgn, payload = encode(message)
        assert pgn == PGN[cls]
        assert decode(pgn, payload) == message

    check()


@pytest.mark.parametrize(("pgn", "hexdata", "expected"), [
    (0x0600, "A101D0077A02D80F695701900D", m.BCP(4.17, 200.0, 63.4, 405.6, 55.0, 34.3, 347.2)),
    (0x1000, "D80FD00702", m.BCL(405.6, 200.0, m.ChargeMode.CONSTANT_CURRENT)),
    (0x0800, "9411D007F00A9A0F", m.CML(450.0, 200.0, 120.0, 0.6)),
    # A vendor that swaps max/min and the sign convention still decodes to the limits.
    (0x0800, "6419D007AC0DB004", m.CML(650.0, 200.0, 280.0, 50.0)),
    (0x1A00, "0400F0F0", m.CST(frozenset({m.ChargerStopReason.MANUAL}))),
    (0x1200, "B60D0E0B000001", m.CCS(351.0, 117.0, 0, True)),
    (0x2700, "D80F", m.BHM(405.6)),
])
def test_real_trace_vectors(pgn: int, hexdata: str, expected: Any) -> None:
    assert decode(pgn, bytes.fromhex(hexdata)) == expected


def test_brm_from_a_real_vehicle() -> None:
    brm = decode(0x0200, bytes.fromhex("010100060807" "8A0D" "4341544C") + b"\xff" * 37)
    assert isinstance(brm, m.BRM)
    assert brm.manufacturer == "CATL" and brm.rated_capacity_ah == 180.0
    assert brm.rated_voltage_v == 346.6 and brm.vin == "" and brm.pack_serial is None


def test_unused_bits_are_sent_as_ones() -> None:
    # CST as in the real trace: fault and error fields padded with 1 above their bits.
    assert encode(m.CST(frozenset({m.ChargerStopReason.MANUAL})))[1] == bytes.fromhex("0400F0F0")
    assert encode(m.CCS(351.0, 117.0, 0, True))[1][6] == 0xFD
    assert encode(m.CEM(frozenset()))[1] == bytes.fromhex("FCF0C0FC")


@pytest.mark.parametrize("bad", [
    m.BCL(float("nan"), 10.0, m.ChargeMode.CONSTANT_CURRENT),
    m.BCL(400.0, 500.0, m.ChargeMode.CONSTANT_CURRENT),  # above the 400 A GB/T can carry
    m.BHM(-1.0),
    m.CTS((2026, 13, 1, 0, 0, 0)),
    m.CRM(True, 2**32),
])
def test_encode_rejects_what_the_wire_cannot_carry(bad: Any) -> None:
    with pytest.raises(EncodeError):
        encode(bad)


@pytest.mark.parametrize(("pgn", "hexdata"), [
    (0x1000, "D80FD00709"),  # BCL mode 9
    (0x0900, "55"),  # BRO neither 00, AA nor FF
    (0x1000, "D80F"),  # short
    (0x0600, "A101D007"),  # BCP short
    (0x4200, "00"),  # not a GB/T PGN
])
def test_decode_errors_are_decode_errors(pgn: int, hexdata: str) -> None:
    with pytest.raises(DecodeError):
        decode(pgn, bytes.fromhex(hexdata))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from(sorted(PGN.values())), st.integers(0, 0xFFFF)),
       st.binary(max_size=64))
def test_fuzzed_bytes_only_ever_raise_decode_error(pgn: int, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(pgn, data)
