"""A pile's pool of module groups behind a contactor matrix, served over real Modbus.

Each group is a rated source (A, W, both directions); the matrix closes a group to at most
one of the guns it is wired to. Each gun's output unit (a `ModuleSim`) takes as its
capability the sum of the healthy groups whose contactors read closed to it: no group, no
output. Physics in a pure `step()` on simulated time, as `ModuleSim`.

Recorded for the tests: every contactor that opened while its group carried more than 5 A
(`switched_under_load`), and every instant a group read closed to two guns.

Fault injection per group: `fault` (the group trips: its output stops at once and its fault
bit is set), `welded_to` (its contactor to that gun stays closed), `dead` (its contactors
never close), `delay_s` (feedback follows a command this late).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.module_matrix.codec import load_matrix_map, stride
from hil.module_sim import ModuleSim, SimServer

FC_READ_HOLDING = 3
UNDER_LOAD_A = 5.0  # GB/T 18487.1-2023 Annex E: no switching above 5 A


@dataclass
class GroupSim:
    id: str
    current_a: float = 100.0
    power_w: float = 60_000.0
    reach: frozenset[int] = frozenset({1, 2})
    fault: str = ""  # "" healthy, else a fault_word bit name
    welded_to: int | None = None
    dead: bool = False
    delay_s: float = 0.05  # a contactor's own operating time
    commanded: int = 0  # bit g-1: gun g
    closed: int = 0
    _since: float = 0.0
    output_a: float = 0.0


@dataclass
class MatrixSim:
    groups: list[GroupSim]
    guns: dict[int, ModuleSim] = field(default_factory=dict)  # gun -> its output unit
    unit_id: int = 1
    now: float = 0.0
    switched_under_load: list[tuple[float, str, int, float]] = field(default_factory=list)
    joined_two_guns: list[tuple[float, str, int]] = field(default_factory=list)
    refused: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self.regmap = load_matrix_map()
        self.stride = stride(self.regmap)

    # ---- physics ---------------------------------------------------------------------

    def step(self, dt_s: float) -> None:
        self.now += dt_s
        for g in self.groups:
            target = g.commanded
            if g.dead:
                target = 0
            if g.welded_to is not None:
                target |= 1 << (g.welded_to - 1)
            if target != g.closed and self.now - g._since >= g.delay_s:
                self._switch(g, target)
            if g.closed & (g.closed - 1):
                self.joined_two_guns.append((self.now, g.id, g.closed))
        self._supply()

    def _switch(self, g: GroupSim, target: int) -> None:
        # Opening breaks the group's own current. Closing joins a group whose output is
        # matched to the gun's voltage and carries nothing yet, so only openings count.
        opened = g.closed & ~target
        if opened and abs(g.output_a) > UNDER_LOAD_A:
            gun = opened.bit_length()
            self.switched_under_load.append((self.now, g.id, gun, g.output_a))
        g.closed = target

    def gun_groups(self, gun: int) -> list[GroupSim]:
        bit = 1 << (gun - 1)
        return [g for g in self.groups if g.closed & bit and not g.fault]

    def _supply(self) -> None:
        """Each gun's output unit gets the sum of its live groups; each group carries its
        share of the gun's current."""
        for gun, unit in self.guns.items():
            live = self.gun_groups(gun)
            amps = sum(g.current_a for g in live)
            watts = sum(g.power_w for g in live)
            unit.supply = (amps, watts)
            for g in live:
                g.output_a = unit.current_a * g.current_a / amps if amps else 0.0
        for g in self.groups:
            if g.fault or not g.closed:
                g.output_a = 0.0

    # ---- Modbus side -------------------------------------------------------------------

    def words(self) -> list[int]:
        out = [0] * (len(self.groups) * self.stride)
        rm = self.regmap
        for i, g in enumerate(self.groups):
            base = i * self.stride
            fault = rm["fault_word"].bit(g.fault) if g.fault else 0
            for name, value in (("contactor_command", g.commanded),
                                ("contactor_feedback", g.closed), ("fault_word", fault),
                                ("temperature", 25.0 + abs(g.output_a) * 0.1),
                                ("output_current", g.output_a)):
                reg = rm[name]
                clamped = min(max(value, reg.minimum), reg.maximum)
                out[base + reg.address] = reg.encode(clamped)[0]
        return out

    def accept_write(self, address: int, values: Sequence[int]) -> ExcCodes | None:
        reg = self.regmap["contactor_command"]
        for offset, word in enumerate(values):
            group, at = divmod(address + offset, self.stride)
            if group >= len(self.groups) or at != reg.address:
                return ExcCodes.ILLEGAL_ADDRESS
            if word & (word - 1):
                self.refused += 1
                return ExcCodes.ILLEGAL_VALUE  # never two guns on one group
        for offset, word in enumerate(values):
            g = self.groups[(address + offset) // self.stride]
            if word != g.commanded:
                g.commanded, g._since = word, self.now
        return None

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int],
                      set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        self.requests += 1
        if set_values is not None and function_code != FC_READ_HOLDING:
            result = self.accept_write(address, [int(v) for v in set_values])
            if result is not None:
                return result
        words = self.words()
        lo = max(start_address, 0)
        current_registers[: len(words) - lo] = words[lo:]
        return None

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[SimServer, int]:
        blocks = [SimData(a, datatype=DataType.REGISTERS, readonly=False)
                  for a in range(len(self.groups) * self.stride)]
        server: Any = ModbusTcpServer(SimDevice(id=self.unit_id, simdata=blocks,
                                                action=self._action), address=(host, port))
        await server.serve_forever(background=True)
        return SimServer(server), int(server.transport.sockets[0].getsockname()[1])
