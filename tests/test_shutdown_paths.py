"""I5 and I12 case by case, judged from the world's own record of what it did
(tests/safety_world.py), never from the core's emergency or latch verdicts: each cause the
standard calls an emergency opens K1/K2 at once under load; each error stop brings the
current to <= 5 A before they open; each latching cause blocks the next car until a
service finds it gone, and only that."""

from __future__ import annotations

import pytest

from agent.core.states import State
from tests.safety_world import OPEN_AT_A, TICK, SafetyWorld

# GB/T 18487.1-2015 B.4.7.1 / docs/SAFETY.md I5: E-stop, door, module lost, unplug; I7: the
# safety I/O lost; I10: a connector past its trip temperature (GB 44263-2024 §6.2.2).
EMERGENCIES = ["estop", "door", "module_silent", "unplug", "overheat", "io_lost"]
# The rest stop in order (GB/T 27930-2015 §8: <= 5 A within 10 s, then open): opening
# under load would arc the contacts.
ERROR_STOPS = ["gun_unlocked", "ev_silent", "ev_stops_bcl", "operator_stop", "bst",
               "bsm_over_temperature", "insulation_drops"]
# I12's latching causes (GB/T 18487.1-2015 B.4.7, IEC 61851-23 CC.4.4), each with what
# takes the cause itself away without a service.
LATCHING = {
    "estop": "estop_released",
    "overheat": "cool",
    "sensor_open": "sensor_fixed",
    "insulation_drops": "",  # the pack stays as it is: the next insulation check judges it
    "module_internal": "",
}


def charging(require_io: bool = False) -> SafetyWorld:
    w = SafetyWorld()
    w.plug(bhm=800.0, bcp_max_a=200.0, bcp_max_v=500.0, battery_v=380.0, demand=150.0,
           lie=1.0, grid_kw=float("inf"), mute="", require_io=require_io)
    w.advance(round(8.0 / TICK))
    assert w.s.state is State.CHARGING and w.plant.current_a > 100.0
    return w


def inject(w: SafetyWorld, cause: str) -> None:
    if cause == "module_internal":
        w.disturb("module_fault", bit=3)  # the documented layout's "internal" bit
    else:
        w.disturb(cause)


@pytest.mark.parametrize("cause", EMERGENCIES)
def test_an_emergency_opens_k1_k2_at_once_under_load(cause: str) -> None:
    w = charging(require_io=cause == "io_lost")
    w.plant.current_stuck = True  # the current does not fall: only an emergency opens now
    inject(w, cause)
    w.advance(round(0.3 / TICK))
    assert w.s.state is State.FAULT and not w.plant.k12_cmd, (cause, w.s.state)


@pytest.mark.parametrize("cause", ERROR_STOPS)
def test_an_error_stop_opens_k1_k2_only_at_5_amps(cause: str) -> None:
    w = charging()
    inject(w, cause)
    opened_at = None
    for _ in range(round(12.0 / TICK)):
        w.tick()
        if not w.plant.k12_cmd:
            opened_at = w.plant.current_a
            break
    assert opened_at is not None, (cause, "K1/K2 never opened", w.s.state)
    assert abs(opened_at) <= OPEN_AT_A, (cause, opened_at)


@pytest.mark.parametrize("cause", sorted(LATCHING))
def test_a_latching_cause_blocks_the_next_car_until_service(cause: str) -> None:
    w = charging()
    inject(w, cause)
    w.advance(round(12.0 / TICK))
    assert w.s.state is State.FAULT and not w.plant.k12_cmd, (cause, w.s.state)
    assert w.latched_causes, (cause, "the world's own record holds the latch")
    w.disturb("unplug")
    if LATCHING[cause]:
        w.disturb(LATCHING[cause])
    w.plant.fault_word = 0  # the module's own fault clears by itself (no service)
    w.advance(round(2.0 / TICK))
    w.disturb("plug_again")
    # The world asserts I12 if a session starts; the state says it too.
    for _ in range(round(10.0 / TICK)):
        w.tick()
        assert w.s.state in (State.IDLE, State.FAULT), (cause, w.s.state)
    # The other side: a service with the cause gone lets the next car charge.
    w.disturb("unplug")
    w.insulation_drifts(1000.0)
    w.disturb("service")
    w.advance(round(1.0 / TICK))
    w.disturb("plug_again")
    w.advance(round(10.0 / TICK))
    assert w.s.state not in (State.IDLE, State.FAULT), (cause, w.s.state)
