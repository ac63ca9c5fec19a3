"""The DC side of a bench where the car is another process (`pile-agent hil car`): the
connector reads plugged and the output feeds a battery emulator, as a bench's battery
simulator on the DC bus does. Its contactor (the car's K5/K6) follows what the car says on
CAN, read from the bus without taking part: closed at the car's BRO(0xAA) (GB/T 27930: the
car is ready, its contactors closed), open once the current is <= 5 A after its BST, or at
its BSD. `pile-agent hil serve --external-cars` uses one per gun.
"""

from __future__ import annotations

import can

from hil.ev_battery import Battery, BatteryParams

BMS = 0xF4
BRO, BST, BSD, CHM = 0x09, 0x19, 0x1C, 0x26
OPEN_AT_A = 5.0  # GB/T 18487.1: the car opens K5/K6 at <= 5 A
OPEN_DEADLINE_S = 10.0  # ... or 10 s after its BST whatever the current


class BenchLoad:
    def __init__(self, bus: can.BusABC, params: BatteryParams, soc_pct: float) -> None:
        self.bus = bus
        self.battery = Battery(params, soc_pct)
        self._stop_at: float | None = None

    def step(self, t: float, module_current_a: float) -> None:
        while (msg := self.bus.recv(0.0)) is not None:
            can_id, data = msg.arbitration_id, bytes(msg.data)
            if can_id & 0xFF != BMS:
                continue
            pf = (can_id >> 16) & 0xFF
            if pf == BRO and data[:1] == b"\xaa" and self._stop_at is None:
                self.battery.contactors_closed = True
            elif pf == BST and self._stop_at is None and self.battery.contactors_closed:
                self._stop_at = t
            elif pf == BSD:
                self.battery.contactors_closed, self._stop_at = False, None
        if self._stop_at is not None and (abs(module_current_a) <= OPEN_AT_A
                                          or t - self._stop_at >= OPEN_DEADLINE_S):
            self.battery.contactors_closed = False
