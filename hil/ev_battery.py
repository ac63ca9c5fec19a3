"""A traction battery for the simulator: OCV(SOC) table, internal resistance, heat.

Pure and deterministic. It implements `hil.dc_link.VehicleSide`, so the power-module
simulator can push current into it once both sides' contactors are closed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# NCM cell open-circuit voltage against SOC (%), a typical shape: steep at both ends.
NCM_OCV: tuple[tuple[float, float], ...] = (
    (0.0, 3.30), (5.0, 3.45), (10.0, 3.55), (20.0, 3.62), (30.0, 3.66), (40.0, 3.71),
    (50.0, 3.76), (60.0, 3.83), (70.0, 3.91), (80.0, 3.99), (90.0, 4.08), (100.0, 4.18),
)


@dataclass(frozen=True)
class BatteryParams:
    cells_in_series: int = 96
    capacity_ah: float = 120.0
    resistance_ohm: float = 0.08
    ocv_table: tuple[tuple[float, float], ...] = NCM_OCV
    thermal_mass_j_per_k: float = 300_000.0
    cooling_w_per_k: float = 60.0
    ambient_c: float = 25.0


class Battery:
    def __init__(self, params: BatteryParams, soc_pct: float) -> None:
        self.params = params
        self.soc_pct = min(max(soc_pct, 0.0), 100.0)
        self.temperature_c = params.ambient_c
        self.contactors_closed = False  # vehicle K5/K6
        self.current_a = 0.0
        self.energy_in_kwh = 0.0  # at the terminals, net, + = charged
        self.energy_out_kwh = 0.0  # at the terminals, discharged (V2G), a magnitude
        self._socs = [p[0] for p in params.ocv_table]

    def cell_ocv_v(self) -> float:
        table, i = self.params.ocv_table, bisect.bisect_right(self._socs, self.soc_pct)
        if i <= 0:
            return table[0][1]
        if i >= len(table):
            return table[-1][1]
        (s0, v0), (s1, v1) = table[i - 1], table[i]
        return v0 + (v1 - v0) * (self.soc_pct - s0) / (s1 - s0)

    @property
    def open_circuit_voltage_v(self) -> float:
        return self.cell_ocv_v() * self.params.cells_in_series

    @property
    def internal_resistance_ohm(self) -> float:
        return self.params.resistance_ohm

    def terminal_voltage_v(self, current_a: float | None = None) -> float:
        i = self.current_a if current_a is None else current_a
        return self.open_circuit_voltage_v + i * self.params.resistance_ohm

    def max_cell_voltage_v(self) -> float:
        # The highest cell sits a little above the average; 10 mV is a typical spread.
        return self.terminal_voltage_v() / self.params.cells_in_series + 0.010

    def accept_current(self, current_a: float, dt_s: float) -> None:
        """Signed current (+ = charging) for dt_s seconds."""
        if not self.contactors_closed:
            current_a = 0.0
        p = self.params
        kwh = self.terminal_voltage_v(current_a) * current_a * dt_s / 3.6e6
        self.energy_in_kwh += kwh
        if kwh < 0:
            self.energy_out_kwh -= kwh
        self.soc_pct = min(max(self.soc_pct + current_a * dt_s / 36.0 / p.capacity_ah, 0.0),
                           100.0)
        heat_w = current_a**2 * p.resistance_ohm - p.cooling_w_per_k * (
            self.temperature_c - p.ambient_c)
        self.temperature_c += heat_w * dt_s / p.thermal_mass_j_per_k
        self.current_a = current_a
