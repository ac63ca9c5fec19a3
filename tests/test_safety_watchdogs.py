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
from tests.safety_world import MUTE, TICK, SafetyWorld

honest_cars = st.fixed_dictionaries({
    "bhm": st.floats(450, 800), "bcp_max_a": st.floats(60, 400),
    "bcp_max_v": st.floats(450, 800), "battery_v": st.floats(300, 440),
    "demand": st.floats(60, 400), "lie": st.just(1.0), "grid_kw": st.just(float("inf")),
})
SETTINGS = settings(max_examples=12, deadline=None)


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


@SETTINGS
@given(mute=st.sampled_from(MUTE), car=honest_cars, lag=st.integers(0, 9))
def test_every_awaited_vehicle_message_has_a_deadline(mute: str, car: dict[str, Any],
                                                      lag: int) -> None:
    """GB/T 27930-2015 §8: BHM, BRM, BCP, BRO 5 s; BRO(0xAA) 60 s; BCL 1 s; BCS 5 s."""
    w = _world(car, lag, mute=mute)
    _run_until(w, lambda q: q.s.state is State.FAULT, 75.0)  # the world checks each deadline
    _faulted_for(w, f"{mute} timeout")


# name: (state to break in, how it breaks, seconds it may take, what the fault says)
Break = tuple[State, Callable[[SafetyWorld], None], float, str]
BREAKS: dict[str, Break] = {
    "module link lost": (State.CHARGING, lambda w: w.disturb("module_silent"), 0.2,
                         "link lost"),
    "module bus owner hangs": (State.CHARGING, lambda w: w.disturb("module_frozen"), 1.2,
                               "power module silent"),
    "safety I/O silent": (State.CHARGING, lambda w: w.disturb("io_silent"), 1.2,
                          "safety I/O silent"),
    "safety I/O lost": (State.CHARGING, lambda w: w.disturb("io_lost"), 0.2, "safety I/O lost"),
    "connector sensors silent": (State.CHARGING, lambda w: (w.disturb("io_silent"),
                                                            setattr(w, "require_io", False),
                                                            setattr(w.s, "require_safety_io",
                                                                    False)),
                                 2.2, "no reading"),
    "contactor does not close": (State.HANDSHAKE, lambda w: w.disturb("contactor_stuck_open"),
                                 2.0, "did not close"),
    "contactor welded": (State.CHARGING, lambda w: (w.disturb("welded"),
                                                    w.disturb("operator_stop")),
                         4.0, "welded"),
    "current ignores the stop": (State.CHARGING, lambda w: (w.disturb("current_stuck"),
                                                            w.disturb("operator_stop")),
                                 10.5, "did not fall to 5 A"),
    "IMD never answers": (State.HANDSHAKE, lambda w: w.disturb("imd_dead"), 25.5,
                          "insulation check not done"),
    "precharge gap never met": (State.HANDSHAKE, lambda w: w.disturb("voltage_offset"), 62.0,
                                "precharge not done"),
    "insulation 50 ohm/V": (State.HANDSHAKE, lambda w: w.disturb("insulation_low"), 5.0,
                            "insulation fault"),
    "emergency stop": (State.CHARGING, lambda w: w.disturb("estop"), 0.1, "emergency stop"),
    "door opened": (State.CHARGING, lambda w: w.disturb("door"), 0.1, "door open"),
    "gun lock opens": (State.CHARGING, lambda w: w.disturb("gun_unlocked"), 0.1, "gun lock"),
    "connector trips": (State.CHARGING, lambda w: setattr(w, "connector_c", 110.0), 0.2,
                        "trip"),
    "connector sensor open": (State.CHARGING, lambda w: w.disturb("sensor_open"), 0.2,
                              "ohm"),
}


@pytest.mark.parametrize("name", BREAKS)
@SETTINGS
@given(car=honest_cars, lag=st.integers(0, 9), after=st.floats(0.0, 2.0))
def test_each_plant_failure_ends_in_fault_by_its_deadline(name: str, car: dict[str, Any],
                                                          lag: int, after: float) -> None:
    state, inject, seconds, why = BREAKS[name]
    w = _world(car, lag, require_io=True)
    assert _run_until(w, lambda q: q.s.state is state, 30.0), f"never reached {state.value}"
    if state is State.CHARGING:
        _run_until(w, lambda q: q.plant.current_a > 20.0, 10.0)
    _run_until(w, lambda q: False, after if state is State.CHARGING else 0.0)
    assert w.s.state is state
    inject(w)
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
