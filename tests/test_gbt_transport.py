"""J1939 TP (sans-I/O) properties, and the python-can link against the real traces."""

from __future__ import annotations

import uuid
from pathlib import Path

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import messages as m
from drivers.gbt27930.candump import CandumpWriter, read_candump
from drivers.gbt27930.link import GbtLink, LinkNotice, LinkProblem, Role
from drivers.gbt27930.tp import T1_S, T3_S, TpReceiver, TpResult, TpSender

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gbt27930"


def _transfer(data: bytes, mangle: str = "", at: int = 0) -> tuple[TpResult, TpResult, list[str]]:
    """Run one transfer; mangle the DT stream ('drop', 'dup', 'swap') at packet `at`."""
    tx, rx, t = TpSender(), TpReceiver(), 0.0
    problems: list[str] = []
    res = tx.send(0x1100, data, t)
    cts = rx.on_cm(res.cm_out[0], t)
    sent = tx.on_cm(cts.cm_out[0], t)
    dts = list(sent.dt_out)
    if mangle == "drop":
        del dts[at]
    elif mangle == "dup":
        dts.insert(at, dts[at])
    elif mangle == "swap" and at + 1 < len(dts):
        dts[at], dts[at + 1] = dts[at + 1], dts[at]
    final = TpResult()
    for dt in dts:
        r = rx.on_dt(dt, t)
        problems += [r.problem] if r.problem else []
        if r.completed or r.problem:
            final = r
            break
    done = tx.on_cm(final.cm_out[0], t) if final.completed else TpResult()
    return final, done, problems


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=9, max_size=1785))
def test_any_size_arrives_intact_and_is_acknowledged(data: bytes) -> None:
    final, done, problems = _transfer(data)
    assert problems == []
    assert final.completed == (0x1100, data)
    assert done.sent == 0x1100


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=15, max_size=300), st.sampled_from(["drop", "dup", "swap"]),
       st.data())
def test_lost_duplicated_or_reordered_packets_never_deliver_wrong_data(
        data: bytes, mangle: str, draw: st.DataObject) -> None:
    packets = -(-len(data) // 7)
    at = draw.draw(st.integers(0, packets - 2))
    final, _done, problems = _transfer(data, mangle, at)
    if final.completed is not None:
        assert final.completed == (0x1100, data)
    else:
        assert problems, "a broken stream must be reported"


def test_receiver_times_out_between_packets() -> None:
    rx = TpReceiver()
    rx.on_cm(bytes([0x10, 20, 0, 3, 0xFF, 0, 0x11, 0]), 0.0)
    rx.on_dt(bytes([1]) + b"\x00" * 7, 0.1)
    assert rx.on_time(0.1 + T1_S - 0.01).problem is None
    late = rx.on_time(0.1 + T1_S + 0.01)
    assert late.problem and late.cm_out and late.cm_out[0][0] == 0xFF


def test_sender_times_out_without_cts() -> None:
    tx = TpSender()
    tx.send(0x0200, bytes(49), 0.0)
    assert tx.on_time(T3_S - 0.01).problem is None
    res = tx.on_time(T3_S + 0.01)
    assert res.problem and res.cm_out[0][0] == 0xFF and not tx.busy


def test_inconsistent_rts_is_aborted() -> None:
    res = TpReceiver().on_cm(bytes([0x10, 49, 0, 3, 0xFF, 0, 2, 0]), 0.0)  # 49 B in 3 pkts
    assert res.problem and res.cm_out[0][0] == 0xFF


def _pair() -> tuple[can.BusABC, can.BusABC]:
    channel = f"test-{uuid.uuid4().hex}"
    return (can.Bus(interface="virtual", channel=channel),
            can.Bus(interface="virtual", channel=channel))


def _exchange(sender: GbtLink, receiver: GbtLink, message: object, t: float) -> list[object]:
    sender.send(message, t)  # type: ignore[arg-type]
    got: list[object] = []
    for i in range(20):
        got += receiver.poll(t + i * 0.01)
        sender.poll(t + i * 0.01)
    return got


def test_two_links_exchange_every_message_with_standard_ids(tmp_path: Path) -> None:
    a_bus, b_bus = _pair()
    log_path = tmp_path / "log"
    with a_bus, b_bus, open(log_path, "w") as fh:
        charger = GbtLink(a_bus, Role.CHARGER, log=CandumpWriter(fh, epoch=1000.0))
        bms = GbtLink(b_bus, Role.BMS)
        to_bms = [m.CHM(), m.CRM(True, 7), m.CML(750.0, 200.0, 250.0, 0.0), m.CRO(m.Ready.READY),
                  m.CCS(380.0, 120.5, 3, True), m.CST(frozenset({m.ChargerStopReason.MANUAL})),
                  m.CSD(12, 20.4, 7), m.CEM(frozenset({m.CemTimeout.BCL})),
                  m.CTS((2026, 11, 23, 12, 0, 1))]
        to_charger = [m.BHM(403.2),
                      m.BRM((1, 1, 0), 6, 120.0, 355.2, "SIMU", vin="LSIM0000000000001"),
                      m.BCP(4.2, 250.0, 42.6, 403.2, 55.0, 20.0, 360.0), m.BRO(m.Ready.READY),
                      m.BCL(403.2, 250.0, m.ChargeMode.CONSTANT_CURRENT),
                      m.BCS(370.0, 249.9, 3.9, 1, 40.0, 20), m.BSM(1, 30.0, 1, 28.0, 2),
                      m.BST(frozenset({m.BmsStopReason.SOC_REACHED})),
                      m.BSD(80.0, 3.6, 4.1, 28.0, 31.0), m.BEM(frozenset({m.BemTimeout.CCS}))]
        t = 0.0
        for msg in to_bms:
            assert _exchange(charger, bms, msg, t) == [msg]
            t += 1.0
        for msg in to_charger:
            assert _exchange(bms, charger, msg, t) == [msg]
            t += 1.0
    ids = {ident for _ts, ident, _d in read_candump(log_path)}
    assert {0x1826F456, 0x1801F456, 0x1812F456, 0x181056F4, 0x1CEC56F4, 0x1CEB56F4,
            0x1CECF456} <= ids


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFF), st.binary(max_size=8))
def test_fuzzed_frames_never_raise(pf: int, data: bytes) -> None:
    a_bus, b_bus = _pair()
    with a_bus, b_bus:
        link = GbtLink(b_bus, Role.CHARGER)
        a_bus.send(can.Message(arbitration_id=(6 << 26) | pf << 16 | 0x56 << 8 | 0xF4,
                               data=data, is_extended_id=True))
        for item in link.poll(0.0) + link.poll(2.0):
            assert isinstance(item, LinkProblem | LinkNotice) or \
                type(item).__module__ == m.__name__


@pytest.mark.parametrize(("trace", "role"), [("session-a", Role.CHARGER),
                                             ("session-b", Role.CHARGER),
                                             ("session-b", Role.BMS)])
def test_real_traces_decode_through_the_link(trace: str, role: Role) -> None:
    frames = list(read_candump(TRACES / f"{trace}.candump.log"))
    a_bus, b_bus = _pair()
    decoded: list[object] = []
    with a_bus, b_bus:
        link = GbtLink(b_bus, role)
        link.send = lambda *_a: None  # type: ignore[method-assign]  # listen only
        for i, (_ts, ident, data) in enumerate(frames):
            a_bus.send(can.Message(arbitration_id=ident, data=data, is_extended_id=True))
            decoded += link.poll(i * 0.001)
    problems = [d for d in decoded if isinstance(d, LinkProblem)]
    names = [type(d).__name__ for d in decoded]
    if role is Role.CHARGER and trace == "session-b":
        assert names.count("BCL") == 1461
        assert names.count("BCS") > 250 and names.count("BSM") > 250
        assert next(d for d in decoded if isinstance(d, m.BCS)).soc_pct == 34.0
    notices = [d for d in decoded if isinstance(d, LinkNotice)]
    if role is Role.CHARGER:
        assert notices == [], notices[:3]  # both real cars send clean messages
    if role is Role.BMS and trace == "session-b":
        assert names.count("CCS") == 1461 and "CST" in names
        # That charger leaves CCS's reserved bits at 0 (§7.9 asks for 1): noted, used.
        assert {(n.kind, n.message, n.field) for n in notices} == {("oddity", "CCS", "reserved")}
    if role is Role.BMS and trace == "session-a":
        # Its clock is not BCD (second 0x1A): CTS decodes with no time, and is noted.
        assert {(n.kind, n.message, n.raw.hex()) for n in notices} == \
            {("oddity", "CTS", "1a061414150000")}
        assert all(d.timestamp is None for d in decoded if isinstance(d, m.CTS))
    if trace == "session-a":
        # In this log the BMS keeps aborting its BRM/BCP transfers (TP.Conn_Abort frames)
        # and twice restarts one without aborting it: the link reports each, nothing else.
        aborts = sum(1 for _ts, ident, d in frames if ident == 0x1CEC56F4 and d[0] == 0xFF)
        aborted = [p for p in problems if "peer aborted PGN 0x0" in p.detail]
        restarted = [p for p in problems if "replaced unfinished" in p.detail]
        assert aborts > 0 and len(aborted) == aborts
        assert len(aborted) + len(restarted) == len(problems)
    else:
        assert problems == [], problems[:3]


def test_frames_are_handed_over_as_they_arrive_and_a_dead_reader_is_reported() -> None:
    """rx_notify: a frame on the wire wakes the loop (no poll needed) and the link reads it
    without blocking; a reader that stopped on an error makes the next read fail."""
    import asyncio

    from drivers.gbt27930.rx_notify import NotifiedBus

    async def scenario() -> None:
        channel = f"rx-{uuid.uuid4().hex[:8]}"
        with can.Bus(interface="virtual", channel=channel) as raw, \
                can.Bus(interface="virtual", channel=channel) as car_bus:
            woken = asyncio.Event()
            rx = NotifiedBus(raw, asyncio.get_running_loop(), woken.set)
            try:
                charger = GbtLink(rx, Role.CHARGER)
                assert charger.poll(0.0) == []  # nothing yet, and no blocking
                GbtLink(car_bus, Role.BMS).send(
                    m.BCL(400.0, 120.0, m.ChargeMode.CONSTANT_CURRENT), 0.0)
                await asyncio.wait_for(woken.wait(), 5.0)
                received = charger.poll(0.01)
                assert [type(m).__name__ for m in received] == ["BCL"]
                rx.on_error(can.CanError("bus off"))
                problems = [p for p in charger.poll(0.02) if isinstance(p, LinkProblem)]
                assert problems and problems[0].fatal and "bus off" in problems[0].detail
            finally:
                rx.close()

    asyncio.run(scenario())
