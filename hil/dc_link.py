"""The DC link between the power-module simulator and a simulated vehicle.

The module simulator only sees the vehicle through VehicleSide: whether K5/K6 are closed and a
Thevenin equivalent of the battery (open-circuit voltage + internal resistance). Current is
signed, + = into the vehicle. Any battery model that provides these members plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class VehicleSide(Protocol):
    """What the module simulator needs from the vehicle. Read-only members may be attributes."""

    @property
    def contactors_closed(self) -> bool:
        """Vehicle K5/K6 (GB/T) closed: the battery is on the gun."""
        ...

    @property
    def open_circuit_voltage_v(self) -> float: ...

    @property
    def internal_resistance_ohm(self) -> float: ...

    def accept_current(self, current_a: float, dt_s: float) -> None:
        """current_a flowed into the battery for dt_s (negative: out of it, V2G)."""
        ...


def terminal_voltage_v(vehicle: VehicleSide, current_a: float) -> float:
    """Battery terminal voltage while current_a (+ = charging) flows: OCV + I*R."""
    return vehicle.open_circuit_voltage_v + current_a * vehicle.internal_resistance_ohm


@dataclass
class TrivialBattery:
    """Linear-OCV battery for driver and simulator tests; not a battery model."""

    capacity_ah: float = 100.0
    soc: float = 0.5
    empty_voltage_v: float = 300.0
    full_voltage_v: float = 400.0
    internal_resistance_ohm: float = 0.05
    contactors_closed: bool = False
    charge_in_ah: float = 0.0  # net charge accepted, for test assertions

    @property
    def open_circuit_voltage_v(self) -> float:
        return self.empty_voltage_v + self.soc * (self.full_voltage_v - self.empty_voltage_v)

    def accept_current(self, current_a: float, dt_s: float) -> None:
        delta_ah = current_a * dt_s / 3600.0
        self.charge_in_ah += delta_ah
        self.soc = min(1.0, max(0.0, self.soc + delta_ah / self.capacity_ah))
