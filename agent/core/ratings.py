"""What one gun of this pile can do; validated by the runtime's config loader."""

from __future__ import annotations

import math
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
    charger_number: int = 1
    # CTS carries local time; China Standard Time is UTC+8.
    utc_offset_h: float = 8.0

    def problems(self) -> list[str]:
        """Human-readable reasons this rating set is unusable (empty if fine)."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "grid_limit_w" and value == math.inf:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                out.append(f"{f.name} must be a finite number, got {value!r}")
        if self.min_voltage_v <= 0:
            out.append(f"min_voltage_v must be > 0, got {self.min_voltage_v}")
        if self.max_voltage_v <= self.min_voltage_v:
            out.append("max_voltage_v must be above min_voltage_v")
        if self.max_voltage_v > 1500:
            out.append("max_voltage_v above 1500 V is outside DC low-voltage equipment")
        if self.max_current_a <= 0:
            out.append(f"max_current_a must be > 0, got {self.max_current_a}")
        if self.min_current_a < 0:
            out.append(f"min_current_a must be >= 0, got {self.min_current_a}")
        if self.max_power_w <= 0:
            out.append(f"max_power_w must be > 0, got {self.max_power_w}")
        if not self.grid_limit_w > 0:
            out.append(f"grid_limit_w must be > 0, got {self.grid_limit_w}")
        if self.ramp_up_a_per_s < 20:
            out.append("ramp_up_a_per_s below 20 A/s violates IEC 61851-23 101.2.1.3")
        if not 0 <= self.charger_number <= 0xFFFFFFFF:
            out.append("charger_number must fit in 32 bits")
        return out
