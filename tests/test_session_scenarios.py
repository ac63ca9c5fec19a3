"""The session against the in-process car and module: normal stops, watchdogs, faults."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from agent.core.commands import (
    KickSafetyWatchdog,
    SetContactors,
    SetModuleOutput,
    Transmit,
)
from agent.core.events import (
    FaultsCleared,
    InsulationStatus,
    ModuleLinkLost,
    SafetyInputs,
    SafetyIoLost,
    ShutdownDeadline,
    StopRequested,
    UpstreamLimit,
    VehicleDisconnected,
)
from agent.core.messages import BCL, BCP, CEM, CST, CemTimeout, ChargerFault, ChargerStopReason
from agent.core.states import State
from hil.ev_bms import VehicleConfig
from hil.plant import InProcessPile, commanded_current

ENDED = (State.FINISHED, State.FAULT)


def _pile(start: float = 50.0, target: float = 51.0) -> InProcessPile:
    p = InProcessPile(vehicle=VehicleConfig(start_soc_pct=start, target_soc_pct=target))
    p.plug_in()
    return p


def _charge_for(p: InProcessPile, seconds: float) -> None:
    assert p.run_until(lambda q: q.session.state is State.CHARGING, 30)
    p.run_until(lambda q: False, seconds)
    assert p.session.state is State.CHARGING


def _entered(p: InProcessPile, state: State) -> float:
    return next(t for t, _s, d in p.log.states if d == state.value)


def test_a_short_session_runs_the_whole_sequence() -> None:
    p = _pile()
    assert p.run_until(lambda q: q.session.state in ENDED, 600)
    assert [d for _t, _s, d in p.log.states] == [
        "handshake", "insulation_check", "identification", "parameter_exchange", "precharge",
        "charging", "stopping", "welding_check", "finished"]
    report = p.log.reports[-1]
    assert report.outcome == "finished"
    assert math.isclose(report.energy_kwh, p.bms.battery.energy_in_kwh, rel_tol=0.02)
    assert report.end_soc_pct is not None and report.end_soc_pct >= 51.0


def test_commanded_current_never_exceeds_demand_or_limits() -> None:
    p = _pile()
    demand = {"a": 0.0}

    def spy(m: object) -> object:
        if isinstance(m, BCL):
            demand["a"] = m.current_demand_a
        return m

    p.vehicle_to_charger = spy  # type: ignore[assignment]
    assert p.run_until(lambda q: q.session.state in ENDED, 600)
    decisions = [c for _t, c in p.log.decisions]
    assert max(c.current_a for c in decisions) > 100.0  # it did charge
    for t, amps in commanded_current(p.log):
        assert amps <= p.ratings.max_current_a + 1e-9, t
        assert amps <= p.bms.config.max_charge_current_a + 1e-9, t
    # Outside energy transfer only the small pre-charge / cable-check currents appear.
    charging_from = _entered(p, State.CHARGING)
    assert all(a <= 20.0 for t, a in commanded_current(p.log) if t < charging_from)


def test_bcl_silence_faults_within_one_second_and_sends_cem() -> None:
    p = _pile()
    _charge_for(p, 5.0)
    silent_from = p.t
    p.vehicle_to_charger = lambda m: None if isinstance(m, BCL) else m  # type: ignore[assignment]
    assert p.run_until(lambda q: q.session.state is State.FAULT, 3.0)
    assert _entered(p, State.FAULT) - silent_from <= 1.0 + 0.05 + 0.011
    after = [c for t, c in p.log.to_vehicle if t >= _entered(p, State.FAULT)]
    assert any(isinstance(m, CEM) and CemTimeout.BCL in m.timeouts for m in after)
    last_cmd = [a for t, a in commanded_current(p.log) if t >= _entered(p, State.FAULT)]
    assert last_cmd and all(a == 0.0 for a in last_cmd)


def test_module_silence_is_an_emergency_stop() -> None:
    p = _pile()
    _charge_for(p, 3.0)
    p.module_silent = True
    assert p.run_until(lambda q: q.session.state is State.FAULT, 1.5)
    assert p.session.data.fault_emergency
    opened = [t for t, c in p.log.module_commands if c == SetContactors(False)]
    assert opened and opened[-1] == _entered(p, State.FAULT)


def test_operator_stop_ramps_down_and_opens_only_at_5_amps() -> None:
    p = _pile()
    _charge_for(p, 5.0)
    p.feed(StopRequested(p.t, "operator"))
    assert p.session.state is State.STOPPING
    stop_t = p.t
    open_current: list[float] = []
    orig = p._execute

    def watch(c: object) -> None:
        if c == SetContactors(False):
            open_current.append(abs(p.module.current_a))
        orig(c)  # type: ignore[arg-type]

    p._execute = watch  # type: ignore[method-assign]
    assert p.run_until(lambda q: q.session.state in ENDED, 20)
    assert p.session.state is State.FINISHED
    assert open_current and open_current[0] <= 5.0
    cst = [m for t, m in p.log.to_vehicle if isinstance(m, CST) and t >= stop_t]
    assert cst and ChargerStopReason.MANUAL in cst[0].reasons
    after = [a for t, a in commanded_current(p.log) if t >= stop_t]
    assert all(b <= a for a, b in itertools.pairwise(after))  # never rises (I14)


def test_battery_voltage_that_differs_from_bcp_by_over_5_percent_is_refused() -> None:
    p = InProcessPile(vehicle=VehicleConfig(start_soc_pct=50, target_soc_pct=51))

    def lie(m: object) -> object:
        if isinstance(m, BCP):
            return BCP(m.max_cell_voltage_v, m.max_charge_current_a, m.nominal_energy_kwh,
                       m.max_total_voltage_v, m.max_temperature_c, m.soc_pct,
                       round(m.battery_voltage_v * 1.08, 1))
        return m

    p.vehicle_to_charger = lie  # type: ignore[assignment]
    p.plug_in()
    assert p.run_until(lambda q: q.session.state in ENDED, 30)
    assert p.session.state is State.FAULT
    assert "5 %" in p.session.data.outcome_reason
    assert not any(c == SetContactors(True) for t, c in p.log.module_commands
                   if t >= _entered(p, State.PRECHARGE))


def test_a_reading_sampled_before_precharge_began_is_not_taken_for_the_battery() -> None:
    """The CI failure of the real-time run: the bus owner's poll, read while the gun was still
    bleeding down after the insulation check, reached the core in the step where BRO(0xAA)
    started precharge. Freshness goes by when a reading was sampled, not when it arrived."""
    p = _pile()
    assert p.run_until(lambda q: q.session.state is State.PARAMETER_EXCHANGE, 30)
    for _ in range(3000):
        if p.session.state is not State.PARAMETER_EXCHANGE:
            break
        held = p.session.plant.status
        assert held is not None
        late = replace(held, t=round(p.t - 0.001, 6), gun_voltage_v=28.2,
                       output_voltage_v=28.2)
        p.step([late])
    assert p.session.state is State.PRECHARGE
    assert p.run_until(lambda q: q.session.state is not State.PRECHARGE, 30)
    assert p.session.state is State.CHARGING, p.session.data.outcome_reason


def test_an_imd_result_read_before_the_request_does_not_pass_the_insulation_check() -> None:
    """A poll started before StartInsulationTest was written can still carry the previous
    session's valid result; only a reading sampled after the request counts (I4)."""
    p = _pile()
    assert p.run_until(lambda q: q.session.data.phase == "measure", 30)
    asked = p.session.data.insulation_requested_at
    assert asked is not None
    p.step([InsulationStatus(asked - 0.001, resistance_ohm=10e6, measurement_done=True)])
    assert p.session.state is State.INSULATION_CHECK
    assert p.session.data.phase == "measure"
    assert p.run_until(lambda q: q.session.state is not State.INSULATION_CHECK, 30)
    assert p.session.state is State.IDENTIFICATION
    passed = _entered(p, State.IDENTIFICATION)
    assert passed - asked >= p.module.params.insulation_delay_s


def test_insulation_fault_latches_until_cleared() -> None:
    p = InProcessPile(vehicle=VehicleConfig(start_soc_pct=50, target_soc_pct=51))
    p.module.insulation_ohm = 50.0 * 403.2  # 50 ohm/V at the test voltage: <= 100 ohm/V
    p.plug_in()
    assert p.run_until(lambda q: q.session.state is State.FAULT, 30)
    assert "insulation" in p.session.data.outcome_reason
    assert "insulation" in p.session.safety.latched
    p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False))
    from agent.core.events import VehicleDisconnected

    p.feed(VehicleDisconnected(p.t))
    assert p.session.state is State.FAULT  # latched: unplugging does not reset it (I12)
    p.feed(FaultsCleared(p.t, "service"))
    assert p.session.state is State.IDLE


def test_welded_contactor_is_found_after_the_stop() -> None:
    p = _pile()
    _charge_for(p, 2.0)
    p.module.welded_contactor = True
    p.bms.request_stop()
    assert p.run_until(lambda q: q.session.state in ENDED, 30)
    assert p.session.state is State.FAULT
    # Either the agent's own adhesion check or the module's feedback mismatch finds it.
    assert {"welding", "module_contactor_mismatch"} & set(p.session.safety.latched)


def test_emergency_stop_opens_contactors_at_once_and_latches() -> None:
    p = _pile()
    _charge_for(p, 3.0)
    commands = p.feed(SafetyInputs(p.t, emergency_stop=True, door_open=False))
    assert p.session.state is State.FAULT
    assert SetContactors(False) in commands
    assert SetModuleOutput(False, 0.0, 0.0) in commands
    sent = [c.message for c in commands if isinstance(c, Transmit)]
    p.step()
    sent += [m for t, m in p.log.to_vehicle if t >= p.t - 0.02]
    assert any(isinstance(m, CST) and ChargerFault.EMERGENCY_STOP in m.faults for m in sent)
    p.feed(FaultsCleared(p.t, "service"))
    assert p.session.state is State.FAULT  # still pressed: not clearable
    p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False))
    p.feed(FaultsCleared(p.t, "service"))
    assert p.session.state is State.IDLE


def test_a_bms_pause_holds_the_current_at_zero_until_it_resumes() -> None:
    """GB/T 27930-2015 BSM: charge not permitted without an abnormal flag is a pause."""
    p = _pile(start=40.0, target=60.0)
    _charge_for(p, 3.0)
    p.bms.charge_permitted = False
    paused_from = p.t
    p.run_until(lambda q: False, 2.0)
    assert p.session.state is State.CHARGING
    after = [a for t, a in commanded_current(p.log) if t > paused_from + 0.3]
    assert after == [] or max(after) == 0.0  # one BSM period (250 ms), then held at 0
    assert p.session.act.current_a == 0.0 and abs(p.module.current_a) <= 1.0
    p.bms.charge_permitted = True
    p.run_until(lambda q: False, 3.0)
    assert p.session.act.current_a > 50.0


def test_an_unlocked_gun_is_never_energised() -> None:
    p = _pile()
    p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False, gun_locked=False))
    assert p.run_until(lambda q: q.session.state is State.FAULT, 30)
    assert "gun not locked" in p.session.data.outcome_reason
    assert not any(c == SetContactors(True) for _t, c in p.log.module_commands)


def test_a_lock_that_opens_while_charging_stops_at_5_amps_then_opens() -> None:
    p = _pile()
    _charge_for(p, 3.0)
    assert p.module.current_a > 50.0
    commands = p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False,
                                   gun_locked=False))
    assert p.session.state is State.FAULT
    assert SetModuleOutput(False, 0.0, 0.0) in commands
    assert SetContactors(False) not in commands  # not under load: an error stop
    unlocked_at = p.t
    # Service cannot clear the fault while the shutdown runs: IDLE never holds K1/K2 closed.
    refused = p.feed(FaultsCleared(p.t, "service"))
    assert p.session.state is State.FAULT and p.session.act.contactors_closed
    assert any(getattr(c, "kind", "") == "faults_not_cleared" for c in refused)
    assert p.run_until(lambda q: not q.session.act.contactors_closed, 2.0)
    opened = next(t for t, c in p.log.module_commands
                  if t >= unlocked_at and c == SetContactors(False))
    assert opened - unlocked_at <= 2.0  # IEC 61851-23 AA.3.4
    assert abs(p.module.current_a) <= 5.0
    p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False, gun_locked=True))
    p.feed(FaultsCleared(p.t, "service"))
    assert p.session.state is State.IDLE


@pytest.mark.parametrize("lost", ["module", "safety_io", "door"])
def test_losing_the_module_or_safety_bus_during_an_error_shutdown_opens_at_once(
        lost: str) -> None:
    """Found by the stateful suite: an error stop ramps down with K1/K2 closed; if the
    module link, the safety bus or the door goes in that time, nothing confirms the ramp
    any more, so K1/K2 open at once instead of at the 10 s stop budget."""
    p = _pile()
    _charge_for(p, 3.0)
    # A pile with its safety bus configured (the in-process pile has no I/O board to poll).
    p.session.require_safety_io = lost == "safety_io"
    p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False, gun_locked=False))
    assert p.session.state is State.FAULT and p.session.act.contactors_closed
    event = {"module": ModuleLinkLost(p.t, "no answer"),
             "safety_io": SafetyIoLost(p.t, "no answer"),
             "door": SafetyInputs(p.t, emergency_stop=False, door_open=True,
                                  gun_locked=False)}[lost]
    commands = p.feed(event)
    assert SetContactors(False) in commands
    assert not p.session.act.contactors_closed


def test_unplugging_during_a_shutdown_opens_the_contactors_before_idle() -> None:
    p = _pile()
    _charge_for(p, 3.0)
    p.feed(SafetyInputs(p.t, emergency_stop=False, door_open=False, gun_locked=False))
    assert p.session.state is State.FAULT and p.session.act.contactors_closed
    commands = p.feed(VehicleDisconnected(p.t))
    assert p.session.state is State.IDLE
    assert SetContactors(False) in commands
    assert not p.session.act.contactors_closed


@pytest.mark.parametrize("bad", [math.nan, math.inf, 10_000.0])
def test_upstream_limits_apply_and_bad_ones_are_rejected(bad: float) -> None:
    p = _pile(start=40.0, target=60.0)
    _charge_for(p, 4.0)
    p.feed(UpstreamLimit(p.t, "ems", 50.0, expires_at=p.t + 5.0))
    p.step()
    assert all(a <= 50.0 for t, a in commanded_current(p.log) if t >= p.t - 0.011)
    p.run_until(lambda q: False, 1.5)
    cmds = p.feed(UpstreamLimit(p.t, "ems", bad, expires_at=p.t + 5.0))
    assert any(getattr(c, "kind", "") == "setpoint_rejected" for c in cmds)
    p.run_until(lambda q: False, 1.0)
    assert p.session.act.current_a <= 50.0
    p.run_until(lambda q: False, 4.0)  # expired: back to the fallback (no upstream limit)
    assert p.session.act.current_a > 50.0


def test_an_internal_error_fails_safe_and_stops_the_heartbeat() -> None:
    p = _pile()
    _charge_for(p, 2.0)

    def boom() -> None:
        raise RuntimeError("injected")

    p.session._control = boom  # type: ignore[method-assign]
    commands = p.feed(StopRequested(p.t))  # any event; the tick below hits the bug
    p.step()
    commands = [c for t, c in p.log.all_commands if t >= p.t - 0.011]
    assert SetModuleOutput(False, 0.0, 0.0) in commands
    assert SetContactors(False) in commands
    assert p.session.state is State.FAULT
    p.run_until(lambda q: False, 1.0)
    kicks = [c for t, c in p.log.all_commands
             if isinstance(c, KickSafetyWatchdog) and t > p.t - 0.9]
    assert kicks == []  # the safety controller's watchdog will trip (I15)


def _kicks_after(p: InProcessPile, t0: float) -> list[float]:
    return [t for t, c in p.log.all_commands if isinstance(c, KickSafetyWatchdog) and t > t0]


@pytest.mark.parametrize("fault", ["bcl-silence", "module-link-lost"])
def test_a_module_that_ignores_the_shutdown_is_handed_to_the_safety_controller(
        fault: str) -> None:
    """The module takes no write after the fault (it refuses or ignores them, or its link is
    gone): no reading shows the current on its way to <= 5 A, so the heartbeat stops and the
    safety controller's own 500 ms trip opens K1/K2 within GB 44263-2024 §8.2.1's 2 s (3 s
    above 200 A). The fault is latched; a service clear resumes the heartbeat."""
    p = _pile(20.0, 90.0)
    _charge_for(p, 3.0)
    amps = abs(p.module.current_a)
    assert amps > 50.0
    p.module.accept_write = lambda *_a, **_k: None  # type: ignore[method-assign]
    if fault == "bcl-silence":
        p.vehicle_to_charger = lambda m: None if isinstance(m, BCL) else m  # an error stop
    else:
        p.module_silent = True  # and nothing can be read either
    assert p.run_until(lambda q: q.session.state is State.FAULT, 3.0)
    t_fault = p.t
    deadline = 3.0 if amps > 200.0 else 2.0
    p.run_until(lambda q: False, deadline + 1.0)
    notices = [c for _t, c in p.log.all_commands
               if getattr(c, "kind", "") == "safe_state_unconfirmed"]
    assert len(notices) == 1, f"{len(notices)} safe_state_unconfirmed notices, one expected"
    notice = notices[0]
    last_kick = max(_kicks_after(p, 0.0))
    # The board trips 500 ms after the last beat: inside the deadline.
    assert last_kick + 0.5 <= t_fault + deadline, (last_kick, t_fault, notice)
    assert _kicks_after(p, last_kick) == []
    assert abs(p.module.current_a) > 5.0  # the module still drives: only the board can act
    assert "safe_state_unconfirmed" in p.session.safety.latched, p.session.safety.latched
    # A service clear resumes the heartbeat.
    t_clear = p.t
    p.feed(FaultsCleared(p.t, "service"))
    p.run_until(lambda q: False, 0.5)
    assert _kicks_after(p, t_clear), "the heartbeat did not resume after the service clear"


def test_a_module_that_obeys_the_shutdown_keeps_the_heartbeat() -> None:
    # The same error stop with a module that takes the 0 A write: <= 5 A well inside the
    # line, and the heartbeat never stops.
    p = _pile(20.0, 90.0)
    _charge_for(p, 3.0)
    p.vehicle_to_charger = lambda m: None if isinstance(m, BCL) else m
    assert p.run_until(lambda q: q.session.state is State.FAULT, 3.0)
    t_fault = p.t
    p.run_until(lambda q: False, 4.0)
    assert not [c for _t, c in p.log.all_commands
                if getattr(c, "kind", "") == "safe_state_unconfirmed"]
    gaps = [b - a for a, b in itertools.pairwise(_kicks_after(p, t_fault - 0.2))]
    assert gaps and max(gaps) <= 0.11, gaps


def test_module_fault_bits_match_the_register_map() -> None:
    from agent.core.module_faults import MODULE_FAULT_BITS
    from drivers.power_module.regmap import load_register_map

    reg = load_register_map()["fault_word"]
    for n, bit in MODULE_FAULT_BITS.items():
        assert reg.bit(bit.name) == 1 << n


def test_module_over_temperature_stops_the_session() -> None:
    p = _pile()
    _charge_for(p, 2.0)
    p.module.force_over_temperature = True
    assert p.run_until(lambda q: q.session.state is State.FAULT, 0.5)
    assert "over_temperature" in p.session.data.outcome_reason


def test_the_session_names_its_next_deadline_and_sends_on_its_grid() -> None:
    from agent.core.commands import Transmit
    from agent.core.events import Tick, VehicleConnected
    from agent.core.ratings import GunRatings
    from agent.core.session import GunSession

    s = GunSession(GunRatings())
    s.handle(VehicleConnected(0.0))
    assert any(isinstance(c, Transmit) for c in s.handle(Tick(0.0)))  # CHM, at once
    # The heartbeat (100 ms) comes first; CHM (250 ms) is due on its grid, not before.
    assert s.next_deadline() == pytest.approx(0.1, abs=1e-4)
    for t in (0.1, 0.2):
        s.handle(Tick(t))
    assert s.next_deadline() == pytest.approx(0.25)
    assert not any(isinstance(c, Transmit) for c in s.handle(Tick(0.249)))
    assert any(isinstance(c, Transmit) for c in s.handle(Tick(0.25)))
    # A late tick sends at once and keeps the grid: next at 0.75, not 0.78.
    assert any(isinstance(c, Transmit) for c in s.handle(Tick(0.53)))
    for t in (0.6, 0.7, 0.74):
        assert not any(isinstance(c, Transmit) for c in s.handle(Tick(t)))
    assert s.next_deadline() == pytest.approx(0.75)
    assert any(isinstance(c, Transmit) for c in s.handle(Tick(0.75)))


def test_the_shutdown_deadline_ends_an_energised_session_as_an_emergency() -> None:
    """The agent's stop budget spent while the session still delivers: output off and K1/K2
    open at once, reported as a fault that names the agent's stop."""
    p = _pile(50.0, 90.0)
    _charge_for(p, 2.0)
    commands = p.feed(ShutdownDeadline(p.t, "agent stopped (SIGTERM)"))
    assert SetContactors(closed=False) in commands
    assert any(isinstance(c, SetModuleOutput) and not c.enabled for c in commands)
    report = p.log.reports[-1]
    assert report.outcome == "fault" and report.reason.startswith("agent stopped (SIGTERM)")


def test_the_shutdown_deadline_after_the_plant_is_safe_is_an_interruption() -> None:
    """Stopped in order up to the welding check (output off, K1/K2 open) and only the
    vehicle's statistics missing: the session is interrupted, not faulted."""
    p = _pile(50.0, 90.0)
    _charge_for(p, 2.0)
    p.feed(StopRequested(p.t, "agent stopped (SIGTERM)"))
    assert p.run_until(lambda q: q.session.state is State.WELDING_CHECK, 15)
    p.bms.silence(p.t)  # the vehicle's BSD never comes
    p.feed(ShutdownDeadline(p.t, "agent stopped (SIGTERM)"))
    report = p.log.reports[-1]
    assert report.outcome == "interrupted", report
    assert report.reason.startswith("agent stopped (SIGTERM)"), report
    assert p.session.state is State.FAULT and not p.session.act.contactors_closed


def test_the_shutdown_deadline_leaves_a_finished_session_as_it_was() -> None:
    p = _pile()
    assert p.run_until(lambda q: q.session.state is State.FINISHED, 600)
    reports = len(p.log.reports)
    assert p.feed(ShutdownDeadline(p.t, "agent stopped (SIGTERM)")) == []
    assert len(p.log.reports) == reports and p.session.state is State.FINISHED
