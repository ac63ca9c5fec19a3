"""A pile's simulators on loopback, stepped on the wall clock, for `pile-agent run`: per
gun, the car on its own python-can virtual channel, the gun's output unit, its I/O board
with the IMD and its DC meter on Modbus TCP; with `groups`, the matrix board and the module
groups behind it, which alone feed the guns. Used by the real-time tests and the bench."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import can

from drivers.gbt27930.link import GbtLink, LinkNotice, LinkProblem, Role
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.matrix_sim import GroupSim, MatrixSim
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.safety_io_sim import SafetyIoSim

STEP_S = 0.01


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackGun:
    def __init__(self, vehicle: VehicleConfig, interface: str = "virtual",
                 index: int = 0) -> None:
        self.bms = BmsSimulator(vehicle)
        self.module = ModuleSim()
        self.safety = SafetyIoSim(self.module)
        self.meter = MeterSim(self.module)
        # virtual: a channel in this process; udp_loopback (drivers/udp_loopback, a bus the
        # agent can join from another process, on 127.0.0.1 only): a channel of its own per
        # gun, named so that two piles on one machine never share one.
        self.can: dict[str, Any] = {"interface": interface,
                                    "channel": f"pile-{uuid.uuid4().hex[:8]}-gun{index + 1}"}

    def open_bus(self) -> can.BusABC:
        return can.Bus(**self.can)

    async def start(self, servers: list[Any]) -> dict[str, Any]:
        module_server, module_port = await self.module.start_tcp()
        safety_server, safety_port = await self.safety.start_tcp()
        meter_server, meter_port = await self.meter.start_tcp("127.0.0.1", 0)
        servers += [module_server, safety_server, meter_server]
        return {
            "can": dict(self.can),
            "modbus": {"transport": "tcp", "host": "127.0.0.1", "port": module_port},
            "safety_bus": {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                           "port": safety_port},
            "meter": {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                      "port": meter_port},
        }


class LoopbackPile:
    def __init__(self, vehicle: VehicleConfig | list[VehicleConfig],
                 groups: list[GroupSim] | None = None, can_interface: str = "virtual") -> None:
        vehicles = vehicle if isinstance(vehicle, list) else [vehicle]
        self.guns = [LoopbackGun(v, can_interface, i) for i, v in enumerate(vehicles)]
        self.matrix = MatrixSim(groups, guns={i + 1: g.module for i, g in enumerate(self.guns)}) \
            if groups else None
        if self.matrix is not None:
            for g in self.guns:
                g.module.supply = (0.0, 0.0)
        self.stop = asyncio.Event()
        self.on_sent: Callable[[object], None] = lambda _message: None
        self._servers: list[Any] = []
        self._world: asyncio.Task[None] | None = None

    # The first gun's simulators, for a one-gun pile.
    @property
    def bms(self) -> BmsSimulator:
        return self.guns[0].bms

    @property
    def module(self) -> ModuleSim:
        return self.guns[0].module

    @property
    def safety(self) -> SafetyIoSim:
        return self.guns[0].safety

    async def start(self) -> dict[str, Any]:
        """Serve the devices and step the world; returns the pile.toml sections for them
        (one gun without a pool: [can], [modbus], [safety_bus], [meter]; else [[gun]] and
        [pile])."""
        sections = [await g.start(self._servers) for g in self.guns]
        doc: dict[str, Any] = sections[0] if len(self.guns) == 1 and not self.matrix \
            else {"gun": [{"charger_number": i + 1, **sec} for i, sec in enumerate(sections)]}
        if self.matrix is not None:
            server, port = await self.matrix.start_tcp()
            self._servers.append(server)
            doc["pile"] = {"matrix": {"transport": "tcp", "host": "127.0.0.1", "port": port},
                           "group": [{"id": g.id, "current_a": g.current_a,
                                      "power_w": g.power_w, "reach": sorted(g.reach)}
                                     for g in self.matrix.groups]}
        self._world = asyncio.create_task(self._step_world())
        return doc

    async def close(self) -> None:
        self.stop.set()
        if self._world is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._world
        for server in self._servers:
            await server.stop()

    async def _step_world(self) -> None:
        """The cars and the pile's physics, every 10 ms of wall time."""
        with contextlib.ExitStack() as stack:
            links = [GbtLink(stack.enter_context(g.open_bus()), Role.BMS) for g in self.guns]
            t0 = last = time.monotonic()
            while not self.stop.is_set():
                now = time.monotonic()
                t, dt = now - t0, max(now - last, 1e-3)
                last = now
                for g, link in zip(self.guns, links, strict=True):
                    for item in link.poll(t):
                        if not isinstance(item, LinkProblem | LinkNotice):
                            g.bms.receive(item, t)  # type: ignore[arg-type]
                    for message in g.bms.poll(t):
                        link.send(message, t)
                        self.on_sent(message)
                    g.bms.battery.current_a = 0.0
                if self.matrix is not None:
                    self.matrix.step(dt)
                for g in self.guns:
                    g.module.step(dt, g.bms.battery)
                    g.safety.step(dt, g.module.current_a)
                    g.meter.step(dt)
                await asyncio.sleep(STEP_S)
