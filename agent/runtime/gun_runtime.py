"""Feeds one gun's core with events from its drivers and executes the commands.

The same `step` serves a real-time loop and the simulator: only who calls it, and with
which clock, differs. Either calls it when something arrived and at `next_due` (the
session's deadline, event-driven time). Nothing here decides anything about the session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from agent.core.commands import (
    Command,
    KickSafetyWatchdog,
    LedgerCheckpoint,
    LedgerInterval,
    Notice,
    ResetSafetyTrip,
    SessionReport,
    SetBleeder,
    SetContactors,
    SetModuleOutput,
    StartInsulationTest,
    Transmit,
)
from agent.core.deadline import STEP_S
from agent.core.events import DriverError, EnergyHistory, Event, Tick
from agent.core.messages import ChargerMessage
from agent.core.outgoing import grid_slot
from agent.core.session import GunSession
from agent.core.states import State
from agent.ledger.store import Ledger, LedgerError

DAY_S = 86_400.0

ModuleCommand = SetModuleOutput | SetContactors | SetBleeder | StartInsulationTest


class VehicleLink(Protocol):
    def send(self, message: ChargerMessage, t: float) -> None: ...

    def poll_events(self, t: float) -> Sequence[Event]:
        """Everything received since the last call, as core events (messages, notices,
        problems); the driver maps its own items."""
        ...


class ModuleOwner(Protocol):
    def submit(self, command: ModuleCommand) -> None: ...

    async def service(self, t: float) -> list[Event]: ...


class SafetyOwner(Protocol):
    def submit(self, command: KickSafetyWatchdog | StartInsulationTest | ResetSafetyTrip
               ) -> None: ...

    async def service(self, t: float) -> list[Event]: ...


class Poller(Protocol):
    async def service(self, t: float) -> list[Event]: ...


Reporter = Callable[[Command], None]


def _next_on_grid(due: float, period: float, t: float) -> float:
    """The next service time after one at t that was due at `due`, on the grid the
    periodic messages keep (`grid_slot`): the services share their instants with them."""
    return grid_slot(due, period, t) + period


class GunRuntime:
    def __init__(
        self,
        session: GunSession,
        vehicle: VehicleLink,
        module: ModuleOwner,
        report: Reporter | None = None,
        *,
        module_period_s: float | None = 0.1,
        safety: SafetyOwner | None = None,
        meter: Poller | None = None,
        meter_period_s: float = 1.0,
        ledger: Ledger | None = None,
        gun: int = 1,
    ) -> None:
        """module_period_s: service the module bus from `step` at this period (lock-step
        simulation); None when the bus owner runs as its own task (real time)."""
        self.session = session
        self.vehicle = vehicle
        self.module = module
        self._report = report or (lambda _c: None)
        self.now = 0.0
        self._module_period_s = module_period_s
        self._next_module_t = -1.0
        self._module_dirty = False
        self.safety = safety
        self._next_safety_t = -1.0
        self.meter = meter
        self._meter_period_s = meter_period_s
        self._next_meter_t = -1.0
        self.ledger = ledger
        self.gun = gun
        self.on_sent: Callable[[ChargerMessage, float], None] = lambda _m, _t: None
        self._history_for: float | None = None  # the session whose history was fed
        self._key: tuple[float, str] | None = None  # (session start, its ledger key)

    async def step(self, t: float, extra_events: Iterable[Event] = ()) -> None:
        """One control cycle: vehicle input, module exchange, extra events, then a tick."""
        self.now = t
        for item in self._poll_vehicle(t):
            self.feed(item)
        for events in await self._service_buses(t):
            for event in events:
                self.feed(event)
        for event in extra_events:
            self.feed(event)
        self._feed_history(t)
        self.feed(Tick(t))

    async def _service_buses(self, t: float) -> list[list[Event]]:
        """The buses due at t (lock-step simulation), exchanged at the same time as the
        owners' tasks do in real time: each bus is a device of its own. Their events come
        back in a fixed order (module, safety, meter), whichever answered first."""
        period = self._module_period_s
        if period is None:
            return []
        due: list[Awaitable[list[Event]]] = []
        if t >= self._next_module_t - 1e-9 or self._module_dirty:
            self._module_dirty = False
            if t >= self._next_module_t - 1e-9:
                self._next_module_t = _next_on_grid(self._next_module_t, period, t)
            due.append(self.module.service(t))
        if self.safety is not None and t >= self._next_safety_t - 1e-9:
            self._next_safety_t = _next_on_grid(self._next_safety_t, period, t)
            due.append(self.safety.service(t))
        if self.meter is not None and t >= self._next_meter_t - 1e-9:
            self._next_meter_t = _next_on_grid(self._next_meter_t, self._meter_period_s, t)
            due.append(self.meter.service(t))
        if len(due) == 1:
            return [await due[0]]
        return list(await asyncio.gather(*due))

    def on_frames(self, t: float) -> bool:
        """Frames arrived on the CAN bus (real time): decode them, and decide at once on a
        message they completed. A frame that only moves a multi-packet transfer on (its
        answer is the link's own) needs no decision. True if the session ticked (so its
        deadline may have moved)."""
        self.now = t
        events = self._poll_vehicle(t)
        for event in events:
            self.feed(event)
        if events:
            self._feed_history(t)
            self.feed(Tick(t))
        return bool(events)

    def next_due(self) -> float:
        """When `step` is next needed if nothing arrives: the session's deadline, and in
        lock-step the bus services this runtime runs itself."""
        due = self.session.next_deadline()
        if self._module_period_s is not None:
            due = min(due, self._next_module_t, self._next_meter_t if self.meter else due,
                      self._next_safety_t if self.safety else due)
            if self._module_dirty:  # commands wait for the next step's module exchange
                due = min(due, self.now + STEP_S)
        return due

    def session_key(self) -> str:
        """The session's key in the ledger: gun, start time and a random part, so that two
        runs whose clocks start alike (the simulator's, a controller without RTC) or a
        restart onto the same ledger never share one."""
        d = self.session.data
        if self._key is None or self._key[0] != d.started_at:
            start = d.wall_clock_at_start if d.wall_clock_at_start is not None \
                else d.started_at
            self._key = (d.started_at, f"gun{self.gun}-{start:.3f}-{uuid.uuid4().hex[:8]}")
        return self._key[1]

    def session_id(self) -> str | None:
        """The running (or last) session's ledger key; None before the gun's first one."""
        if self.session.state is State.IDLE and (
                self._key is None or self._key[0] != self.session.data.started_at):
            return None
        return self.session_key()

    def _feed_history(self, t: float) -> None:
        """Once the vehicle is identified, what it moved earlier today, from the ledger (the
        per-day battery-health limits)."""
        d = self.session.data
        if self.ledger is None or d.brm is None or not d.brm.vin \
                or self._history_for == d.started_at:
            return
        self._history_for = d.started_at
        wall = d.wall_clock_at_start if d.wall_clock_at_start is not None else 0.0
        offset_s = self.session.ratings.utc_offset_h * 3600
        day_start = wall - (wall + offset_s) % DAY_S  # local midnight
        dis, thr = self.ledger.discharged_today(d.brm.vin, day_start)
        self.feed(EnergyHistory(t, d.brm.vin, dis, thr))

    def feed(self, event: Event) -> None:
        for command in self.session.handle(event):
            self._execute(command)

    def _poll_vehicle(self, t: float) -> list[Event]:
        try:
            return list(self.vehicle.poll_events(t))
        except Exception as exc:  # a driver bug becomes a fault the core acts on
            return [DriverError(t, "can", f"poll failed: {exc!r}", fatal=True)]

    def _execute(self, command: Command) -> None:
        match command:
            case Transmit(message=message):
                try:
                    self.vehicle.send(message, self.now)
                except Exception as exc:  # the next tick sees the fault
                    self.feed(DriverError(self.now, "can", f"send failed: {exc!r}", fatal=True))
                else:
                    self.on_sent(message, self.now)
            case KickSafetyWatchdog() | StartInsulationTest() | ResetSafetyTrip() \
                    if self.safety is not None:
                self.safety.submit(command)
            case SetModuleOutput() | SetContactors() | SetBleeder() | StartInsulationTest():
                self.module.submit(command)
                self._module_dirty = True
            case LedgerCheckpoint() if self.ledger is not None:
                try:
                    self.ledger.write_checkpoint(self.session_key(), self.gun, command)
                except LedgerError as exc:
                    self._report(Notice(self.now, "ledger_write_failed", str(exc)))
                    self.feed(DriverError(self.now, "ledger", str(exc), fatal=True))
            case LedgerCheckpoint():
                pass  # no ledger: nothing to keep
            case LedgerInterval() | SessionReport() if self.ledger is not None:
                # Durable first: a record is on disk before anyone hears of it.
                try:
                    if isinstance(command, LedgerInterval):
                        brm = self.session.data.brm
                        self.ledger.write_interval(self.session_key(), self.gun,
                                                   brm.vin if brm else "", command)
                    else:
                        self.ledger.write_session(self.session_key(), self.gun, command)
                except LedgerError as exc:
                    # Not durable: the session (if it is still running) ends, and the report
                    # below says the record is only in memory.
                    self._report(Notice(self.now, "ledger_write_failed", str(exc)))
                    self.feed(DriverError(self.now, "ledger", str(exc), fatal=True))
                self._report(command)
            case _:
                self._report(command)
