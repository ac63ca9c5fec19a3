"""One gun's simulators on loopback, stepped on the wall clock, for `pile-agent run`: the
car on a python-can virtual bus, the power module, the I/O board with the IMD and the DC
meter on Modbus TCP. Used by the real-time test and by `pile-agent bench`."""

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
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.safety_io_sim import SafetyIoSim


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackPile:
    def __init__(self, vehicle: VehicleConfig) -> None:
        self.bms = BmsSimulator(vehicle)
        self.module = ModuleSim()
        self.safety = SafetyIoSim(self.module)
        self.meter = MeterSim(self.module)
        self.channel = f"loopback-{uuid.uuid4().hex[:8]}"
        self.stop = asyncio.Event()
        self.on_sent: Callable[[object], None] = lambda _message: None
        self._servers: list[Any] = []
        self._world: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        """Serve the devices and step the world; returns the pile.toml sections for them."""
        module_server, module_port = await self.module.start_tcp()
        safety_server, safety_port = await self.safety.start_tcp()
        meter_server, meter_port = await self.meter.start_tcp("127.0.0.1", 0)
        self._servers = [module_server, safety_server, meter_server]
        self._world = asyncio.create_task(self._step_world())
        return {
            "can": {"interface": "virtual", "channel": self.channel},
            "modbus": {"transport": "tcp", "host": "127.0.0.1", "port": module_port},
            "safety_bus": {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                           "port": safety_port},
            "meter": {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                      "port": meter_port},
        }

    async def close(self) -> None:
        self.stop.set()
        if self._world is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._world
        for server in self._servers:
            await server.stop()

    async def _step_world(self) -> None:
        """The car and the pile's physics, every 10 ms of wall time."""
        with can.Bus(interface="virtual", channel=self.channel) as bus:
            link = GbtLink(bus, Role.BMS)
            t0 = last = time.monotonic()
            while not self.stop.is_set():
                now = time.monotonic()
                t, dt = now - t0, max(now - last, 1e-3)
                last = now
                for item in link.poll(t):
                    if not isinstance(item, LinkProblem | LinkNotice):
                        self.bms.receive(item, t)  # type: ignore[arg-type]
                for message in self.bms.poll(t):
                    link.send(message, t)
                    self.on_sent(message)
                self.bms.battery.current_a = 0.0
                self.module.step(dt, self.bms.battery)
                self.safety.step(dt, self.module.current_a)
                self.meter.step(dt)
                await asyncio.sleep(0.01)
