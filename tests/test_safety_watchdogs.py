"""Each watchdog and interlock on its own: one thing breaks, and the session must reach
FAULT for that reason by its deadline. The world and every invariant check are the
stateful suite's (tests/safety_world.py); hypothesis draws the car, the module's delivery
lag and the moment things break. The stateful suite meets these faults mixed with others,
and only sometimes; here each one is met in every example, so disabling any one watchdog
fails a test (python -m tests.mutation_check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.states import State
from tests.safety_model import BSM_ALARMS
from tests.safety_world import DATABASE, MUTE, PHASES, TICK, SafetyWorld

honest_cars = st.fixed_dictionaries({
    "bhm": st.floats(450, 800), "bcp_max_a": st.floats(60, 400),
    "bcp_max_v": st.floats(450, 800), "battery_v": st.floats(300, 440),
    "demand": st.floats(60, 400), "lie": st.just(1.0), "grid_kw": st.just(float("inf")),
    "demand_v": st.floats(0.8, 1.0),
})
SETTINGS = settings(max_examples=10, deadline=None, database=DATABASE, phases=PHASES)


def _world(car: dict[str, Any], lag: int, mute: str = "", require_io: bool = False) -> SafetyWorld:
    w = SafetyWorld()
    w.delivery_lag_ticks = lag
    w.plug(**car, mute=mute, require_io=require_io)
    return w


def _run_until(w: SafetyWorld, done: Callable[[SafetyWorld], bool], seconds: float) -> bool:
    for _ in range(round(seconds / TICK)):
        if done(w):
            return True
        w.tick()
    return done(w)


def _faulted_for(w: SafetyWorld, why: str) -> None:
    assert w.s.state is State.FAULT, f"still in {w.s.state.value}"
    assert why in w.s.data.outcome_reason, w.s.data.outcome_reason


@pytest.mark.parametrize("mute", MUTE)
@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9))
def test_every_awaited_vehicle_message_has_a_deadline(mute: str, car: dict[str, Any],
                                                      lag: int) -> None:
    """GB/T 27930-2015 §8: BHM, BRM, BCP, BRO 5 s; BRO(0xAA) 60 s; BCL 1 s; BCS 5 s."""
    w = _world(car, lag, mute=mute)
    _run_until(w, lambda q: q.s.state is State.FAULT, 75.0)  # the world checks each deadline
    _faulted_for(w, f"{mute} timeout")


C, H = State.CHARGING, State.HANDSHAKE
# name: state to break in, the world's disturbances (tests/safety_world.py), seconds the
# session may take to reach FAULT, what the fault says, whether the pile needs its I/O board
BREAKS: dict[str, tuple[State, tuple[str, ...], float, str, bool]] = {
    "module link lost": (C, ("module_silent",), 0.2, "link lost", True),
    "module bus owner hangs": (C, ("module_frozen",), 1.2, "power module silent", True),
    "safety I/O silent": (C, ("io_silent",), 1.2, "safety I/O silent", True),
    "safety I/O lost": (C, ("io_lost",), 0.2, "safety I/O lost", True),
    "connector sensors silent": (C, ("io_silent",), 2.2, "no reading", False),
    "contactor does not close": (H, ("contactor_stuck_open",), 2.0, "did not close", True),
    "contactor welded": (C, ("welded", "operator_stop"), 4.0, "welded", True),
    "current ignores the stop": (C, ("current_stuck", "operator_stop"), 10.5,
                                 "did not fall to 5 A", True),
    "IMD never answers": (H, ("imd_dead",), 25.5, "insulation check not done", True),
    "precharge gap never met": (H, ("voltage_offset",), 62.0, "precharge not done", True),
    "insulation 50 ohm/V": (H, ("insulation_low",), 5.0, "insulation fault", True),
    "emergency stop": (C, ("estop",), 0.1, "emergency stop", True),
    "door opened": (C, ("door",), 0.1, "door open", True),
    "gun lock opens": (C, ("gun_unlocked",), 0.1, "gun lock", True),
    "connector trips": (C, ("overheat",), 0.2, "trip", True),
    "connector sensor open": (C, ("sensor_open",), 0.2, "ohm", True),
    "gun unlocked before precharge closes": (H, ("gun_unlocked_in_precharge",), 30.0,
                                             "gun not locked", True),
    "precharge output above the battery": (H, ("voltage_offset_up",), 62.0,
                                           "precharge not done", True),
    "output never reaches the test voltage": (H, ("output_weak",), 25.5,
                                              "insulation check not done", True),
    "K1 welded alone": (C, ("welded_k1", "operator_stop"), 4.0, "welded", True),
    "K2 welded alone": (C, ("welded_k2", "operator_stop"), 4.0, "welded", True),
    "insulation drops while charging": (C, ("insulation_drops",), 1.2,
                                        "insulation fault while charging", True),
}


@pytest.mark.parametrize("name", BREAKS)
@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), after=st.floats(0.0, 2.0))
def test_each_plant_failure_ends_in_fault_by_its_deadline(name: str, car: dict[str, Any],
                                                          lag: int, after: float) -> None:
    state, disturbances, seconds, why, require_io = BREAKS[name]
    w = _world(car, lag, require_io=require_io)
    assert _run_until(w, lambda q: q.s.state is state, 30.0), f"never reached {state.value}"
    if state is State.CHARGING:
        assert _run_until(w, lambda q: q.plant.current_a > 20.0, 10.0), "no current flows"
    _run_until(w, lambda q: False, after if state is State.CHARGING else 0.0)
    assert w.s.state is state
    for kind in disturbances:
        w.disturb(kind)
    _run_until(w, lambda q: q.s.state is State.FAULT, seconds)
    _faulted_for(w, why)


@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), limit_a=st.floats(5, 40), ttl=st.floats(2, 10))
def test_an_expired_upstream_limit_gives_way_to_the_fallback(car: dict[str, Any], lag: int,
                                                             limit_a: float, ttl: float) -> None:
    """OCPP 2.1: a setpoint binds until it expires; after that the fallback (here none for
    charging) applies. The world checks that `upstream` never binds past expiry."""
    w = _world(car, lag)
    assert _run_until(w, lambda q: q.s.state is State.CHARGING, 30.0)
    w.upstream_setpoint(limit_a, ttl, 0.0)
    _run_until(w, lambda q: False, ttl - 0.1)
    assert w.s.state is State.CHARGING
    assert w.plant.set_a <= limit_a + 1e-6
    _run_until(w, lambda q: False, 1.6)  # expired 0.1 s in; then 100 A/s up-ramp
    assert w.s.state is State.CHARGING
    assert w.plant.set_a > limit_a + 5.0, "the expired limit still holds the current down"


@pytest.mark.parametrize("alarm", sorted(BSM_ALARMS))
@pytest.mark.parametrize("bits", [0b01, 0b10, 0b11], ids=["01", "10", "11"])
@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), after=st.floats(0.0, 2.0))
def test_every_bsm_alarm_stops_the_charge_in_every_encoding(alarm: str, bits: int,
                                                            car: dict[str, Any], lag: int,
                                                            after: float) -> None:
    """GB/T 27930-2015 BSM (SPN 3090-3095): any abnormal flag stops charging; 10 is
    'untrusted' and 11 is not defined: neither is normal."""
    w = _world(car, lag)
    assert _run_until(w, lambda q: q.s.state is State.CHARGING, 30.0)
    _run_until(w, lambda q: False, after)
    w.bsm_alarm(alarm, bits)  # the world asserts the stop on the very BSM that carries it
    assert _run_until(w, lambda q: q.s.state is not State.CHARGING, 0.3)
    assert w.s.state in (State.STOPPING, State.FAULT)
    assert "BSM reports" in w.s.data.outcome_reason or w.s.state is State.STOPPING


@pytest.mark.parametrize(("lie", "refused"), [(0.94, True), (1.06, True), (0.96, False),
                                              (1.04, False)])
@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9))
def test_a_battery_voltage_off_by_over_5_percent_either_way_is_refused(
        lie: float, refused: bool, car: dict[str, Any], lag: int) -> None:
    """GB/T 18487.1-2015 B.4.4: measured within +-5 % of BCP's; both sides of the window."""
    w = _world({**car, "lie": lie}, lag)
    _run_until(w, lambda q: q.s.state in (State.CHARGING, State.FAULT), 30.0)
    if refused:
        _faulted_for(w, "differs from the reported")
    else:
        assert w.s.state is State.CHARGING, w.s.data.outcome_reason


# Project rule on GB/T 18487.1-2015 B.4.4, which gives the check no time: a battery that
# reaches the gun within 1 s of BRO(0xAA) (K5/K6 operate time, a module reading that lags
# by its update period) is checked, not refused on the first sample after the message.
K56_SETTLE_S = 1.0


@pytest.mark.parametrize(("delays", "refused"), [((0.25, 0.8), False), ((1.3, 5.0), True)])
@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), data=st.data())
def test_a_battery_that_reaches_the_gun_after_bro_is_awaited_for_a_second(
        delays: tuple[float, float], refused: bool, car: dict[str, Any], lag: int,
        data: st.DataObject) -> None:
    """Both sides of the settle: K5/K6 that close 0.25-0.8 s after BRO(0xAA) are charged
    (the first sample after the message still reads 0 V); 1.3 s and more is refused."""
    delay = data.draw(st.floats(*delays), label="k56_delay_s")
    assert (delay > K56_SETTLE_S) is refused
    w = _world({**car, "k56_delay_s": delay}, lag)
    _run_until(w, lambda q: q.s.state in (State.CHARGING, State.FAULT), 30.0)
    if refused:
        _faulted_for(w, "differs from the reported")
    else:
        assert w.s.state is State.CHARGING, w.s.data.outcome_reason


@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), fraction=st.floats(0.8, 0.97))
def test_a_car_in_cv_gets_its_voltage_demand_not_its_maximum(
        car: dict[str, Any], lag: int, fraction: float) -> None:
    """I3: the BCL voltage demand binds the output, below BCP's maximum."""
    w = _world({**car, "demand_v": fraction}, lag)
    assert _run_until(w, lambda q: q.s.state is State.CHARGING and q.plant.enabled
                      and q.bcl_voltage is not None, 30.0)
    _run_until(w, lambda q: False, 1.0)
    assert w.bcl_voltage is not None
    assert w.plant.set_v == pytest.approx(min(w.bcl_voltage, w.insulation_test_v()))


@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), after=st.floats(0.0, 2.0),
       pause=st.floats(0.5, 5.0))
def test_a_bms_pause_holds_the_current_at_zero_until_it_resumes(
        car: dict[str, Any], lag: int, after: float, pause: float) -> None:
    """GB/T 27930-2015 BSM SPN 3096: charge not permitted (no alarm) pauses; 01 resumes.
    The world checks the standing setpoint every tick while the BMS pauses."""
    w = _world(car, lag)
    assert _run_until(w, lambda q: q.s.state is State.CHARGING and q.plant.set_a > 0, 30.0)
    _run_until(w, lambda q: False, after)
    w.disturb("bsm_pause")
    assert _run_until(w, lambda q: not q.bsm_permit, 0.3)
    _run_until(w, lambda q: False, pause)  # every tick: no current while paused
    assert w.s.state is State.CHARGING and w.plant.set_a == 0.0
    w.disturb("bsm_resume")
    assert _run_until(w, lambda q: q.plant.set_a > 0, 1.0), "never resumed"
