"""Properties of the limit arbiter: the only function that decides a commanded current."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from agent.core.arbiter import (
    STEPS_PER_A,
    CurrentLimits,
    Limit,
    decide_current,
    decide_voltage,
)

STEP = 1.0 / STEPS_PER_A

amps = st.floats(min_value=0.0, max_value=2000.0, allow_nan=False)
maybe_inf = st.one_of(amps, st.just(math.inf))
signed = st.floats(min_value=-2000.0, max_value=2000.0, allow_nan=False)
# A discharge that gives limits only (Dynamic BPT) arrives as -inf.
demand = st.one_of(signed, st.just(-math.inf))
volts = st.floats(min_value=0.0, max_value=1500.0, allow_nan=False)
limits_st = st.builds(
    CurrentLimits,
    state_a=maybe_inf,
    ev_demand_a=demand,
    ev_max_a=maybe_inf,
    charger_max_a=amps,
    module_capability_a=maybe_inf,
    power_limit_w=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    voltage_v=volts,
    thermal_a=maybe_inf,
    upstream_a=maybe_inf,
    grid_limit_w=st.one_of(st.floats(min_value=0.0, max_value=1e6), st.just(math.inf)),
    ev_power_w=st.one_of(st.floats(min_value=0.0, max_value=1e6), st.just(math.inf)),
    ev_voltage_a=maybe_inf,
    soc_window_a=maybe_inf,
    energy_window_a=maybe_inf,
    health_a=maybe_inf,
    consent_a=maybe_inf,
    direction_a=maybe_inf,
    pool_a=maybe_inf,
    pool_power_w=st.one_of(st.floats(min_value=0.0, max_value=1e6), st.just(math.inf)),
)


def _ceiling(lim: CurrentLimits) -> float:
    return min(
        lim.state_a,
        abs(lim.ev_demand_a),
        lim.ev_max_a,
        lim.charger_max_a,
        lim.module_capability_a,
        lim.power_limit_w / max(lim.voltage_v, 1.0),
        lim.thermal_a,
        lim.upstream_a,
        lim.grid_limit_w / max(lim.voltage_v, 1.0),
        lim.ev_power_w / max(lim.voltage_v, 1.0),
        lim.ev_voltage_a,
        lim.soc_window_a,
        lim.energy_window_a,
        lim.health_a,
        lim.consent_a,
        lim.direction_a,
        lim.pool_a,  # the module pool's word for this gun (docs/PILE.md)
        lim.pool_power_w / max(lim.voltage_v, 1.0),
    )


@given(limits_st, signed, st.floats(min_value=0.0, max_value=1.0), amps)
def test_current_never_exceeds_any_limit(
    lim: CurrentLimits, prev: float, dt: float, ramp: float
) -> None:
    d = decide_current(lim, prev, dt, ramp)
    assert abs(d.current_a) <= _ceiling(lim) + 1e-9
    power_w = min(lim.power_limit_w, lim.grid_limit_w, lim.ev_power_w)
    assert abs(d.current_a) * lim.voltage_v <= power_w * (1 + 1e-9) + 1e-6
    if d.current_a != 0.0:
        assert math.copysign(1.0, d.current_a) == math.copysign(1.0, lim.ev_demand_a)


@given(limits_st, signed, st.floats(min_value=0.0, max_value=1.0), amps)
def test_up_ramp_is_limited(lim: CurrentLimits, prev: float, dt: float, ramp: float) -> None:
    d = decide_current(lim, prev, dt, ramp)
    direction = 1.0 if lim.ev_demand_a >= 0 else -1.0
    prev_same = max(prev * direction, 0.0)
    assert abs(d.current_a) <= prev_same + ramp * dt + 1e-9


@given(limits_st, st.floats(min_value=0.0, max_value=1.0), amps)
def test_reported_bound_is_the_binding_limit(lim: CurrentLimits, dt: float, ramp: float) -> None:
    d = decide_current(lim, 0.0, dt, ramp)
    if d.bound_by is Limit.RAMP:
        assert abs(d.current_a) <= d.ceiling_a
    elif d.bound_by is not Limit.INVALID_INPUT:
        # The binding limit, floored to a whole setpoint step (0.1 A).
        ceiling = _ceiling(lim)
        assert ceiling - STEP - 1e-9 <= abs(d.current_a) <= ceiling + 1e-9
        assert math.isclose(d.ceiling_a, ceiling, rel_tol=1e-9, abs_tol=1e-9)


@given(limits_st, signed, st.floats(min_value=0.0, max_value=1.0), amps)
def test_decisions_are_whole_setpoint_steps(
    lim: CurrentLimits, prev: float, dt: float, ramp: float
) -> None:
    """A register of 0.1 A takes the decision as it is: no rounding can lift it."""
    d = decide_current(lim, prev, dt, ramp)
    steps = abs(d.current_a) * STEPS_PER_A
    assert math.isclose(steps, round(steps), abs_tol=1e-6)


def test_each_limit_can_bind() -> None:
    base = dict(state_a=math.inf, ev_demand_a=100.0, ev_max_a=200.0, charger_max_a=250.0,
                module_capability_a=300.0, power_limit_w=1e6, voltage_v=400.0)
    cases = {
        Limit.STATE: {"state_a": 0.0},
        Limit.EV_DEMAND: {},
        Limit.EV_MAX: {"ev_max_a": 50.0},
        Limit.CHARGER_MAX: {"charger_max_a": 40.0},
        Limit.MODULE_CAPABILITY: {"module_capability_a": 30.0},
        Limit.POWER: {"power_limit_w": 8000.0},
        Limit.THERMAL: {"thermal_a": 10.0},
        Limit.UPSTREAM: {"upstream_a": 5.0},
        Limit.GRID: {"grid_limit_w": 1000.0},
        Limit.EV_POWER: {"ev_power_w": 800.0},
        Limit.EV_MIN_VOLTAGE: {"ev_voltage_a": 0.0},
        Limit.SOC_WINDOW: {"soc_window_a": 0.0},
        Limit.ENERGY_WINDOW: {"energy_window_a": 0.0},
        Limit.HEALTH: {"health_a": 1.5},
        Limit.CONSENT: {"consent_a": 0.0},
        Limit.DIRECTION: {"direction_a": 0.0},
    }
    pool_cases = {"pool_a": 20.0}, {"pool_power_w": 4000.0}
    for override in pool_cases:
        d = decide_current(CurrentLimits(**{**base, **override}), 1000.0, 0.01, 100.0)
        assert d.bound_by is Limit.MODULE_POOL, (override, d)
    for expected, override in cases.items():
        d = decide_current(CurrentLimits(**{**base, **override}), 1000.0, 0.01, 100.0)
        assert d.bound_by is expected, (expected, d)
    ramped = decide_current(CurrentLimits(**base), 0.0, 0.01, 100.0)
    assert ramped.bound_by is Limit.RAMP and math.isclose(ramped.current_a, 1.0)


def test_a_ceiling_that_creeps_up_by_less_than_a_step_names_its_own_limit() -> None:
    # A 40 kW discharge setpoint as the pack voltage sags: 100.01 A at 399.96 V, decided
    # again in the same instant (dt 0) after 100.0 A. The command is 100.0 A either way;
    # the bound is the setpoint's, not the ramp's (which took nothing off).
    lim = CurrentLimits(state_a=math.inf, ev_demand_a=-150.0, ev_max_a=200.0,
                        charger_max_a=250.0, module_capability_a=300.0,
                        power_limit_w=1e6, voltage_v=399.96, upstream_a=100.01)
    d = decide_current(lim, -100.0, 0.0, 100.0)
    assert d.current_a == -100.0 and d.bound_by is Limit.UPSTREAM, d
    # A whole step more is the ramp's to hold back.
    d = decide_current(replace(lim, upstream_a=100.2), -100.0, 0.0, 100.0)
    assert d.current_a == -100.0 and d.bound_by is Limit.RAMP, d


@given(st.sampled_from(["state_a", "ev_max_a", "charger_max_a", "module_capability_a",
                        "power_limit_w", "ev_demand_a", "voltage_v",
                        "thermal_a", "upstream_a", "grid_limit_w", "ev_power_w",
                        "ev_voltage_a", "soc_window_a", "energy_window_a", "health_a",
                        "consent_a", "direction_a", "pool_a", "pool_power_w"]))
def test_nan_anywhere_means_zero(field: str) -> None:
    base = dict(state_a=math.inf, ev_demand_a=100.0, ev_max_a=200.0, charger_max_a=250.0,
                module_capability_a=300.0, power_limit_w=1e6, voltage_v=400.0)
    d = decide_current(CurrentLimits(**{**base, field: math.nan}), 50.0, 0.01, 100.0)
    assert d.current_a == 0.0 and d.bound_by is Limit.INVALID_INPUT


@given(volts, volts, volts, volts)
def test_voltage_is_min_of_limits(a: float, b: float, c: float, d: float) -> None:
    v = decide_voltage(a, b, c, d)
    assert v.voltage_v == min(a, b, c, d)


def test_voltage_nan_is_zero() -> None:
    assert decide_voltage(math.nan, 500.0, 500.0, 750.0).voltage_v == 0.0


def test_a_discharge_that_gives_limits_only_is_bound_by_them() -> None:
    """Dynamic BPT: demand -inf, the others bound; all of them inf is no permission."""
    lim = CurrentLimits(state_a=math.inf, ev_demand_a=-math.inf, ev_max_a=150.0,
                        charger_max_a=200.0, module_capability_a=math.inf,
                        power_limit_w=math.inf, voltage_v=400.0, upstream_a=120.0)
    d = decide_current(lim, -120.0, 0.01, 100.0)
    assert d.current_a == -120.0 and d.bound_by is Limit.UPSTREAM
    unbounded = CurrentLimits(state_a=math.inf, ev_demand_a=-math.inf, ev_max_a=math.inf,
                              charger_max_a=math.inf, module_capability_a=math.inf,
                              power_limit_w=math.inf, voltage_v=400.0)
    assert decide_current(unbounded, 0.0, 0.01, 100.0).bound_by is Limit.INVALID_INPUT


def test_the_discharge_voltage_floor_is_the_highest_floor() -> None:
    from agent.core.arbiter import decide_discharge_voltage

    assert decide_discharge_voltage(326.4, 200.0).voltage_v == 326.4
    assert decide_discharge_voltage(150.0, 200.0).bound_by == "charger_min_input"
    assert decide_discharge_voltage(math.nan, 200.0).bound_by == "invalid_input"
