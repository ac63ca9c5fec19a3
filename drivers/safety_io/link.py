"""The safety RS-485 bus: I/O board and IMD, one owner for the bus. Thin: it polls,
writes what it is told (heartbeat, measurement start) and reports; it decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.core import timing as T
from agent.core.commands import KickSafetyWatchdog, ResetSafetyTrip, StartInsulationTest
from agent.core.events import Event, SafetyIoLost
from drivers.power_module.link import RtuTarget, TcpTarget, make_client, target_label
from drivers.power_module.owner import Clock
from drivers.safety_io.codec import decode_imd, decode_io, load_imd_map, load_io_map
from drivers.task_end import within

SafetyCommand = KickSafetyWatchdog | StartInsulationTest | ResetSafetyTrip
# Bender isoCHA answers within its 500 ms first-byte timeout (EVerest SerialCommHub).
REQUEST_TIMEOUT_S = 0.5
POLL_PERIOD_S = 0.1  # E-stop and temperatures every 100 ms; the E-stop also acts in hardware
# The IMD measures about once a second (Bender isoCHA: ../shared/reference/safety-limits.md
# §1.4; a fault must be found within 5-10 s): read twice a second, each new measurement
# reaches the core within 0.5 s. Reading it every 100 ms returned the same value 9 times
# in 10 and was a quarter of the agent's Modbus traffic.
IMD_PERIOD_S = 0.5
# The safety controller's watchdog, as armed: the core's figure (its safe-state hand-over
# counts on this trip time), never a second constant.
HEARTBEAT_TIMEOUT_MS = round(T.HEARTBEAT_TRIP.seconds * 1000)


class SafetyBusError(ConnectionError):
    pass


class SafetyBusOwner:
    def __init__(self, target: TcpTarget | RtuTarget, *, io_unit: int = 2, imd_unit: int = 3,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 poll_period_s: float = POLL_PERIOD_S) -> None:
        self.target = target
        self.poll_period_s = poll_period_s
        self._imd_every = max(1, round(IMD_PERIOD_S / poll_period_s))
        self._polls = 0
        self.io_unit, self.imd_unit = io_unit, imd_unit
        self.timeout_s = request_timeout_s
        self.io_map, self.imd_map = load_io_map(), load_imd_map()
        self._client: Any = None
        self._pending: list[tuple[int, int, list[int]]] = []  # (unit, address, words)

    def submit(self, command: SafetyCommand) -> None:
        if isinstance(command, KickSafetyWatchdog):
            reg = self.io_map["heartbeat"]
            self._pending.append((self.io_unit, reg.address, reg.encode(command.counter)))
        elif isinstance(command, ResetSafetyTrip):
            reg = self.io_map["trip_reset"]
            self._pending.append((self.io_unit, reg.address, reg.encode(1)))
        else:
            reg = self.imd_map["start_measurement"]
            self._pending.append((self.imd_unit, reg.address, reg.encode(1)))

    async def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            response = await within(call(), self.timeout_s + 0.1)
        except Exception as exc:  # timeouts, OSError and pymodbus exceptions alike
            raise SafetyBusError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if response.isError():
            raise SafetyBusError(f"{what}: exception response")
        return response

    async def _write(self, unit: int, address: int, words: list[int]) -> None:
        await self._call(f"write unit {unit} @{address}", lambda: self._client.write_registers(
            address, words, device_id=unit))

    async def _connect(self) -> None:
        self._client = make_client(self.target, self.timeout_s,
                                   f"safety {target_label(self.target)}#{self.io_unit}")
        if not await within(self._client.connect(), self.timeout_s + 0.1):
            raise SafetyBusError("safety bus: connect failed")
        reg = self.io_map["heartbeat_timeout"]
        await self._call("arm heartbeat", lambda: self._client.write_registers(
            reg.address, reg.encode(HEARTBEAT_TIMEOUT_MS), device_id=self.io_unit))

    async def service(self, t: float) -> list[Event]:
        """Pending writes, then one read of each device. Never raises."""
        try:
            if self._client is None or not self._client.connected:
                await self._connect()
            pending, self._pending = self._pending, []
            for unit, address, words in pending:
                await self._write(unit, address, words)
            io = await self._call("read I/O board", lambda: self._client.read_holding_registers(
                self.io_map.span.start, count=len(self.io_map.span), device_id=self.io_unit))
            imd_events: list[Event] = []
            if self._polls % self._imd_every == 0:
                imd = await self._call("read IMD", lambda: self._client.read_holding_registers(
                    self.imd_map.span.start, count=len(self.imd_map.span),
                    device_id=self.imd_unit))
                imd_events = [decode_imd(self.imd_map, t, list(imd.registers))]
            self._polls += 1
        except (SafetyBusError, OSError, TimeoutError) as exc:
            await self.close()
            return [SafetyIoLost(t, str(exc))]
        return [*decode_io(self.io_map, t, list(io.registers)), *imd_events]

    async def run(self, clock: Clock, events_out: Callable[[Event], None]) -> None:
        """Real time: a poll every poll_period_s, on a grid (a slow answer does not push
        every later poll back)."""
        next_poll = clock.now()
        while True:
            for event in await self.service(clock.now()):
                events_out(event)
            next_poll = max(next_poll + self.poll_period_s, clock.now())
            await clock.sleep(next_poll - clock.now())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
