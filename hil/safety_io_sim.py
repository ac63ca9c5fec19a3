"""The pile's safety bus, simulated: I/O board (unit 2) and IMD (unit 3) behind one
pymodbus server, speaking `drivers/safety_io/*.toml`.

Physics in `step(dt_s, current_a)` on simulated time: connector and cable temperatures
follow I² with a first-order lag; the safety controller trips (and latches) when the
heartbeat stops changing, and then forces the module's K1/K2 open and output off, as
the hardware enable line would; the IMD answers a measurement after ~1 s.
"""

from __future__ import annotations

import math
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.power_module.regmap import Access, RegisterMap
from drivers.safety_io.codec import IMD_ABOVE_RANGE_KOHM, load_imd_map, load_io_map
from drivers.safety_io.pt1000 import ohm_from_celsius
from hil.module_sim import ModuleSim, SimServer

IO_UNIT, IMD_UNIT = 2, 3
IMD_MEASUREMENT_S = 1.0  # Bender isoCHA: about one measurement per second


class _Image:
    def __init__(self, regmap: RegisterMap) -> None:
        self.map = regmap
        self.regs = [0] * len(regmap.span)
        self._put_as: dict[str, float] = {}  # an unchanged value is not encoded again
        for reg in regmap:
            if reg.default is not None:
                self.put(reg.name, reg.default)

    def put(self, name: str, value: float) -> None:
        if self._put_as.get(name) == value:
            return
        reg = self.map[name]
        clamped = min(max(value, reg.minimum), reg.maximum)
        for address, word in zip(reg.addresses, reg.encode(clamped), strict=True):
            self.regs[address - self.map.span.start] = word
        self._put_as[name] = value

    def written(self, address: int, word: int) -> str | None:
        """A master's write of one register: the register's name, None if it may not be
        written."""
        reg = self.map.by_address(address)
        if reg is None or reg.access is not Access.RW:
            return None
        self.regs[address - self.map.span.start] = word
        self._put_as.pop(reg.name, None)
        return reg.name

    def get(self, name: str) -> int:
        return self.regs[self.map[name].address - self.map.span.start]

    def device(self, unit: int, action: Any) -> SimDevice:
        blocks = [SimData(a, datatype=DataType.REGISTERS, readonly=not (
            (r := self.map.by_address(a)) is not None and r.access is Access.RW))
            for a in self.map.span]
        return SimDevice(id=unit, simdata=blocks, action=action)


class SafetyIoSim:
    def __init__(self, module: ModuleSim | None = None, ambient_c: float = 30.0) -> None:
        self.module = module
        self.io, self.imd = _Image(load_io_map()), _Image(load_imd_map())
        self.ambient_c = ambient_c
        self.connector_c = ambient_c
        self.cable_c = ambient_c
        # connector: +40 K at 250 A in steady state; contacts and cable heat over minutes
        self.k_per_a2 = 40.0 / 250.0**2
        self.tau_s = 300.0
        # fault injection
        self.silent = False
        self.estop_pressed = False
        # The E-stop loop also drops the hardware enable (as on a real board); the bench
        # turns this off to time the agent's own answer on the Modbus wire.
        self.estop_trips_hardware = True
        self.door_open = False
        self.gun_unlocked = False
        # Detection point 1 (GB/T 18487.1 Annex B): 4 V a car plugged in and latched (the
        # harness's default: a car is on the gun), 12 V the gun in its holster.
        self.cc1_v = 4.0
        self.force_connector_c: float | None = None
        self.requests = 0  # Modbus requests received (the simulation's transport load)
        self._reads = 0
        self.open_sensor = False
        self.insulation_ohm = 10e6
        self.imd_device_fault = False
        self.imd_hung = False  # fault injection: a measurement that never completes
        # safety controller
        self.tripped = False
        self.tripped_by_heartbeat = False  # the latched trip's cause was the watchdog
        self._last_heartbeat = self.io.get("heartbeat")
        self._heartbeat_age_s = 0.0
        self._armed = False
        self._imd_timer: float | None = None
        self._imd_result = False
        self._stale = True

    # ---- physics --------------------------------------------------------------

    def step(self, dt_s: float, current_a: float) -> None:
        steady = self.ambient_c + self.k_per_a2 * current_a**2
        alpha = 1.0 - math.exp(-dt_s / self.tau_s)
        self.connector_c += (steady - self.connector_c) * alpha
        self.cable_c += (steady * 0.9 + self.ambient_c * 0.1 - self.cable_c) * alpha
        self._step_heartbeat(dt_s)
        if self._imd_timer is not None and not self.imd_hung:
            self._imd_timer -= dt_s
            if self._imd_timer <= 0:
                self._imd_timer = None
                self.imd.put("start_measurement", 0)
                kohm = self.insulation_ohm / 1000.0
                self.imd.put("resistance", min(kohm, IMD_ABOVE_RANGE_KOHM))
                self._imd_result = True
        # As in ModuleSim: the image is brought up to date when a master reads it, not on
        # every simulated step.
        self._stale = True

    def _step_heartbeat(self, dt_s: float) -> None:
        beat = self.io.get("heartbeat")
        if beat != self._last_heartbeat:
            self._last_heartbeat, self._heartbeat_age_s, self._armed = beat, 0.0, True
        else:
            self._heartbeat_age_s += dt_s
        timeout_s = self.io.get("heartbeat_timeout") / 1000.0
        if self._armed and self._heartbeat_age_s > timeout_s and not self.tripped:
            self.tripped = self.tripped_by_heartbeat = True
        if self.estop_pressed and self.estop_trips_hardware:
            self.tripped, self.tripped_by_heartbeat = True, False
        if self.tripped and self.module is not None:
            self.module.force_safe()  # the hardware enable line drops K1/K2 and the output

    def _publish(self) -> None:
        self._stale = False
        # A real PT1000 front end never reads bit-identical for minutes: +-0.05 K of
        # deterministic measurement noise, so a steady current (a long V2G discharge at a
        # constant setpoint) does not look like a stuck sensor. A forced reading has none.
        self._reads += 1
        noise = 0.05 * math.sin(self._reads * 2.39996)
        t = self.force_connector_c if self.force_connector_c is not None \
            else self.connector_c + noise
        for name, temp in (("connector_dc_plus_ohm", t), ("connector_dc_minus_ohm", t),
                           ("cable_ohm", self.cable_c + noise)):
            self.io.put(name, 6553.5 if self.open_sensor else ohm_from_celsius(temp))
        bits = self.io.map["inputs"]
        word = ((0 if self.estop_pressed else bits.bit("estop_loop_closed"))
                | (0 if self.door_open else bits.bit("door_closed"))
                | (0 if self.gun_unlocked else bits.bit("gun_locked"))
                | (bits.bit("safety_relay_tripped") if self.tripped else 0)
                | (bits.bit("tripped_by_heartbeat") if self.tripped and self.tripped_by_heartbeat
                   else 0))
        self.io.put("inputs", word)
        self.io.put("cc1_voltage", self.cc1_v)
        status = self.imd.map["status"]
        self.imd.put("status", (status.bit("measurement_valid") if self._imd_result else 0)
                     | (status.bit("measuring") if self._imd_timer is not None else 0)
                     | (status.bit("device_fault") if self.imd_device_fault else 0))

    # ---- Modbus side ------------------------------------------------------------

    def _action(self, image: _Image) -> Any:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         current_registers: list[int],
                         set_values: list[int] | list[bool] | None) -> ExcCodes | None:
            if self.silent:
                return ExcCodes.DEVICE_BUSY
            if self._stale:
                self._publish()
            if set_values is not None and function_code != 3:
                for offset, word in enumerate(set_values):
                    name = image.written(address + offset, int(word))
                    if name is None:
                        return ExcCodes.ILLEGAL_ADDRESS
                    self._on_write(name, int(word))
            base = image.map.span.start - start_address
            current_registers[base:base + len(image.regs)] = image.regs
            return None
        return action

    def _on_write(self, name: str, value: int) -> None:
        if name == "start_measurement" and value == 1:
            self._imd_timer = IMD_MEASUREMENT_S
            self._imd_result = False
            self.imd.put("resistance", 0)
        elif name == "trip_reset" and value == 1 and not self.estop_pressed:
            self.tripped, self.tripped_by_heartbeat, self._heartbeat_age_s = False, False, 0.0
            self._armed = False  # armed again by the next heartbeat that moves
        self._publish()

    def _devices(self) -> list[SimDevice]:
        return [self.io.device(IO_UNIT, self._action(self.io)),
                self.imd.device(IMD_UNIT, self._action(self.imd))]

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.requests += 1
        return b"" if sending and self.silent else data

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[SimServer, int]:
        server = ModbusTcpServer(self._devices(), address=(host, port), trace_packet=self._trace)
        await server.serve_forever(background=True)
        listener: Any = server.transport
        return SimServer(server), int(listener.sockets[0].getsockname()[1])

    async def start_rtu(self, device: str, *, baudrate: int = 19200, parity: str = "E"
                        ) -> SimServer:
        """Serve RTU; 19200 8E1 as a Bender isoCHA ships."""
        server = ModbusSerialServer(self._devices(), port=device, baudrate=baudrate,
                                    parity=parity, trace_packet=self._trace)
        await server.serve_forever(background=True)
        return SimServer(server)
