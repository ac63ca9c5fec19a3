"""Power-module simulator: physics in a pure step(), served over real Modbus (TCP or RTU).

step(dt_s, vehicle) advances simulated time; nothing here reads a wall clock, so the harness
decides how fast time runs. The Modbus side (pymodbus server) only records that a request
arrived and applies writes; the watchdog counts *simulated* time since the last request.
Call step() and serve requests from the same event loop thread (no locking).

Model (one equivalent stack, not per-module):
- current: first-order (current_tau_s) towards the setpoint, slew-limited (ramp_a_per_s);
  capability, power and CV limits act instantly, as a module's inner loops do. Output off
  stops the current at once (the module stops switching).
- CV: in charge mode the battery terminal (OCV + I*R) never exceeds setpoint_voltage; in
  discharge mode it is never pulled below it.
- thermal: T -> ambient + losses * R_th with time constant R_th * C_th, losses = I^2 * R_loss
  + idle losses; linear derate from 55 degC to 0 at 75 degC, trip (fault + output off) at
  75 degC (State Grid 20 kW module: full load to 55 degC, off above 75 degC; safety-limits.md §2).
- contactors switch instantly; feedback is the mirror contact. A welded contactor reads closed
  and keeps the gun coupled whatever the command.
- insulation: result insulation_delay_s after a request, counted only while K1/K2 are closed
  and the gun is within 5 % of the test voltage.
- bidirectional stage (V2G): in discharge mode the stack inverts into the grid within its
  reverse capability (max_discharge_current_a / max_discharge_power_w, derated like the
  forward one); AC power = DC power less conversion losses (efficiency). The grid's
  frequency and voltage are inputs (`grid_frequency_hz`, `grid_voltage_pu`, `islanded`): outside
  the protection band, or islanded, the stage trips its output at once and sets the fault bit.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.power_module.codec import MODE_CHARGE
from drivers.power_module.regmap import Access, RegisterMap, load_register_map
from hil.dc_link import VehicleSide, terminal_voltage_v

FC_READ_HOLDING = 3


def derate_factor(p: ModuleParams, temperature_c: float) -> float:
    """The share of its capability the stack gives at this temperature (linear derate)."""
    return min(1.0, max(0.0, (p.trip_c - temperature_c) / (p.trip_c - p.derate_start_c)))


def heated(p: ModuleParams, temperature_c: float, current_a: float, output_on: bool,
           dt_s: float) -> float:
    """The stack's temperature dt_s later, carrying current_a: first order towards
    ambient + losses * R_th (exact for a constant current over the interval)."""
    losses = p.loss_ohm * current_a**2 + (p.idle_loss_w if output_on else 0.0)
    steady_c = p.ambient_c + losses * p.thermal_resistance_k_per_w
    decay = math.exp(-dt_s / (p.thermal_resistance_k_per_w * p.thermal_capacity_j_per_k))
    return steady_c + (temperature_c - steady_c) * decay


@dataclass
class ModuleParams:
    max_current_a: float = 250.0
    max_power_w: float = 150_000.0
    max_voltage_v: float = 1000.0
    current_tau_s: float = 0.2
    # 400 A/s: the emergency ramp must reach I_now / t_limit (250 A in < 1 s, IEC23-14 CC.3.4);
    # well above the >= 20 A/s minimum of IEC23-14 101.2.1.3.
    ramp_a_per_s: float = 400.0
    voltage_tau_s: float = 0.05
    output_decay_tau_s: float = 0.5
    ambient_c: float = 25.0
    loss_ohm: float = 0.05
    idle_loss_w: float = 100.0
    thermal_resistance_k_per_w: float = 0.015
    thermal_capacity_j_per_k: float = 4000.0
    derate_start_c: float = 55.0
    trip_c: float = 75.0
    trip_reset_c: float = 70.0
    gun_decay_tau_s: float = 5.0
    # 0.15 s: 1000 V -> 1.3 V in 1 s, inside GB44263 §8.1.4 (< 60 V within 1 s of the bleeder).
    bleeder_tau_s: float = 0.15
    insulation_delay_s: float = 1.0
    insulation_tolerance: float = 0.05
    # Bidirectional stage: reverse capability (0 A: a charge-only stack) and efficiency.
    max_discharge_current_a: float = 200.0
    max_discharge_power_w: float = 120_000.0
    efficiency: float = 0.96
    # Grid protection band of the stage (GB/T 33593 / NB/T 33015 as commonly quoted,
    # [unverified]; safety-limits.md §3.2): frequency 49.5-50.2 Hz, voltage 0.85-1.1 pu.
    grid_frequency_min_hz: float = 49.5
    grid_frequency_max_hz: float = 50.2
    grid_voltage_min_pu: float = 0.85
    grid_voltage_max_pu: float = 1.10


class SimServer:
    """A running pymodbus server for one ModuleSim."""

    def __init__(self, server: Any) -> None:
        self._server = server

    async def stop(self) -> None:
        await self._server.shutdown()


class ModuleSim:
    def __init__(
        self, params: ModuleParams | None = None, regmap: RegisterMap | None = None,
        unit_id: int = 1,
    ) -> None:
        self.params = params or ModuleParams()
        self.regmap = regmap or load_register_map()
        self.unit_id = unit_id
        # fault injection
        self.silent = False
        self.force_over_temperature = False
        self.welded_contactor = False  # both poles
        self.welded_poles = 0  # bit 0: K1 (DC+) welded, bit 1: K2 (DC-)
        self.reports_mismatch = True  # False: a module without its own mismatch fault bit
        # A broken module (issue 24's fault campaign), each over the real Modbus transport:
        self.lies_readback = False  # its command registers read 0, whatever it holds and does
        self.zero_status = False  # every register reads 0 (a dead board behind a live gateway)
        self.reads_voltage_v: float | None = None  # its voltage sensors read this
        self.overshoot_a = 0.0  # its current loop runs this far past the setpoint
        self.refuse_every = 0  # every Nth request answered with an exception, not acted on
        self.refuse_code = 4  # ... this one (04 device failure, 02 illegal address, 06 busy)
        self.stuck = False  # its registers read as they were when it stuck (a hung gateway)
        self._stuck_image: list[int] | None = None
        self.answer_delay_s = 0.0  # each request acted on at once, answered this late
        self.capability_scale = 1.0  # 0: derated to nothing (it says so, and gives nothing)
        self.feedback = 0  # mirror contacts, bit per pole
        self.insulation_ohm = 10e6
        # the grid, as the bidirectional stage sees it
        self.grid_frequency_hz = 50.0
        self.grid_voltage_pu = 1.0
        self.islanded = False
        # A pooled pile: what the module groups switched to this gun give (A, W), set by the
        # matrix each step (hil/matrix_sim.py); None: the unit has its own stack.
        self.supply: tuple[float, float] | None = None
        # physical state, readable by tests
        self.current_a = 0.0
        self.output_voltage_v = 0.0
        self.gun_voltage_v = 0.0
        self.temperature_c = self.params.ambient_c
        self.contactors_closed = False
        self.output_on = False
        self.faults = 0
        self.since_last_request_s = 0.0
        self.requests = 0
        self._insulation_running = False
        self._insulation_timer_s = 0.0
        self._insulation_result_kohm: float | None = None
        span = self.regmap.span
        self._base = span.start
        self._regs = [0] * len(span)
        # What each register was last put as (so an unchanged value is not encoded again)
        # and what it decodes to (so the physics does not decode its command registers at
        # every step): a simulation reads and writes the image hundreds of times a
        # simulated second. Both are dropped when the register's words change otherwise.
        self._put_as: dict[str, float] = {}
        self._decoded: dict[str, float] = {}
        self._fault_bits: dict[str, int] = {}  # fault_word's masks by name, as asked
        self._stale = True
        for reg in self.regmap:
            if reg.access is Access.RW and reg.default is not None:
                self._put(reg.name, reg.default)
        self._publish()

    # -- register helpers -------------------------------------------------------------------

    @property
    def regs(self) -> list[int]:
        """The register image as a master would read it now."""
        if self._stale:
            self._publish()
        return self._regs

    def _put(self, name: str, value: float) -> None:
        if self._put_as.get(name) == value:
            return
        reg = self.regmap[name]
        clamped = min(max(value, reg.minimum), reg.maximum)
        for address, word in zip(reg.addresses, reg.encode(clamped), strict=True):
            self._regs[address - self._base] = word
        self._put_as[name] = value
        self._decoded.pop(name, None)

    def _get(self, name: str) -> float:
        value = self._decoded.get(name)
        if value is None:
            reg = self.regmap[name]
            offset = reg.address - self._base
            value = self._decoded[name] = reg.decode(self._regs[offset : offset + reg.width])
        return value

    def firmware_sets(self, name: str, value: float) -> None:
        """The module's own firmware changes a register (a test's broken module)."""
        self._put(name, value)

    def _bit(self, name: str) -> int:
        mask = self._fault_bits.get(name)
        if mask is None:
            mask = self._fault_bits[name] = self.regmap["fault_word"].bit(name)
        return mask

    def _set_fault(self, name: str, active: bool) -> None:
        self.faults = self.faults | self._bit(name) if active else self.faults & ~self._bit(name)

    def force_safe(self) -> None:
        """The safety controller's hardware enable dropped: output off, K1/K2 open."""
        self._put("output_enable", 0)
        self._put("contactor_command", 0)

    # -- physics ----------------------------------------------------------------------------

    def derate_factor(self) -> float:
        return derate_factor(self.params, self.temperature_c) * self.capability_scale

    def capability(self) -> tuple[float, float]:
        """(current A, power W) available now, after temperature derating."""
        f = self.derate_factor()
        if self.supply is not None:
            return self.supply[0] * f, self.supply[1] * f
        return self.params.max_current_a * f, self.params.max_power_w * f

    def reverse_capability(self) -> tuple[float, float]:
        """(current A, power W) the stage can take back from the vehicle now."""
        f = self.derate_factor()
        if self.supply is not None:
            return self.supply[0] * f, self.supply[1] * f
        return self.params.max_discharge_current_a * f, self.params.max_discharge_power_w * f

    @property
    def ac_power_w(self) -> float:
        """AC side, + = drawn from the grid: losses add when charging, subtract when exporting."""
        dc_w = self.current_a * self.output_voltage_v
        eff = self.params.efficiency
        return dc_w / eff if dc_w >= 0 else dc_w * eff

    def _grid_trips(self) -> int:
        p, bit = self.params, self._bit
        word = 0
        if self.islanded:
            word |= bit("anti_islanding")
        if not p.grid_frequency_min_hz <= self.grid_frequency_hz <= p.grid_frequency_max_hz:
            word |= bit("grid_frequency")
        if self.grid_voltage_pu > p.grid_voltage_max_pu:
            word |= bit("grid_over_voltage")
        if self.grid_voltage_pu < p.grid_voltage_min_pu:
            word |= bit("grid_under_voltage")
        return word

    def step(self, dt_s: float, vehicle: VehicleSide | None = None) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"step: dt_s must be finite and > 0, got {dt_s!r}")
        p = self.params
        # Heat from the interval's starting current first, so the published current never
        # exceeds the published (derated) capability of the same snapshot.
        self.temperature_c = heated(p, self.temperature_c, self.current_a, self.output_on, dt_s)
        self._step_protections(dt_s)
        commanded = self._get("contactor_command") == 1
        welded = 0b11 if self.welded_contactor else self.welded_poles & 0b11
        self.feedback = 0b11 if commanded else welded
        # Current flows only through both poles; one welded pole alone carries none.
        self.contactors_closed = self.feedback == 0b11
        self._set_fault("contactor_mismatch", self.reports_mismatch
                        and self.feedback != (0b11 if commanded else 0))
        grid_bits = (self._bit("anti_islanding") | self._bit("grid_frequency")
                     | self._bit("grid_over_voltage") | self._bit("grid_under_voltage"))
        self.faults = (self.faults & ~grid_bits) | self._grid_trips()
        self.output_on = self._get("output_enable") == 1 and not (
            self.faults & (self._bit("over_temperature") | self._bit("watchdog_expired")
                           | grid_bits)
        )
        loaded = self.contactors_closed and vehicle is not None and vehicle.contactors_closed
        if vehicle is not None and loaded:
            self._step_loaded(dt_s, vehicle)
        else:
            self.current_a = 0.0
            self._step_unloaded(dt_s, vehicle)
        self._set_fault("over_voltage", self.output_voltage_v > 1.1 * p.max_voltage_v)
        self._set_fault("over_current", abs(self.current_a) > 1.1 * p.max_current_a)
        self._step_insulation(dt_s)
        # Encoding every register each step would dominate a simulation; the image is
        # brought up to date when someone reads it (a Modbus request or `regs`).
        self._stale = True

    def _step_protections(self, dt_s: float) -> None:
        self.since_last_request_s += dt_s
        timeout_s = self._get("watchdog_timeout") / 1000.0
        expired = self._bit("watchdog_expired")
        if self.since_last_request_s >= timeout_s and not self.faults & expired:
            self._set_fault("watchdog_expired", True)
            self._put("output_enable", 0)
            # Fail-safe contract of the output unit: a lost master also opens K1/K2,
            # since the master can no longer command them open itself.
            self._put("contactor_command", 0)
        hot = self.force_over_temperature or self.temperature_c >= self.params.trip_c
        if hot:
            self._set_fault("over_temperature", True)
            self._put("output_enable", 0)
        elif self.temperature_c < self.params.trip_reset_c:
            self._set_fault("over_temperature", False)

    def _step_loaded(self, dt_s: float, vehicle: VehicleSide) -> None:
        p = self.params
        ocv, r = vehicle.open_circuit_voltage_v, vehicle.internal_resistance_ohm
        sign = 1.0 if self._get("mode") == MODE_CHARGE else -1.0
        cap_i, cap_p = self.capability() if sign > 0 else self.reverse_capability()
        if not self.output_on:
            self.current_a = 0.0
        else:
            # A runaway loop (overshoot_a) passes its setpoint and its own capability alike.
            target = sign * (min(self._get("setpoint_current"), cap_i) + self.overshoot_a)
            alpha = 1.0 - math.exp(-dt_s / p.current_tau_s)
            delta = (target - self.current_a) * alpha
            limit = p.ramp_a_per_s * dt_s
            self.current_a += min(max(delta, -limit), limit)
            # Inner loops (instant): capability, power, then CV against the battery.
            power_a = cap_p / max(ocv, 1.0)
            bound = min(cap_i, power_a) + self.overshoot_a
            self.current_a = min(max(self.current_a, -bound), bound)
            self._clamp_cv(sign, ocv, r)
        vehicle.accept_current(self.current_a, dt_s)
        if self.output_on:
            # The step moved the battery's OCV (charging raises it); the voltage loop holds
            # the terminal voltage to the setpoint at the end of the interval too. The energy
            # of the interval used the current before this trim (under 1 A at most).
            self._clamp_cv(sign, vehicle.open_circuit_voltage_v, r)
        self.gun_voltage_v = terminal_voltage_v(vehicle, self.current_a)
        self.output_voltage_v = self.gun_voltage_v

    def _clamp_cv(self, sign: float, ocv: float, r: float) -> None:
        """The voltage loop: charging never pushes the terminal above the voltage setpoint,
        discharging never pulls it below (the setpoint is a ceiling or a floor)."""
        v_set = self._get("setpoint_voltage")
        cv_a = (v_set - ocv) / r if r > 0 else (math.inf if v_set >= ocv else -math.inf)
        if sign > 0:
            self.current_a = min(max(self.current_a, 0.0), max(cv_a, 0.0))
        else:
            self.current_a = max(min(self.current_a, 0.0), min(cv_a, 0.0))

    def _step_unloaded(self, dt_s: float, vehicle: VehicleSide | None) -> None:
        p = self.params
        bleeding = self._get("bleeder_command") == 1
        if self.output_on and (self.supply is None or self.supply[1] > 0):
            target = min(self._get("setpoint_voltage"), p.max_voltage_v)
            tau = p.voltage_tau_s
        else:
            target = 0.0
            tau = min(p.output_decay_tau_s, p.bleeder_tau_s) if (
                bleeding and self.contactors_closed) else p.output_decay_tau_s
        self.output_voltage_v = target + (self.output_voltage_v - target) * math.exp(-dt_s / tau)
        if vehicle is not None and vehicle.contactors_closed:
            self.gun_voltage_v = vehicle.open_circuit_voltage_v
        elif self.contactors_closed:
            self.gun_voltage_v = self.output_voltage_v
        else:
            tau = p.bleeder_tau_s if bleeding else p.gun_decay_tau_s
            self.gun_voltage_v *= math.exp(-dt_s / tau)

    def _step_insulation(self, dt_s: float) -> None:
        if not self._insulation_running:
            return
        test_v = self._get("insulation_test_voltage")
        at_voltage = abs(self.gun_voltage_v - test_v) <= self.params.insulation_tolerance * test_v
        if self.contactors_closed and at_voltage:
            self._insulation_timer_s += dt_s
        if self._insulation_timer_s >= self.params.insulation_delay_s:
            self._insulation_running = False
            self._insulation_result_kohm = self.insulation_ohm / 1000.0
            self._put("insulation_test_request", 0)

    def _publish(self) -> None:
        self._stale = False
        self._put("output_voltage", self.output_voltage_v if self.reads_voltage_v is None
                  else self.reads_voltage_v)
        self._put("output_current", self.current_a)
        self._put("gun_voltage", self.gun_voltage_v if self.reads_voltage_v is None
                  else self.reads_voltage_v)
        self._put("module_temperature", self.temperature_c)
        self._put("contactor_feedback", self.feedback)
        self._put("fault_word", self.faults)
        flags = self.regmap["state_flags"]
        self._put("state_flags", (flags.bit("output_on") if self.output_on else 0)
                  | (flags.bit("derating") if self.derate_factor() < 1.0 else 0)
                  | (flags.bit("insulation_test_running") if self._insulation_running else 0))
        done = self._insulation_result_kohm is not None
        self._put("insulation_done", 1 if done else 0)
        result = self._insulation_result_kohm
        self._put("insulation_resistance", 0.0 if result is None else result)
        cap_i, cap_p = self.capability()
        self._put("capability_current", cap_i)
        self._put("capability_power", cap_p)
        rev_i, rev_p = self.reverse_capability()
        self._put("capability_discharge_current", rev_i)
        self._put("capability_discharge_power", rev_p)
        self._put("grid_frequency", self.grid_frequency_hz)
        self._put("ac_power", self.ac_power_w)

    # -- Modbus side ------------------------------------------------------------------------

    def accept_write(self, address: int, values: list[int]) -> ExcCodes | None:
        """Validate and apply a master write, as the module firmware would."""
        decoded: list[tuple[str, int, float]] = []
        for offset, word in enumerate(values):
            reg = self.regmap.by_address(address + offset)
            if reg is None or reg.access is not Access.RW or reg.width != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            try:
                decoded.append((reg.name, word, reg.decode([word])))
            except ValueError:
                return ExcCodes.ILLEGAL_VALUE
        for name, word, value in decoded:
            self._regs[self.regmap[name].address - self._base] = word
            self._put_as.pop(name, None)
            self._decoded[name] = value
            if name == "output_enable" and value == 1:
                self._set_fault("watchdog_expired", False)  # a deliberate restart
            elif name == "insulation_test_request":
                self._insulation_running = value == 1
                self._insulation_timer_s = 0.0
                self._insulation_result_kohm = None
        self._publish()
        return None

    async def _action(
        self, function_code: int, start_address: int, address: int, count: int,
        current_registers: list[int], set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.silent:
            return ExcCodes.DEVICE_BUSY  # the answer is dropped in _trace_packet
        self.since_last_request_s = 0.0
        self.requests += 1
        if self.refuse_every and self.requests % self.refuse_every == 0:
            return ExcCodes(self.refuse_code)
        if set_values is not None and function_code != FC_READ_HOLDING:
            result = self.accept_write(address, [int(v) for v in set_values])
            if result is not None:
                return result
        offset = self._base - start_address
        current_registers[offset : offset + len(self._regs)] = self.read_image()
        if self.answer_delay_s > 0:
            await asyncio.sleep(self.answer_delay_s)
        return None

    def read_image(self) -> list[int]:
        """The registers as a master reads them: the image, unless the module is broken."""
        if self.zero_status:
            return [0] * len(self._regs)
        if self.stuck:
            if self._stuck_image is None:
                self._stuck_image = list(self.regs)
            return list(self._stuck_image)
        if not self.lies_readback:
            return self.regs
        image = list(self.regs)
        for reg in self.regmap:
            if reg.access is Access.RW:
                for a in reg.addresses:
                    image[a - self._base] = 0
        return image

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        return b"" if sending and self.silent else data

    def _device(self) -> SimDevice:
        blocks = []
        for address in self.regmap.span:
            reg = self.regmap.by_address(address)
            writable = reg is not None and reg.access is Access.RW
            blocks.append(SimData(address, datatype=DataType.REGISTERS, readonly=not writable))
        return SimDevice(id=self.unit_id, simdata=blocks, action=self._action)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[SimServer, int]:
        """Serve Modbus TCP; port=0 picks a free port, returned as the second item."""
        server = ModbusTcpServer(
            self._device(), address=(host, port), trace_packet=self._trace_packet
        )
        await server.serve_forever(background=True)
        listener: Any = server.transport  # an asyncio.Server once listening
        actual_port = int(listener.sockets[0].getsockname()[1])
        return SimServer(server), actual_port

    async def start_rtu(
        self, device: str, *, baudrate: int = 115200, parity: str = "N",
        bytesize: int = 8, stopbits: int = 1,
    ) -> SimServer:
        """Serve Modbus RTU on a serial device path (a real port or a pty slave)."""
        server = ModbusSerialServer(
            self._device(), port=device, baudrate=baudrate, parity=parity,
            bytesize=bytesize, stopbits=stopbits, trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        return SimServer(server)
