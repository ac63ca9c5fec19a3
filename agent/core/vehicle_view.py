"""One view of the vehicle, whatever protocol it speaks.

A vehicle-protocol profile (GB/T 27930-2015 with the project's V2G extension today:
`agent/core/gbt_profile.py`; GB/T 27930.2-2024 and ISO 15118-20 BPT later) turns its
messages into a `VehicleView`. Energy transfer (direction, the arbiter's candidates,
battery-health limits, stop conditions) reads this view and never a protocol message,
and so does the safety suite.

Sign convention: currents are magnitudes here, except `demand_a` (+ = into the vehicle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChargeLimits:
    max_current_a: float
    max_voltage_v: float  # the lower of the pack's max total voltage and its handshake limit
    max_power_w: float = math.inf


@dataclass(frozen=True, slots=True)
class DischargeLimits:
    """What the vehicle allows the grid to take (ISO 15118-20 Dynamic BPT's EV limits)."""

    max_current_a: float
    max_power_w: float
    min_voltage_v: float  # never discharge the pack below this terminal voltage
    soc_floor_pct: float  # never discharge below this SOC
    # The V2X energy window: kWh the vehicle may still give in this session (None: unknown,
    # then only the floor bounds it).
    remaining_energy_kwh: float | None


@dataclass(frozen=True, slots=True)
class Cells:
    """Cell-level figures (GB/T: BMV, BMT, BSM), for the battery-health limits."""

    min_cell_v: float | None = None
    max_cell_v: float | None = None
    max_temperature_c: float | None = None
    min_temperature_c: float | None = None

    @property
    def spread_v(self) -> float | None:
        if self.min_cell_v is None or self.max_cell_v is None:
            return None
        return self.max_cell_v - self.min_cell_v


@dataclass(frozen=True, slots=True)
class VehicleView:
    charge: ChargeLimits | None  # None until the vehicle has given its parameters
    # None: the vehicle does not discharge in this session (a 2015 car, no answer to the
    # offer, or the gun made none).
    discharge: DischargeLimits | None
    consent: bool  # the owner allows discharge, and the vehicle says so now
    soc_pct: float | None
    demand_a: float  # signed request (+ = charge); 0 before the first request
    demand_v: float  # the voltage the vehicle asks for (CV ceiling when charging)
    battery_voltage_v: float | None  # as the vehicle reports it
    alarm: bool  # a battery alarm that must stop energy transfer
    paused: bool  # the vehicle asks for no current for now
    cells: Cells
    capacity_ah: float | None
    nominal_energy_kwh: float | None
    vin: str = ""

    @property
    def v2g(self) -> bool:
        return self.discharge is not None


NO_VEHICLE = VehicleView(None, None, False, None, 0.0, 0.0, None, False, False, Cells(),
                         None, None)
