"""The limit arbiter: the only place that decides a commanded current (and voltage).

Every other part of the agent proposes limits; this module takes the minimum, applies
the up-ramp, and says which limit bound. Currents are signed (+ = into the vehicle);
limits are magnitudes that apply in the direction of the demand. The caller fills each
candidate for that direction: charging takes the EV's charge limits, the charger's and the
module's forward ratings and the grid import limit; discharging the EV's discharge
limits, the reverse ratings and the export limit, plus consent, SOC and energy windows.
An EV demand of -inf means "discharge, the vehicle gives only limits" (ISO 15118-20
Dynamic BPT: the charger picks the power within them from the upstream setpoint).

Any NaN, infinite-where-finite-is-required or negative limit is treated as "no
permission": the decision is 0 A, bound by INVALID_INPUT (fail safe, never raise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Limit(Enum):
    STATE = "state"
    INVALID_INPUT = "invalid_input"
    EV_DEMAND = "ev_demand"
    EV_MAX = "ev_max"
    CHARGER_MAX = "charger_max"
    MODULE_CAPABILITY = "module_capability"
    MODULE_POOL = "module_pool"
    POWER = "power"
    GRID = "grid"
    THERMAL = "thermal"
    UPSTREAM = "upstream"
    EV_POWER = "ev_power"
    EV_MIN_VOLTAGE = "ev_min_voltage"
    SOC_WINDOW = "soc_window"
    ENERGY_WINDOW = "energy_window"
    HEALTH = "health"
    CONSENT = "consent"
    DIRECTION = "direction"
    RAMP = "ramp"


@dataclass(frozen=True, slots=True)
class CurrentLimits:
    """What each party allows right now. Magnitudes in A unless noted."""

    state_a: float  # what the session state allows (0 outside energy transfer)
    ev_demand_a: float  # signed request, + = into the vehicle
    ev_max_a: float  # BCP max charge current (or EV max discharge current)
    charger_max_a: float  # gun/cable/charger rating
    module_capability_a: float  # what the power module reports it can deliver
    power_limit_w: float  # rated power of the gun (and what the module stack reports)
    voltage_v: float  # commanded (CV ceiling) voltage, to turn the power limit into amps
    thermal_a: float = math.inf  # connector/cable/module derating
    upstream_a: float = math.inf  # central system / site EMS limit for this direction
    grid_limit_w: float = math.inf  # this gun's share of the site's grid connection
    ev_power_w: float = math.inf  # EV max power in this direction (discharge: BDP)
    # 0 once the pack is at the EV's minimum discharge voltage (discharge only).
    ev_voltage_a: float = math.inf
    soc_window_a: float = math.inf  # 0 at the SOC floor (discharge) or V2G ceiling (charge)
    energy_window_a: float = math.inf  # 0 once the V2X energy window is used up
    health_a: float = math.inf  # battery-health policy (C-rate, temperature, cells, per day)
    # Discharge needs the vehicle's consent and an authorised upstream setpoint; else 0.
    consent_a: float = math.inf
    direction_a: float = math.inf  # 0 while a direction change passes through zero
    # The pile's module pool (agent/core/pile.py): the groups switched to this gun, and its
    # share of the pile rating and the grid limit; 0 while a group is to leave the gun.
    pool_a: float = math.inf
    pool_power_w: float = math.inf


@dataclass(frozen=True, slots=True)
class CurrentDecision:
    current_a: float  # signed command, + = into the vehicle
    bound_by: Limit
    ceiling_a: float  # the magnitude allowed before the ramp


@dataclass(frozen=True, slots=True)
class VoltageDecision:
    voltage_v: float
    bound_by: str


# A voltage below this cannot be used to convert a power limit into amps; 1 V keeps
# the division finite while the output is still rising.
_MIN_VOLTAGE_FOR_POWER_V = 1.0

# Setpoint steps per ampere: GB/T 27930-2015 BCL/CCS carry current in 0.1 A, and so does the
# module's setpoint register (drivers/power_module/register_map.toml). A decision is floored
# to a step, so no rounding on the way to the module lifts it above the limit that bound it,
# and every change of decision is a change the module can be told.
STEPS_PER_A = 10


def _amps_for(watts: float, limits: CurrentLimits) -> float:
    return watts / max(abs(limits.voltage_v), _MIN_VOLTAGE_FOR_POWER_V)


# Every limit the arbiter takes the minimum of, as a table (order breaks ties: the
# earlier entry is reported as the bound). The safety suite's mutation check removes
# one entry at a time and expects a test to fail.
CANDIDATES: tuple[tuple[Limit, Callable[[CurrentLimits], float]], ...] = (
    (Limit.STATE, lambda lim: lim.state_a),
    (Limit.EV_DEMAND, lambda lim: abs(lim.ev_demand_a)),
    (Limit.EV_MAX, lambda lim: lim.ev_max_a),
    (Limit.CHARGER_MAX, lambda lim: lim.charger_max_a),
    (Limit.MODULE_CAPABILITY, lambda lim: lim.module_capability_a),
    (Limit.MODULE_POOL, lambda lim: min(lim.pool_a, _amps_for(lim.pool_power_w, lim))),
    (Limit.POWER, lambda lim: _amps_for(lim.power_limit_w, lim)),
    (Limit.GRID, lambda lim: _amps_for(lim.grid_limit_w, lim)),
    (Limit.THERMAL, lambda lim: lim.thermal_a),
    (Limit.UPSTREAM, lambda lim: lim.upstream_a),
    (Limit.EV_POWER, lambda lim: _amps_for(lim.ev_power_w, lim)),
    (Limit.EV_MIN_VOLTAGE, lambda lim: lim.ev_voltage_a),
    (Limit.SOC_WINDOW, lambda lim: lim.soc_window_a),
    (Limit.ENERGY_WINDOW, lambda lim: lim.energy_window_a),
    (Limit.HEALTH, lambda lim: lim.health_a),
    (Limit.CONSENT, lambda lim: lim.consent_a),
    (Limit.DIRECTION, lambda lim: lim.direction_a),
)


def decide_current(
    limits: CurrentLimits, previous_a: float, dt_s: float, ramp_up_a_per_s: float
) -> CurrentDecision:
    """Return the commanded current: min of all limits, then the up-ramp.

    The ramp only limits increases of magnitude; decreases are immediate, so a
    tightened limit is obeyed within the same decision.
    """
    magnitudes = (
        limits.state_a,
        limits.ev_max_a,
        limits.charger_max_a,
        limits.module_capability_a,
        limits.power_limit_w,
        limits.thermal_a,
        limits.upstream_a,
        limits.grid_limit_w,
        limits.ev_power_w,
        limits.ev_voltage_a,
        limits.soc_window_a,
        limits.energy_window_a,
        limits.health_a,
        limits.consent_a,
        limits.direction_a,
        limits.pool_a,
        limits.pool_power_w,
    )
    # One sum carries any NaN through (inf + inf stays inf; a -inf shows as negative below):
    # this runs on every control step of every gun, so no per-candidate call.
    if (
        math.isnan(sum(magnitudes))
        or min(magnitudes) < 0.0
        or math.isnan(limits.ev_demand_a)
        or math.isnan(limits.voltage_v)
        or not math.isfinite(previous_a)
        or math.isnan(dt_s)
        or math.isnan(ramp_up_a_per_s)
    ):
        return CurrentDecision(0.0, Limit.INVALID_INPUT, 0.0)

    direction = 1.0 if limits.ev_demand_a >= 0.0 else -1.0
    ceiling, bound = math.inf, Limit.INVALID_INPUT
    for limit, read in CANDIDATES:  # the first of equal limits is the one reported
        value = read(limits)
        if value < ceiling:
            ceiling, bound = value, limit
    if math.isinf(ceiling):
        return CurrentDecision(0.0, Limit.INVALID_INPUT, 0.0)

    # Ramp from what was commanded before, in the same direction only: a sign change
    # always passes through zero first.
    prev_same_dir = max(previous_a * direction, 0.0)
    ramp_step = max(dt_s, 0.0) * max(ramp_up_a_per_s, 0.0)
    magnitude = _whole_steps(ceiling)
    if ceiling > prev_same_dir + ramp_step:
        ramped = _whole_steps(prev_same_dir + ramp_step)
        # The ramp binds only when it takes a setpoint step off: a ceiling that creeps up
        # by less than one (a power limit as the voltage sags) still names its own limit.
        if ramped < magnitude:
            magnitude, bound = ramped, Limit.RAMP
    return CurrentDecision(direction * magnitude if magnitude > 0.0 else 0.0, bound, ceiling)


def _whole_steps(amps: float) -> float:
    """Floored to the setpoint register's step. The 1e-9 keeps 2.3 A (22.999999999999996
    steps in binary) from losing a step."""
    return math.floor(amps * STEPS_PER_A + 1e-9) / STEPS_PER_A


# What the vehicle side and upstream want, before the pile's own power decides how much of
# it can be served: the module pool plans by this (agent/core/pile.py). STATE and DIRECTION
# are left out too: a pause or a pass through zero must not give the gun's groups away.
_SUPPLY_SIDE = frozenset({Limit.MODULE_CAPABILITY, Limit.MODULE_POOL, Limit.POWER,
                          Limit.GRID, Limit.STATE, Limit.DIRECTION})


def wanted_current(limits: CurrentLimits) -> float:
    """The current the gun would take if the pile had power to spare (A, magnitude; 0 for
    input the arbiter would refuse)."""
    values = [read(limits) for limit, read in CANDIDATES if limit not in _SUPPLY_SIDE]
    if any(math.isnan(v) for v in values):
        return 0.0
    wanted = min(values)
    return wanted if math.isfinite(wanted) and wanted > 0.0 else 0.0


def decide_discharge_voltage(ev_min_v: float, charger_min_input_v: float) -> VoltageDecision:
    """The voltage floor while discharging: the module never pulls the pack below the
    highest of the EV's minimum discharge voltage and the charger's minimum DC input."""
    candidates = ((ev_min_v, "ev_min_voltage"), (charger_min_input_v, "charger_min_input"))
    if any(not math.isfinite(v) or v < 0.0 for v, _ in candidates):
        return VoltageDecision(0.0, "invalid_input")
    voltage, bound = max(candidates, key=lambda c: c[0])
    return VoltageDecision(voltage, bound)


def decide_voltage(
    ev_demand_v: float, ev_max_v: float, bhm_max_v: float, charger_max_v: float
) -> VoltageDecision:
    """The commanded output voltage: min of the EV's request and every voltage limit."""
    candidates = (
        (ev_demand_v, "ev_demand"),
        (ev_max_v, "ev_max"),
        (bhm_max_v, "bhm_max"),
        (charger_max_v, "charger_max"),
    )
    if any(math.isnan(v) or v < 0.0 for v, _ in candidates):
        return VoltageDecision(0.0, "invalid_input")
    voltage, bound = min(candidates, key=lambda c: c[0])
    if math.isinf(voltage):
        return VoltageDecision(0.0, "invalid_input")
    return VoltageDecision(voltage, bound)
