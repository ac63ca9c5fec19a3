"""One gun of the pile as a long-lived service: available -> a car plugs in -> session ->
unplugged -> available, car after car, until the agent stops.

The gun owns its drivers (CAN link, module, safety and meter buses), its core session and
its control loop, each as its own asyncio task. The loop steps the core when the
session's deadline comes (event-driven time, agent/core/deadline.py) and as soon as
something arrives for it. Presence comes from detection point 1 (CC1) on the gun's I/O
board (agent/core/plug_detection.py); a gun without an I/O board takes a car as plugged
in at start-up, once.

What goes wrong inside the gun stays inside it: an exception in a step becomes a fault of
this gun's session (the traceback in the log) and the loop goes on; a driver task that
dies is restarted. Nothing here decides anything about the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent.core.commands import SetContactors, SetModuleOutput
from agent.core.events import (
    DriverError,
    Event,
    PoolCapability,
    SafetyInputs,
    ShutdownDeadline,
    StopRequested,
    VehicleConnected,
    VehicleDisconnected,
)
from agent.core.pile import gives_less
from agent.core.plug_detection import PlugDetector
from agent.core.session import GunSession
from agent.core.states import State
from agent.runtime.clock import Clock
from agent.runtime.gun_runtime import GunRuntime
from agent.runtime.gun_telemetry import GunTelemetry
from drivers.dc_meter.link import MeterBusOwner
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner
from drivers.task_end import reap, within

log = logging.getLogger("pile_agent.gun")

# Timers are served on this grid (events wake at once). Coarser costs periodic messages
# their grid: a message due inside a slot goes out at the slot's end.
WAKE_QUANTUM_S = 0.001
# The loop wakes at least this often even with nothing due, so that its liveness (what the
# systemd watchdog is fed on) is always fresh.
MAX_SLEEP_S = 1.0
# A loop that has not come round for this long is hung (sd_notify WATCHDOG stops). Three
# times MAX_SLEEP_S: holds on a machine twice as slow as ours.
HANG_S = 3.0
# A driver task that died is restarted after this long (the driver's own reconnect
# back-off handles a device that does not answer; this is for a driver bug).
DRIVER_RESTART_S = 1.0
# A car the session refused to start with (E-stop pressed, I/O board not read yet) is
# offered again this often while it stays plugged in.
START_RETRY_S = 1.0
# An exception that repeats in a gun's step is logged (with its traceback) at most this
# often; `errors` counts every one, and the status line shows the count.
ERROR_LOG_PERIOD_S = 60.0
_DONE = (State.IDLE, State.FINISHED, State.FAULT)


@dataclass
class Doorbell:
    """Rung when a CAN frame arrives for the gun: the loop acts on it at once."""

    wake: asyncio.Event
    rung: bool = False

    def ring(self) -> None:
        self.rung = True
        self.wake.set()


@dataclass(frozen=True, slots=True)
class GunDrivers:
    module: ModuleBusOwner
    safety: SafetyBusOwner | None
    meter: MeterBusOwner | None
    meter_period_s: float = 1.0

    async def close(self, drain_s: float = 0.0) -> None:
        """Queued module commands (output off, K1/K2 open) written first, then every bus
        closed."""
        with contextlib.suppress(Exception):
            await within(self.module.drain(0.0), drain_s)
        await self.module.close()
        if self.safety is not None:
            await self.safety.close()
        if self.meter is not None:
            await self.meter.close()


class GunService:
    def __init__(self, number: int, session: GunSession, runtime: GunRuntime,
                 drivers: GunDrivers, clock: Clock, wall: Callable[[], float],
                 bell: Doorbell, in_service: bool = True, priority: int = 0,
                 telemetry: GunTelemetry | None = None) -> None:
        self.number = number
        self.session = session
        self.runtime = runtime
        self.drivers = drivers
        self.clock = clock
        self.wall = wall
        self.bell = bell
        self.wake = bell.wake
        self.inbox: list[Event] = []
        self.deadline = 0.0
        self.alive_at = clock.now()
        self.in_service = in_service
        self.priority = priority  # the pile's sharing order (module pool, pile setpoints)
        self.telemetry = telemetry or GunTelemetry()
        self.step_seconds: Callable[[float], None] = lambda _s: None  # a step's duration
        self.plug = PlugDetector() if drivers.safety is not None else None
        self._assume_plugged = drivers.safety is None  # no CC1: one car, at start-up
        self._served_car = False  # the plugged car was handed to the session
        self._handed_at = -math.inf
        self.stopping = ""  # the reason the agent stops ("" while it runs)
        self.errors = 0  # exceptions contained in this gun's loop
        self._logged_error_at = -math.inf
        self.sessions = 0  # sessions started
        self._data = session.data
        self._last_cap: PoolCapability | None = None
        self._cap: PoolCapability | None = None  # a looser pool word, for the next step
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.on_close: Callable[[], None] = lambda: None  # the CAN reader's, before the bus

    # ---- what others hand the gun ---------------------------------------------------------

    def put(self, event: Event) -> None:
        """A bus owner's (or upstream's) event: queued, and the loop woken for it."""
        self.inbox.append(event)
        self.wake.set()

    def offer_cap(self, cap: PoolCapability) -> None:
        """The module pool's word: one that gives less is decided on at once; one that gives
        as much or more waits for the next step (<= 50 ms)."""
        last, self._last_cap = self._last_cap, cap
        if gives_less(cap, last):
            self.put(cap)
        else:
            self._cap = cap

    def request_stop(self, reason: str) -> None:
        """The agent stops: an orderly stop of a running session (CST, ramp to <= 5 A, K1/K2
        open), and no new session."""
        self.stopping = reason
        self.put(StopRequested(self.clock.now(), reason))

    def set_in_service(self, in_service: bool) -> None:
        """Out of service: the running session goes on to its end, no new one starts."""
        self.in_service = in_service
        self.wake.set()

    # ---- what others read -----------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Nothing at stake: no session running, outputs off, K1/K2 open."""
        s = self.session
        return s.state in _DONE and not s.act.contactors_closed and not s.act.module_enabled

    def alive(self, now: float) -> bool:
        return now - self.alive_at <= HANG_S

    @property
    def plugged(self) -> bool:
        return self.plug.connected if self.plug is not None else self._assume_plugged

    def status(self) -> str:
        """As OCPP 2.1 ConnectorStatusEnumType names it."""
        state = self.session.state
        if state is State.FAULT:
            return "Faulted"
        if state is not State.IDLE or self.plugged:
            return "Occupied" if self.in_service or state is not State.IDLE else "Unavailable"
        return "Available" if self.in_service and not self.stopping else "Unavailable"

    def status_line(self) -> str:
        s = self.session
        line = f"gun {self.number}: {self.status().lower()}, {s.state.value}"
        if s.state not in (State.IDLE,):
            line += f", {s.act.current_a:+.0f} A"
        if self.errors:
            line += f", {self.errors} errors"
        return line

    # ---- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """The driver tasks and the control loop."""
        d = self.drivers
        self._supervise("module", lambda: d.module.run(self.clock, self.put))
        if d.safety is not None:
            safety = d.safety
            self._supervise("safety bus", lambda: safety.run(self.clock, self.put))
        if d.meter is not None:
            meter = d.meter
            self._supervise("meter", lambda: meter.run(self.clock, self.put, d.meter_period_s))
        self._tasks.append(asyncio.create_task(self._loop(), name=f"gun{self.number}"))

    def end_now(self, reason: str) -> None:
        """The stop budget is spent: what still runs ends at once (outputs off, K1/K2 open),
        reported with `reason`."""
        self.runtime.feed(ShutdownDeadline(self.clock.now(), reason))

    async def close(self, drain_s: float) -> None:
        """Stop the loop and the drivers; queued module commands (output off, K1/K2 open)
        reach the module first."""
        self._closed = True
        for task in self._tasks:
            await reap(task, errors_too=True)
        self.on_close()
        await self.drivers.close(drain_s)

    def _supervise(self, what: str,
                   run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def supervised() -> None:
            while not self._closed:
                try:
                    await run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("gun %d: the %s driver failed; restarting it", self.number,
                                  what)
                    self.put(DriverError(self.clock.now(), what.replace(" ", "_"),
                                         f"driver task failed: {exc!r}", fatal=True))
                await asyncio.sleep(DRIVER_RESTART_S)

        self._tasks.append(asyncio.create_task(supervised(), name=f"gun{self.number}-{what}"))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            now = self.clock.now()
            self.alive_at = now
            try:
                await self._serve(now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._contain(now, exc)
            self.step_seconds(self.clock.now() - now)
            self.wake.clear()
            if self.inbox or self.bell.rung:
                continue
            wake_at = min(self.deadline, now + MAX_SLEEP_S)
            wake_at = math.ceil(wake_at / WAKE_QUANTUM_S - 1e-6) * WAKE_QUANTUM_S
            # A timer handle, not wait_for: no Task per sleep.
            timer = loop.call_at(loop.time() + max(wake_at - self.clock.now(), 0.0),
                                 self.wake.set)
            await self.wake.wait()
            timer.cancel()

    def _contain(self, now: float, exc: Exception) -> None:
        """An exception in this gun's step: logged with its traceback, and a fault of this
        gun's session (outputs off, K1/K2 open); the loop and every other gun go on."""
        self.errors += 1
        if now - self._logged_error_at >= ERROR_LOG_PERIOD_S:
            # With its traceback, but not ten times a second for a bug that repeats.
            self._logged_error_at = now
            log.error("gun %d: exception in the control step (%d so far)", self.number,
                      self.errors, exc_info=exc)
        try:
            self.runtime.feed(DriverError(now, "runtime", f"step failed: {exc!r}", fatal=True))
        except Exception:
            log.exception("gun %d: the fault could not be handled; output off directly",
                          self.number)
            self.drivers.module.submit(SetModuleOutput(enabled=False, voltage_v=0.0,
                                                       current_a=0.0))
            self.drivers.module.submit(SetContactors(closed=False))
        self.deadline = now + MAX_SLEEP_S / 10

    async def _serve(self, now: float) -> None:
        due = now >= self.deadline
        if self._cap is not None:
            self.runtime.feed(self._cap)
            self._cap = None
        if self.bell.rung and not (self.inbox or due):
            self.bell.rung = False
            # Only frames: no step unless they completed a message, and no new deadline
            # unless the session ticked.
            if self.runtime.on_frames(now):
                self.deadline = self.runtime.next_due()
            return
        self.bell.rung = False
        events, self.inbox[:] = list(self.inbox), []
        await self.runtime.step(now, self._presence(now, events))
        self.deadline = self.runtime.next_due()
        if self.session.data is not self._data:  # a new session's data
            self._data = self.session.data
            self.sessions += 1

    def _presence(self, now: float, events: list[Event]) -> list[Event]:
        """The events with the vehicle's presence put in after the I/O board read that
        showed it; a car is handed to the session only while the gun is in service and the
        agent is not stopping."""
        out: list[Event] = []
        for event in events:
            out.append(event)
            if self.plug is not None and isinstance(event, SafetyInputs):
                change = self.plug.observe(event.t, event.cc1_voltage_v, self.wall())
                if isinstance(change, VehicleDisconnected):
                    self._served_car = False
                    out.append(change)
        retry = self._served_car and self.session.state is State.IDLE \
            and now - self._handed_at >= START_RETRY_S
        if self.plugged and (not self._served_car or retry) and self.in_service \
                and not self.stopping and self.session.state is State.IDLE:
            # Refused (an E-stop pressed, the safety bus not read yet): offered again each
            # START_RETRY_S while the car stays.
            self._served_car, self._handed_at = True, now
            out.append(VehicleConnected(now, wall_clock_s=self.wall()))
        return out
