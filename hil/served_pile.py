"""`pile-agent hil serve`: the simulated hardware of the pile a pile.toml describes, as a
process of its own, at the addresses the file names, until it is stopped.

Per gun: the car on its CAN channel (the `udp_loopback` interface, a bus between
processes that stays on 127.0.0.1), the output unit, the I/O board with the IMD and the DC
meter over Modbus TCP; the matrix board and its module groups when the file has [pile].
Cars come and go: each arrives after a gap, plugs in (CC1 to 4 V on the I/O board), is
served, and leaves (CC1 to 12 V) when its BMS has finished, or when its owner is back.
`pile-agent run --config` on the same file is the agent that serves them.

Loopback only: every address must be in 127.0.0.0/8 or ::1 (a simulator on a real
network would answer for a real pile's devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import can

from agent.runtime.config import GunSetup, PileConfig
from drivers.gbt27930.codec import assign_extension_pgns
from drivers.gbt27930.link import GbtLink, LinkNotice, LinkProblem, Role
from hil.bench_load import BenchLoad
from hil.ev_battery import BatteryParams
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.matrix_sim import GroupSim, MatrixSim
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.safety_io_sim import IMD_UNIT, IO_UNIT, SafetyIoSim

STEP_S = 0.01
CC1_PLUGGED_V, CC1_HOLSTER_V = 4.0, 12.0  # GB/T 18487.1 Annex B (agent/core/plug_detection)


@dataclass(frozen=True)
class CarPlan:
    """Who comes to the pile: drawn from `seed`, so a run is repeatable."""

    seed: int = 1
    v2g_share: float = 0.5  # of the cars, those that offer V2G (docs/V2G.md)
    kwh: tuple[float, float] = (0.2, 0.6)  # energy each car asks for: short sessions
    gap_s: tuple[float, float] = (2.0, 5.0)  # between one car leaving and the next arriving
    dwell_s: float = 2.0  # a finished car stays plugged in this long
    stay_s: float = 45.0  # its owner is back after this: the car stops and leaves
    cars: int = 0  # per gun, then no more (0: for ever)
    # Of the cars, those whose BMS falls silent mid-session (a broken car or a pulled
    # connector's CAN pair): the agent must end the session on the timeout, and the gun
    # serve the next car after this one is unplugged.
    fault_share: float = 0.0
    silent_leave_s: float = 5.0  # a silent car is unplugged this long after it fell silent


def draw_car(rng: random.Random, plan: CarPlan, gun: int, n: int) -> VehicleConfig:
    """A car asking for a few tenths of a kWh: a 400 V pack, SOC from 40 to 70 %."""
    battery = BatteryParams(capacity_ah=rng.uniform(100.0, 160.0))
    start = rng.uniform(40.0, 70.0)
    kwh = rng.uniform(*plan.kwh)
    nominal_kwh = battery.capacity_ah * battery.cells_in_series * 3.65 / 1000.0
    target = min(start + 100.0 * kwh / nominal_kwh, 95.0)
    v2g = rng.random() < plan.v2g_share
    return VehicleConfig(battery=battery, start_soc_pct=start, target_soc_pct=target,
                         max_charge_current_a=rng.choice((150.0, 200.0, 250.0)),
                         vin=f"LSIMSERVE{gun:02d}{n:06d}", v2g=v2g,
                         soc_floor_pct=max(start - 10.0, 20.0), energy_window_kwh=kwh)


def loopback_problems(config: PileConfig) -> list[str]:
    """Every address the simulators would serve that is not on loopback, or a transport
    they cannot serve."""
    out: list[str] = []

    def check(where: str, host: str) -> None:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                out.append(f"{where}.host {host}: not a loopback address")
        except ValueError:
            out.append(f"{where}.host {host!r}: not an IP address")

    for g in config.guns:
        where = f"gun {g.ratings.charger_number}"
        if g.can.interface != "udp_loopback":
            out.append(f"{where}: can.interface must be \"udp_loopback\" (a bus between "
                       f"processes on 127.0.0.1), got {g.can.interface!r}")
        for name, bus in (("modbus", g.modbus), ("safety_bus", g.safety_bus),
                          ("meter", g.meter)):
            if name != "modbus" and not bus.enabled:  # type: ignore[union-attr]
                continue
            if bus.transport == "rtu":
                continue  # a device on a serial line is the bench's real one: not served
            check(f"{where}.{name}", bus.host)
        if not g.safety_bus.enabled:
            out.append(f"{where}.safety_bus.enabled: the served pile's cars plug in through "
                       "the I/O board's CC1 input; enable it")
    if config.pile is not None:
        check("pile.matrix", config.pile.matrix.host)
    if config.ems.enabled:
        check("ems", config.ems.host)
    return out


@dataclass
class ServedGun:
    setup: GunSetup
    module: ModuleSim
    safety: SafetyIoSim
    meter: MeterSim
    rng: random.Random
    plan: CarPlan
    say: Callable[[str], None]
    bms: BmsSimulator | None = None
    link: GbtLink | None = None
    load: BenchLoad | None = None  # --external-cars: the car is another process
    arrives_at: float = 0.0
    plugged_at: float = 0.0
    leaves_at: float | None = None
    silent_at: float | None = None  # this car's BMS falls silent then
    cars: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def number(self) -> int:
        return self.setup.ratings.charger_number

    def step_car(self, t: float) -> None:
        """The car's side of the gun: arrive, talk, leave."""
        assert self.link is not None
        items = self.link.poll(t)
        if self.bms is None:
            if (not self.plan.cars or self.cars < self.plan.cars) and t >= self.arrives_at:
                self.cars += 1
                vehicle = draw_car(self.rng, self.plan, self.number, self.cars)
                self.bms, self.plugged_at, self.leaves_at = BmsSimulator(vehicle), t, None
                self.silent_at = t + self.rng.uniform(8.0, 15.0) \
                    if self.rng.random() < self.plan.fault_share else None
                if self.silent_at is not None:
                    self.bms.silence(self.silent_at)
                self.safety.cc1_v = CC1_PLUGGED_V
                self.say(f"gun {self.number}: car {self.cars} plugged in ({vehicle.vin}, "
                         f"{'V2G' if vehicle.v2g else 'charge only'}, "
                         f"{vehicle.start_soc_pct:.1f} -> {vehicle.target_soc_pct:.1f} %)")
            return
        bms = self.bms
        for item in items:
            if not isinstance(item, LinkProblem | LinkNotice):
                bms.receive(item, t)  # type: ignore[arg-type]
        for message in bms.poll(t):
            self.link.send(message, t)
        bms.battery.current_a = 0.0
        if t - self.plugged_at >= self.plan.stay_s and bms.phase not in ("stopping", "done"):
            bms.request_stop()  # the owner is back
        if self.leaves_at is None and self.silent_at is not None and t >= self.silent_at:
            self.say(f"gun {self.number}: car {self.cars} fell silent (injected)")
            self.leaves_at = t + self.plan.silent_leave_s
        if self.leaves_at is None and (bms.finished or t - self.plugged_at
                                       >= self.plan.stay_s + 30.0):
            self.leaves_at = t + self.plan.dwell_s
        if self.leaves_at is not None and t >= self.leaves_at \
                and not bms.battery.contactors_closed:
            self.say(f"gun {self.number}: car {self.cars} leaves ({bms.phase}, SOC "
                     f"{bms.battery.soc_pct:.1f} %)")
            self.safety.cc1_v = CC1_HOLSTER_V
            self.bms = None
            self.arrives_at = t + self.rng.uniform(*self.plan.gap_s)


class ServedPile:
    def __init__(self, config: PileConfig, plan: CarPlan | None = None,
                 out: IO[str] | None = None, external: VehicleConfig | None = None) -> None:
        self.config = config
        # With external cars (`pile-agent hil car` on each gun's CAN channel), no car is
        # simulated here: each connector reads plugged and feeds a battery emulator with
        # this car's battery (hil/bench_load.py).
        self.external = external
        self.plan = plan or CarPlan()
        self.out = out
        rng = random.Random(self.plan.seed)
        self.guns: list[ServedGun] = []
        for setup in config.guns:
            module = ModuleSim(unit_id=setup.modbus.unit_id)
            gun = ServedGun(setup, module, SafetyIoSim(module), MeterSim(module),
                            random.Random(rng.random()), self.plan, self._say)
            gun.safety.cc1_v = CC1_HOLSTER_V
            gun.arrives_at = gun.rng.uniform(0.5, 2.0)
            self.guns.append(gun)
        p = config.pile
        self.matrix = MatrixSim([GroupSim(gr.id, gr.current_a, gr.power_w, frozenset(gr.reach))
                                 for gr in p.groups],
                                guns={g.number: g.module for g in self.guns}) \
            if p is not None else None
        if self.matrix is not None:
            for g in self.guns:
                g.module.supply = (0.0, 0.0)
        self._servers: list[Any] = []
        self._buses: list[can.BusABC] = []

    def _say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    async def start(self) -> None:
        """Serve every device at its configured address and join every gun's CAN channel."""
        assign_extension_pgns(self.config.extension_pgns())
        try:
            for g in self.guns:
                s = g.setup
                if s.safety_bus.io_unit != IO_UNIT or s.safety_bus.imd_unit != IMD_UNIT:
                    raise ValueError(f"gun {g.number}: the served I/O board is unit {IO_UNIT} "
                                     f"and the IMD unit {IMD_UNIT}")
                for name, link, sim in (("output unit", s.modbus, g.module),
                                        ("I/O board", s.safety_bus, g.safety),
                                        ("DC meter", s.meter, g.meter)):
                    if getattr(link, "enabled", True) is False:
                        continue
                    if link.transport == "rtu":  # bench mode: the real one on its line
                        self._say(f"gun {g.number}: the {name} on {link.serial_port} is the "
                                  "bench's real one: not simulated")
                        continue
                    server, _ = await sim.start_tcp(link.host, link.port)
                    self._servers.append(server)
                bus = can.Bus(interface="udp_loopback", channel=s.can.channel)
                self._buses.append(bus)
                if self.external is not None:
                    g.load = BenchLoad(bus, self.external.battery, self.external.start_soc_pct)
                    g.safety.cc1_v = CC1_PLUGGED_V
                else:
                    g.link = GbtLink(bus, Role.BMS)
            if self.matrix is not None and self.config.pile is not None:
                mx = self.config.pile.matrix
                server, _ = await self.matrix.start_tcp(mx.host, mx.port)
                self._servers.append(server)
        except BaseException:
            await self.close()
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """The cars and the pile's physics every 10 ms of wall time, until `stop`."""
        t0 = last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            t, dt = now - t0, max(now - last, 1e-3)
            last = now
            for g in self.guns:
                if g.load is not None:
                    g.load.step(t, g.module.current_a)
                else:
                    g.step_car(t)
            if self.matrix is not None:
                self.matrix.step(dt)
            for g in self.guns:
                car = g.load.battery if g.load is not None else (
                    g.bms.battery if g.bms is not None else None)
                g.module.step(dt, car)
                g.safety.step(dt, g.module.current_a)
                g.meter.step(dt)
            await asyncio.sleep(STEP_S)

    async def close(self) -> None:
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.stop()
        self._servers.clear()
        for bus in self._buses:
            bus.shutdown()
        self._buses.clear()


async def serve(config: PileConfig, plan: CarPlan, out: IO[str],
                external: VehicleConfig | None = None) -> int:
    """`pile-agent hil serve`: until SIGTERM or SIGINT; 2 if an address cannot be served."""
    import signal
    import sys

    problems = loopback_problems(config)
    if problems:
        for problem in problems:
            print(f"pile-agent hil serve: {problem}", file=sys.stderr)
        return 2
    pile = ServedPile(config, plan, out, external)
    try:
        await pile.start()
    except (OSError, ValueError, can.CanError) as exc:
        print(f"pile-agent hil serve: cannot serve the pile: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"pile-agent hil serve: {len(pile.guns)} gun(s) served on loopback", file=out,
          flush=True)
    try:
        await pile.run(stop)
    finally:
        await pile.close()
    return 0


EXAMPLE_CONFIG = """\
# A 2-gun V2G pile on loopback: `pile-agent hil serve --config pile.toml` serves its
# simulated hardware, `pile-agent run --config pile.toml` is the agent that runs it.
# Every address is on 127.0.0.1; CAN goes over udp_loopback (drivers/udp_loopback).
# The served cars ask for a few tenths of a kWh each: every gun sees a new car within
# a minute.

[ledger]
path = "pile-ledger.sqlite"

# What an operator sees (docs/OPERATIONS.md): `pile-agent status --config pile.toml`, the
# status page at http://127.0.0.1:8750/ and Prometheus metrics at :9464/metrics.
[status]
host = "127.0.0.1"
port = 8750

[metrics]
enabled = true
host = "127.0.0.1"
port = 9464

# The site EMS / VPP's SunSpec Modbus TCP server (model 714: a port per gun).
[ems]
enabled = true
host = "127.0.0.1"
port = 15020
allow_discharge = true

[[gun]]
charger_number = 1
max_current_a = 250.0
max_power_w = 150000.0
max_discharge_current_a = 150.0
max_discharge_power_w = 60000.0
can = { interface = "udp_loopback", channel = "pile-example-gun1" }
modbus = { transport = "tcp", host = "127.0.0.1", port = 15021 }
safety_bus = { enabled = true, transport = "tcp", host = "127.0.0.1", port = 15022 }
meter = { enabled = true, transport = "tcp", host = "127.0.0.1", port = 15023 }

[[gun]]
charger_number = 2
max_current_a = 250.0
max_power_w = 150000.0
max_discharge_current_a = 150.0
max_discharge_power_w = 60000.0
can = { interface = "udp_loopback", channel = "pile-example-gun2" }
modbus = { transport = "tcp", host = "127.0.0.1", port = 15031 }
safety_bus = { enabled = true, transport = "tcp", host = "127.0.0.1", port = 15032 }
meter = { enabled = true, transport = "tcp", host = "127.0.0.1", port = 15033 }
"""
