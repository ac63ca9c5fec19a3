"""I17 and I18 (agent/core/plant_checks.py): over-voltage and over-current, each on both
sides of its threshold and of its hold time. The figures are the clauses' (written here, not
read from the code under test): GB/T 18487.1-2015 B.4.7.6 (EV max + 15 V), IEC 61851-23:2023
CC.3.4.2 (400 ms), GB 44263-2024 §8.2.8 (1.1 x I, or + 3 A below 30 A, for 1 s) and IEC
61851-23 101.2.1.3 (settling: 1 s, or |dI| / 20 A/s)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.plant_checks import OverCurrentWatch, OverVoltageWatch, excess_a


def _held(watch: OverCurrentWatch, measured: float, start: float, seconds: float) -> bool:
    """Samples every 100 ms from start for `seconds`: True if any tripped."""
    steps = round(seconds / 0.1)
    return any(watch.sample(start + i * 0.1, measured) is not None for i in range(steps + 1))


@pytest.mark.parametrize(("commanded", "measured", "trips"), [
    (200.0, 219.9, False), (200.0, 220.5, True),   # 1.1 x I at and above 30 A
    (20.0, 22.9, False), (20.0, 23.2, True),       # + 3 A below 30 A
    (0.0, 2.9, False), (0.0, 3.2, True),           # nothing commanded
    (0.0, -3.2, True),                             # ... in either direction
    (-150.0, -164.9, False), (-150.0, -165.5, True),  # discharge past its command
    (-150.0, 14.9, False), (-150.0, 15.5, True),   # charging while told to discharge
    (200.0, 120.0, False),                         # under the command: CV, derate, ramp
])
def test_over_current_threshold(commanded: float, measured: float, trips: bool) -> None:
    watch = OverCurrentWatch()
    watch.command(0.0, commanded)
    start = 10.0  # long after the command: settled
    assert _held(watch, measured, start, 1.05) is trips


def test_over_current_must_hold_one_second() -> None:
    watch = OverCurrentWatch()
    watch.command(0.0, 200.0)
    assert not _held(watch, 240.0, 10.0, 0.9)  # 0.9 s over: not yet
    assert watch.sample(11.0, 200.0) is None  # back inside: the hold restarts
    assert not _held(watch, 240.0, 12.0, 0.9)
    assert _held(watch, 240.0, 13.0, 1.0)


@pytest.mark.parametrize(("step_a", "settle_s"), [(10.0, 1.0), (20.0, 1.0), (100.0, 5.0),
                                                  (250.0, 12.5)])
def test_a_falling_command_gives_the_output_its_settling_time(step_a: float,
                                                              settle_s: float) -> None:
    watch = OverCurrentWatch()
    watch.command(0.0, 250.0)
    watch.command(100.0, 250.0 - step_a)
    # The old current for the whole settling time and a hold more: no fault ...
    for i in range(round((settle_s - 0.05) / 0.1)):
        assert watch.sample(100.0 + i * 0.1, 250.0) is None
    # ... but one that never falls is caught a hold after the settling time ends, if the
    # step is larger than the margin of the new command (1.1 x I).
    new = 250.0 - step_a
    assert _held(watch, 250.0, 100.0 + settle_s, 1.05) is (step_a > 0.1 * new)


@given(st.floats(-400, 400), st.floats(-400, 400))
def test_excess_is_never_negative_beyond_the_command(commanded: float, measured: float) -> None:
    """Current under the command in its own direction is never an excess; current past it
    or against it is, by exactly that much."""
    e = excess_a(measured, commanded)
    if commanded >= 0:
        expected = max(measured - commanded, -measured)
    else:
        expected = max(-measured + commanded, measured)
    assert e == pytest.approx(expected)


@pytest.mark.parametrize(("measured", "trips"), [(764.9, False), (765.5, True),
                                                 (1050.0, True), (700.0, False)])
def test_over_voltage_threshold(measured: float, trips: bool) -> None:
    watch = OverVoltageWatch()
    tripped = any(watch.sample(i * 0.1, measured, 750.0) is not None for i in range(6))
    assert tripped is trips


def test_over_voltage_must_hold_400_ms() -> None:
    watch = OverVoltageWatch()
    assert all(watch.sample(i * 0.1, 900.0, 750.0) is None for i in range(4))  # 0.3 s
    assert watch.sample(0.4, 900.0, 750.0) is not None
    watch = OverVoltageWatch()
    for i in range(3):
        assert watch.sample(i * 0.1, 900.0, 750.0) is None
    assert watch.sample(0.35, 700.0, 750.0) is None  # a dip below restarts the hold
    assert watch.sample(0.7, 900.0, 750.0) is None


def test_a_small_step_still_gets_a_full_second() -> None:
    """IEC 61851-23 101.2.1.3: a change of 20 A or less settles within 1 s (not |dI| / 20 A/s,
    which would give a 15 A step 0.75 s). 20 A -> 5 A with the output still at 20 A: no
    fault 1.9 s after the change (1 s to settle, 1 s to hold), a fault by 2.05 s."""
    watch = OverCurrentWatch()
    watch.command(0.0, 20.0)
    watch.command(10.0, 5.0)
    assert all(watch.sample(10.0 + i * 0.05, 20.0) is None for i in range(39))  # to 11.9 s
    assert any(watch.sample(11.9 + i * 0.05, 20.0) is not None for i in range(4))


@pytest.mark.parametrize("capability_a", [0.0, 0.04, 37.3])
def test_the_module_capability_bounds_the_current_even_at_zero(capability_a: float) -> None:
    """I1 / I2: a stack that reports 0 A (derated to nothing) gets 0 A, not the car's demand
    (the capability register is read as 'no limit' only when the module does not report it)."""
    from tests.safety_world import TICK, SafetyWorld

    w = SafetyWorld()
    w.plug(bhm=800.0, bcp_max_a=200.0, bcp_max_v=500.0, battery_v=380.0, demand=200.0,
           lie=1.0, grid_kw=float("inf"), mute="", require_io=False)
    for _ in range(round(8.0 / TICK)):  # into charging at the demand
        w.tick()
    assert w.s.state.value == "charging" and w.plant.set_a > 50.0, (w.s.state, w.plant.set_a)
    w.plant.capability_a = capability_a
    for _ in range(round(1.0 / TICK)):  # a poll and a decision later (the world checks I1)
        w.tick()
    register_a = round(capability_a, 1)  # the register's 0.1 A step
    assert 0.0 <= w.plant.set_a <= register_a + 1e-9, (capability_a, w.plant.set_a)
