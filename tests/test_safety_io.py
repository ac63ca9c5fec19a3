"""The safety bus: PT1000 conversion, decoders, and the driver against the simulator
over Modbus TCP on loopback and RTU over a pty null-modem."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.commands import KickSafetyWatchdog, Notice, ResetSafetyTrip, StartInsulationTest
from agent.core.events import (
    FaultsCleared,
    InsulationStatus,
    SafetyInputs,
    SafetyIoLost,
    TemperatureReading,
)
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from drivers.power_module.link import RtuTarget, TcpTarget
from drivers.safety_io.codec import decode_imd, decode_io, load_imd_map, load_io_map
from drivers.safety_io.link import SafetyBusOwner
from drivers.safety_io.pt1000 import MAX_OHM, MIN_OHM, celsius_from_ohm, ohm_from_celsius
from hil.ev_bms import VehicleConfig
from hil.module_sim import ModuleSim
from hil.plant import InProcessPile
from hil.safety_io_sim import SafetyIoSim
from tests.test_module_link import PtyNullModem

IO_MAP, IMD_MAP = load_io_map(), load_imd_map()
# The oracle's own number: one re-arm of a heartbeat trip per 5 s (the project's rule).
REARM_RETRY_S = 5.0


@given(st.floats(-100, 850))
def test_pt1000_round_trip(celsius: float) -> None:
    assert math.isclose(celsius_from_ohm(ohm_from_celsius(celsius)), celsius, abs_tol=1e-6)


def test_pt1000_reference_points() -> None:
    assert ohm_from_celsius(0.0) == 1000.0
    assert math.isclose(ohm_from_celsius(100.0), 1385.055, abs_tol=1e-3)  # IEC 60751 table
    assert math.isnan(celsius_from_ohm(MIN_OHM - 1)) and math.isnan(celsius_from_ohm(MAX_OHM + 1))


@settings(max_examples=300)
@given(st.lists(st.integers(-(2**18), 2**18), min_size=len(IO_MAP.span),
                max_size=len(IO_MAP.span)))
def test_io_decoder_never_raises_and_fails_safe(words: list[int]) -> None:
    events = decode_io(IO_MAP, 1.0, words)
    inputs = [e for e in events if isinstance(e, SafetyInputs)]
    assert len(inputs) == 1
    temps = [e for e in events if isinstance(e, TemperatureReading)]
    assert len(temps) == 3
    if any(not 0 <= w <= 0xFFFF for w in words[11:12]):
        assert inputs[0].emergency_stop and inputs[0].safety_relay_tripped  # unknown = unsafe


@settings(max_examples=300)
@given(st.lists(st.integers(-(2**18), 2**18), min_size=len(IMD_MAP.span),
                max_size=len(IMD_MAP.span)))
def test_imd_decoder_never_raises(words: list[int]) -> None:
    assert isinstance(decode_imd(IMD_MAP, 1.0, words), InsulationStatus)


async def _cycle(owner: SafetyBusOwner, sim: SafetyIoSim, t: float, seconds: float,
                 kick: bool = True) -> list[object]:
    events: list[object] = []
    for i in range(int(seconds / 0.1)):
        if kick:
            owner.submit(KickSafetyWatchdog(int(t * 10 + i) & 0xFFFF))
        for _ in range(10):
            sim.step(0.01, 100.0)
        events += await owner.service(t + i * 0.1)
    return events


def test_driver_against_the_simulator_over_tcp() -> None:
    async def body() -> None:
        module = ModuleSim()
        sim = SafetyIoSim(module)
        server, port = await sim.start_tcp()
        owner = SafetyBusOwner(TcpTarget("127.0.0.1", port))
        try:
            sim.force_connector_c = 85.0
            events = await _cycle(owner, sim, 0.0, 0.5)
            temps = {e.sensor: e.temperature_c for e in events if isinstance(e, TemperatureReading)}
            assert math.isclose(temps["connector_dc_plus"], 85.0, abs_tol=0.1)
            inputs = [e for e in events if isinstance(e, SafetyInputs)][-1]
            assert not inputs.emergency_stop and not inputs.door_open
            assert not inputs.safety_relay_tripped
            sim.estop_pressed, sim.door_open = True, True
            inputs = [e for e in await _cycle(owner, sim, 1.0, 0.2)
                      if isinstance(e, SafetyInputs)][-1]
            assert inputs.emergency_stop and inputs.door_open and inputs.safety_relay_tripped
            sim.estop_pressed = sim.door_open = False
            sim.insulation_ohm = 250_000.0
            owner.submit(StartInsulationTest(400.0))
            events = await _cycle(owner, sim, 2.0, 1.5)
            done = [e for e in events if isinstance(e, InsulationStatus) and e.measurement_done]
            assert done and done[-1].resistance_ohm == 250_000.0
            sim.silent = True
            assert [type(e) for e in await owner.service(4.0)] == [SafetyIoLost]
        finally:
            await owner.close()
            await server.stop()

    asyncio.run(body())


def test_heartbeat_watchdog_trips_the_relay_and_opens_k1_k2() -> None:
    async def body() -> None:
        module = ModuleSim()
        module._put("contactor_command", 1)
        sim = SafetyIoSim(module)
        server, port = await sim.start_tcp()
        owner = SafetyBusOwner(TcpTarget("127.0.0.1", port))
        try:
            await _cycle(owner, sim, 0.0, 1.0)  # kicks keep it alive
            assert not sim.tripped and module._get("contactor_command") == 1
            await _cycle(owner, sim, 1.0, 0.4, kick=False)
            assert not sim.tripped  # 400 ms < the 500 ms contract
            events = await _cycle(owner, sim, 1.4, 0.3, kick=False)
            assert sim.tripped and module._get("contactor_command") == 0
            inputs = [e for e in events if isinstance(e, SafetyInputs)]
            assert inputs[-1].safety_relay_tripped and inputs[-1].trip_by_heartbeat
            # The living agent re-arms it (ResetSafetyTrip writes trip_reset).
            owner.submit(ResetSafetyTrip("test"))
            events = await _cycle(owner, sim, 1.7, 0.2)
            last = [e for e in events if isinstance(e, SafetyInputs)][-1]
            assert not sim.tripped and not last.safety_relay_tripped
            # An E-stop trip is not the heartbeat's, and the board refuses a re-arm while
            # the E-stop is pressed.
            sim.estop_pressed = True
            events = await _cycle(owner, sim, 1.9, 0.2)
            owner.submit(ResetSafetyTrip("test"))
            events += await _cycle(owner, sim, 2.1, 0.2)
            last = [e for e in events if isinstance(e, SafetyInputs)][-1]
            assert sim.tripped and last.safety_relay_tripped and not last.trip_by_heartbeat
        finally:
            await owner.close()
            await server.stop()

    asyncio.run(body())


def _tripped(t: float, *, by_heartbeat: bool, estop: bool = False) -> SafetyInputs:
    return SafetyInputs(t, emergency_stop=estop, door_open=False, gun_locked=True,
                        safety_relay_tripped=True, trip_by_heartbeat=by_heartbeat)


def test_the_core_re_arms_a_heartbeat_trip_only_while_nothing_is_at_stake() -> None:
    """A heartbeat trip found with no session (a previous process died, or this one hung)
    is re-armed at most once per 5 s and is no fault; an E-stop trip, or a
    heartbeat trip with the E-stop pressed, is a latched fault and is not re-armed."""
    s = GunSession(GunRatings(), require_safety_io=True)
    out = s.handle(_tripped(0.0, by_heartbeat=True))
    assert [c for c in out if isinstance(c, ResetSafetyTrip)]
    assert any(isinstance(c, Notice) and c.kind == "safety_trip_rearmed" for c in out)
    assert s.state is State.IDLE and not s.safety.latched
    period = REARM_RETRY_S
    assert not [c for c in s.handle(_tripped(period - 0.1, by_heartbeat=True))
                if isinstance(c, ResetSafetyTrip)]
    assert [c for c in s.handle(_tripped(period + 0.1, by_heartbeat=True))
            if isinstance(c, ResetSafetyTrip)]
    for inputs in (_tripped(20.0, by_heartbeat=False),
                   _tripped(20.0, by_heartbeat=True, estop=True)):
        s = GunSession(GunRatings(), require_safety_io=True)
        out = s.handle(inputs)
        assert not [c for c in out if isinstance(c, ResetSafetyTrip)], inputs
        assert s.safety.latched and not s.is_start_allowed(), inputs
        # A reset by the central system or a technician asks the board to re-arm.
        cleared = s.handle(FaultsCleared(21.0, "central system: Reset"))
        assert [c for c in cleared if isinstance(c, ResetSafetyTrip)], inputs


def test_rtu_over_a_pty_null_modem() -> None:
    async def body() -> None:
        modem = PtyNullModem()
        modem.start()
        sim = SafetyIoSim()
        # A pty cannot set parity, so 8N1 here; a real isoCHA-class bus runs 19200 8E1.
        server = await sim.start_rtu(modem.paths[0], baudrate=19200, parity="N")
        owner = SafetyBusOwner(RtuTarget(modem.paths[1], baudrate=19200, parity="N"))
        try:
            events = await _cycle(owner, sim, 0.0, 0.5)
            assert not [e for e in events if isinstance(e, SafetyIoLost)], events[:2]
            assert any(isinstance(e, SafetyInputs) for e in events)
        finally:
            await owner.close()
            await server.stop()
            modem.close()

    asyncio.run(body())


def test_a_heartbeat_trip_during_a_session_is_a_fault_and_is_not_re_armed() -> None:
    """The agent hung past the board's watchdog while it delivered: the board cut K1/K2,
    and the session ends in an emergency; the trip stays until a reset (no re-arm while
    something was at stake)."""
    p = InProcessPile(vehicle=VehicleConfig(start_soc_pct=40.0, target_soc_pct=90.0))
    p.plug_in()
    assert p.run_until(lambda q: q.session.state is State.CHARGING, 30)
    out = p.feed(_tripped(p.t, by_heartbeat=True))
    assert not [c for c in out if isinstance(c, ResetSafetyTrip)]
    assert p.session.state is State.FAULT and "safety_relay" in p.session.safety.latched
    later = p.feed(_tripped(p.t + 10.0, by_heartbeat=True))
    assert not [c for c in later if isinstance(c, ResetSafetyTrip)]
