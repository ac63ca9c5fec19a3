"""Battery-health policy for V2G: owner's and operator's limits, the strictest wins.

Owners' first worry in a V2G pilot is the battery. Each party (the vehicle through its
protocol, the owner per VIN or per session, the operator per pile) may limit discharge:
SOC floor and ceiling, C-rate, kWh and equivalent full cycles per day, a battery
temperature window, a minimum cell voltage and a maximum cell spread. `strictest`
combines policies; `discharge_health_limit` and `soc_window_limit` turn the combined
policy and the vehicle view into arbiter candidates (amps, and the reason that bound).
Nothing here clamps a current: the arbiter takes these as candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from agent.core.direction import Direction
from agent.core.vehicle_view import VehicleView


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    soc_floor_pct: float = 0.0  # no discharge at or below
    soc_ceiling_pct: float = 100.0  # no V2G-session charging at or above
    max_discharge_c_rate: float = math.inf  # 1/h, times the rated capacity in Ah
    max_discharge_kwh_per_day: float = math.inf
    max_cycles_per_day: float = math.inf  # equivalent full cycles (throughput / 2 x nominal)
    min_temperature_c: float = -math.inf  # the battery's temperature window for discharge
    max_temperature_c: float = math.inf
    min_cell_v: float = 0.0  # no discharge once a cell is at or below
    max_cell_spread_v: float = math.inf  # no discharge once max - min cell exceeds

    def problems(self) -> list[str]:
        out = [f"{f.name} must be a number, got {getattr(self, f.name)!r}"
               for f in fields(self) if math.isnan(getattr(self, f.name))]
        if out:
            return out
        checks = (
            (0.0 <= self.soc_floor_pct <= 100.0, "soc_floor_pct must be 0..100"),
            (0.0 <= self.soc_ceiling_pct <= 100.0, "soc_ceiling_pct must be 0..100"),
            (self.soc_floor_pct < self.soc_ceiling_pct,
             "soc_floor_pct must be below soc_ceiling_pct"),
            (self.max_discharge_c_rate > 0, "max_discharge_c_rate must be > 0"),
            (self.max_discharge_kwh_per_day >= 0, "max_discharge_kwh_per_day must be >= 0"),
            (self.max_cycles_per_day >= 0, "max_cycles_per_day must be >= 0"),
            (self.min_temperature_c < self.max_temperature_c,
             "min_temperature_c must be below max_temperature_c"),
            (self.min_cell_v >= 0, "min_cell_v must be >= 0"),
            (self.max_cell_spread_v > 0, "max_cell_spread_v must be > 0"),
        )
        return [message for ok, message in checks if not ok]


NO_POLICY = HealthPolicy()


def strictest(*policies: HealthPolicy | None) -> HealthPolicy:
    """Each field at its strictest across the parties (None: that party sets nothing)."""
    given = [p for p in policies if p is not None] or [NO_POLICY]
    return HealthPolicy(
        soc_floor_pct=max(p.soc_floor_pct for p in given),
        soc_ceiling_pct=min(p.soc_ceiling_pct for p in given),
        max_discharge_c_rate=min(p.max_discharge_c_rate for p in given),
        max_discharge_kwh_per_day=min(p.max_discharge_kwh_per_day for p in given),
        max_cycles_per_day=min(p.max_cycles_per_day for p in given),
        min_temperature_c=max(p.min_temperature_c for p in given),
        max_temperature_c=min(p.max_temperature_c for p in given),
        min_cell_v=max(p.min_cell_v for p in given),
        max_cell_spread_v=min(p.max_cell_spread_v for p in given),
    )


@dataclass(frozen=True, slots=True)
class EnergyUse:
    """What this vehicle has already done today (from the ledger) plus this session."""

    discharged_kwh: float = 0.0
    throughput_kwh: float = 0.0  # charged + discharged


def equivalent_cycles(throughput_kwh: float, nominal_kwh: float | None) -> float:
    """Equivalent full cycles: energy through the pack over twice its nominal energy."""
    if nominal_kwh is None or not nominal_kwh > 0:
        return 0.0
    return throughput_kwh / (2.0 * nominal_kwh)


def discharge_health_limit(policy: HealthPolicy, view: VehicleView,
                           used: EnergyUse) -> tuple[float, str]:
    """(discharge current magnitude allowed, why) under the health policy. Unknown figures
    (a vehicle that sends no BMV) do not block: the vehicle's own alarms still do."""
    c = view.cells
    if c.max_temperature_c is not None and c.max_temperature_c > policy.max_temperature_c:
        return 0.0, f"battery {c.max_temperature_c:.0f} °C above {policy.max_temperature_c} °C"
    if c.min_temperature_c is not None and c.min_temperature_c < policy.min_temperature_c:
        return 0.0, f"battery {c.min_temperature_c:.0f} °C below {policy.min_temperature_c} °C"
    if c.min_cell_v is not None and c.min_cell_v <= policy.min_cell_v:
        return 0.0, f"cell at {c.min_cell_v:.3f} V, floor {policy.min_cell_v} V"
    if c.spread_v is not None and c.spread_v > policy.max_cell_spread_v:
        return 0.0, f"cell spread {c.spread_v * 1000:.0f} mV above {policy.max_cell_spread_v} V"
    if used.discharged_kwh >= policy.max_discharge_kwh_per_day:
        return 0.0, f"{policy.max_discharge_kwh_per_day} kWh a day discharged"
    if equivalent_cycles(used.throughput_kwh, view.nominal_energy_kwh) \
            >= policy.max_cycles_per_day:
        return 0.0, f"{policy.max_cycles_per_day} equivalent cycles a day used"
    if view.capacity_ah is not None and math.isfinite(policy.max_discharge_c_rate):
        return policy.max_discharge_c_rate * view.capacity_ah, \
            f"C-rate {policy.max_discharge_c_rate}"
    return math.inf, ""


def soc_window_limit(policy: HealthPolicy, view: VehicleView,
                     direction: Direction) -> tuple[float, str]:
    """Discharge stops at the highest SOC floor (vehicle's, owner's, operator's); in a V2G
    session charging stops at the ceiling. An unknown SOC allows no discharge."""
    soc = view.soc_pct
    if direction is Direction.DISCHARGE:
        floor = max(policy.soc_floor_pct,
                    view.discharge.soc_floor_pct if view.discharge else 100.0)
        if soc is None or soc <= floor:
            return 0.0, f"SOC floor {floor:.1f} % reached"
        return math.inf, ""
    if view.v2g and soc is not None and soc >= policy.soc_ceiling_pct:
        return 0.0, f"SOC ceiling {policy.soc_ceiling_pct:.1f} % reached"
    return math.inf, ""
