"""What one gun of this pile can do; validated by the runtime's config loader."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class GunRatings:
    max_voltage_v: float = 750.0
    min_voltage_v: float = 200.0
    max_current_a: float = 250.0  # gun, cable and module stack, whichever is lowest
    min_current_a: float = 0.0
    max_power_w: float = 150_000.0
    # This gun's share of the site's grid connection (transformer, feeder, contract), when
    # that is below the rated power; it bounds import and export alike (invariant I2).
    # Unset (inf): the connection carries the rated power.
    grid_limit_w: float = math.inf
    # IEC 61851-23 101.2.1.3 asks the output to follow a request at >= 20 A/s; we ramp
    # faster than that but slowly enough to spare the battery and module a step.
    ramp_up_a_per_s: float = 100.0
    # Discharge (V2G): 0 A means this gun never offers it (no CDP is sent: a 2015 pile).
    max_discharge_current_a: float = 0.0
    max_discharge_power_w: float = 0.0
    # The DC input range's low end when discharging (the high end is max_voltage_v): the
    # module's inverter cannot take energy from a pack below this.
    min_input_voltage_v: float = 200.0
    # This gun's share of the site's export limit (contract, transformer), if below the rest.
    export_limit_w: float = math.inf
    charger_number: int = 1
    # CTS carries local time; China Standard Time is UTC+8.
    utc_offset_h: float = 8.0

    def problems(self) -> list[str]:
        """Human-readable reasons this rating set is unusable (empty if fine)."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("grid_limit_w", "export_limit_w") and value == math.inf:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                out.append(f"{f.name} must be a finite number, got {value!r}")
        if out:
            return out
        return [message(self) for ok, message in RATING_CHECKS if not ok(self)]


# GB/T 27930-2015 §4.5: currents are 0.1 A/bit with a -400 A offset and charging counts
# negative, so CML (and CCS, BCL) carry at most 400 A of charging current.
GBT_MAX_CHARGE_CURRENT_A = 400.0

# Each check with the sentence a config error shows; a table, so the mutation check can
# remove one at a time and expect a test to fail.
RatingCheck = tuple[Callable[[GunRatings], bool], Callable[[GunRatings], str]]
RATING_CHECKS: tuple[RatingCheck, ...] = (
    (lambda r: r.min_voltage_v > 0, lambda r: f"min_voltage_v must be > 0, got {r.min_voltage_v}"),
    (lambda r: r.max_voltage_v > r.min_voltage_v,
     lambda r: "max_voltage_v must be above min_voltage_v"),
    (lambda r: r.max_voltage_v <= 1500,
     lambda r: "max_voltage_v above 1500 V is outside DC low-voltage equipment"),
    (lambda r: r.max_current_a > 0, lambda r: f"max_current_a must be > 0, got {r.max_current_a}"),
    (lambda r: r.max_current_a <= GBT_MAX_CHARGE_CURRENT_A,
     lambda r: f"max_current_a {r.max_current_a} A is above the {GBT_MAX_CHARGE_CURRENT_A:.0f} A "
               "GB/T 27930-2015 can carry (§4.5: 0.1 A/bit, -400 A offset): every CML would "
               "fail to encode"),
    (lambda r: r.min_current_a >= 0,
     lambda r: f"min_current_a must be >= 0, got {r.min_current_a}"),
    (lambda r: r.min_current_a <= r.max_current_a,
     lambda r: f"min_current_a {r.min_current_a} A is above max_current_a {r.max_current_a} A"),
    (lambda r: r.max_power_w > 0, lambda r: f"max_power_w must be > 0, got {r.max_power_w}"),
    (lambda r: r.grid_limit_w > 0, lambda r: f"grid_limit_w must be > 0, got {r.grid_limit_w}"),
    (lambda r: 0 <= r.max_discharge_current_a <= r.max_current_a,
     lambda r: f"max_discharge_current_a must be 0..max_current_a, got "
               f"{r.max_discharge_current_a}"),
    (lambda r: 0 <= r.max_discharge_power_w <= r.max_power_w,
     lambda r: f"max_discharge_power_w must be 0..max_power_w, got {r.max_discharge_power_w}"),
    (lambda r: (r.max_discharge_current_a > 0) == (r.max_discharge_power_w > 0),
     lambda r: "max_discharge_current_a and max_discharge_power_w are both 0 (no V2G) or "
               "both > 0"),
    (lambda r: r.min_voltage_v <= r.min_input_voltage_v < r.max_voltage_v,
     lambda r: f"min_input_voltage_v {r.min_input_voltage_v} V must be within "
               f"min_voltage_v..max_voltage_v"),
    (lambda r: r.export_limit_w > 0,
     lambda r: f"export_limit_w must be > 0, got {r.export_limit_w}"),
    (lambda r: r.ramp_up_a_per_s >= 20,
     lambda r: "ramp_up_a_per_s below 20 A/s violates IEC 61851-23 101.2.1.3"),
    (lambda r: 0 <= r.charger_number <= 0xFFFFFFFF,
     lambda r: "charger_number must fit in 32 bits"),
)


def offers_v2g(r: GunRatings) -> bool:
    return r.max_discharge_current_a > 0 and r.max_discharge_power_w > 0
