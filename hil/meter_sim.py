"""DC billing-meter simulator: measures the module's output, integrates energy both ways, and
serves the meter's register map over real Modbus (TCP, or RTU on a serial device).

The meter sits between K1/K2 and the gun, so it sees the current the vehicle takes or gives
at the gun's voltage. `error` scales what it measures (a drifting or miswired meter, for the
cross-check); step(dt) advances simulated time, no wall clock.
"""

from __future__ import annotations

from typing import Any

from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.dc_meter.codec import load_meter_map
from drivers.power_module.regmap import RegisterMap
from hil.module_sim import ModuleSim, SimServer


class MeterSim:
    def __init__(self, module: ModuleSim, regmap: RegisterMap | None = None,
                 unit_id: int = 1) -> None:
        self.module = module
        self.regmap = regmap or load_meter_map()
        self.unit_id = unit_id
        self.error = 1.0  # 1.0: exact; 0.9 reads 10 % low
        self.silent = False
        self.requests = 0  # Modbus requests received (the simulation's transport load)
        self.to_vehicle_kwh = 0.0
        self.from_vehicle_kwh = 0.0
        self.voltage_v = 0.0
        self.current_a = 0.0
        span = self.regmap.span
        self._base = span.start
        self._regs = [0] * len(span)

    def step(self, dt_s: float) -> None:
        m = self.module
        self.voltage_v = m.gun_voltage_v if m.contactors_closed else m.output_voltage_v
        self.current_a = m.current_a * self.error
        kwh = self.voltage_v * self.current_a * dt_s / 3.6e6
        if kwh >= 0:
            self.to_vehicle_kwh += kwh
        else:
            self.from_vehicle_kwh -= kwh

    @property
    def regs(self) -> list[int]:
        values = {"voltage": self.voltage_v, "current": self.current_a,
                  "power": self.voltage_v * self.current_a,
                  "energy_to_vehicle": self.to_vehicle_kwh % 4294967.296,
                  "energy_from_vehicle": self.from_vehicle_kwh % 4294967.296}
        for name, value in values.items():
            reg = self.regmap[name]
            clamped = min(max(value, reg.minimum), reg.maximum)
            for address, word in zip(reg.addresses, reg.encode(clamped), strict=True):
                self._regs[address - self._base] = word
        return self._regs

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> Any:
        offset = self._base - start_address
        current_registers[offset: offset + len(self._regs)] = self.regs
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.requests += 1
        return b"" if sending and self.silent else data

    def _device(self) -> SimDevice:
        blocks = [SimData(a, datatype=DataType.REGISTERS, readonly=True) for a in self.regmap.span]
        return SimDevice(id=self.unit_id, simdata=blocks, action=self._action)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[SimServer, int]:
        server = ModbusTcpServer(self._device(), address=(host, port),
                                 trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        listener: Any = server.transport
        return SimServer(server), int(listener.sockets[0].getsockname()[1])

    async def start_rtu(self, device: str, *, baudrate: int = 9600) -> SimServer:
        """Serve Modbus RTU on a serial device (a real port or a pty), as the meter does."""
        server = ModbusSerialServer(self._device(), port=device, baudrate=baudrate,
                                    trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        return SimServer(server)
