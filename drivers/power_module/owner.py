"""ModuleBusOwner: the one task that talks on a power-module bus.

Modbus is strictly request/response, so concurrent users of one client would interleave their
transactions; everything goes through this owner instead. Commands are queued with submit()
(synchronous, callable from any task on the loop); the owner writes them, polls, and turns every
failure into an event for the core. Reconnection with back-off lives here, not in pymodbus.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from agent.core.events import DriverError, Event, ModuleLinkLost
from drivers.power_module.codec import SOURCE, ModuleCommand
from drivers.power_module.link import ModuleLink, ModuleLinkError, ModuleRefused
from drivers.task_end import reap

# 100 ms: EVerest polls UUGreen modules' V/I every 100 ms (UUGreenCanDevice.cpp); the State Grid
# module refreshes V/I at <= 200 ms, so polling faster shows nothing new (safety-limits.md §1.6).
POLL_PERIOD_S = 0.1
# A write the module refused (an exception answer) is tried again at once this many times: a
# stop must not wait for the next poll because the module refused one request.
REFUSED_WRITE_RETRIES = 2
# First retry quickly (a restarted TCP server is back within ~1 s), then double up to 2 s so a
# dead module costs at most one connect attempt (bounded by the request timeout) every 2 s.
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time, for run() outside the simulator."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ModuleBusOwner:
    def __init__(
        self,
        link: ModuleLink,
        *,
        poll_period_s: float = POLL_PERIOD_S,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.link = link
        self.poll_period_s = poll_period_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._queue: deque[ModuleCommand] = deque()
        self._backoff_s = backoff_min_s
        self._next_connect_t: float | None = None  # None: connect at the next service
        self._wake: asyncio.Event | None = None

    def submit(self, cmd: ModuleCommand) -> None:
        """Queue a command; written at the next service (run() wakes up for it)."""
        self._queue.append(cmd)
        if self._wake is not None:
            self._wake.set()

    async def service(self, t: float) -> list[Event]:
        """Pending writes, then one poll. Used lock-step by the simulator harness. Never raises."""
        events = self._stage_queued(t)
        if not await self._ensure_connected(t, events):
            return events
        try:
            await self._flush(t, events)
        except ModuleLinkError as exc:
            await self._lost(t, str(exc), events)
            return events
        status = await self.link.poll(t)
        if isinstance(status, ModuleLinkLost):
            if self.link.refused:
                events.append(status)
            else:
                await self._lost(t, status.detail, events)
        else:
            self._backoff_s = self.backoff_min_s
            events.append(status)
        return events

    async def run(self, clock: Clock, events_out: Callable[[Event], None]) -> None:
        """Poll every poll_period_s forever; commands are written as soon as they are submitted."""
        self._wake = asyncio.Event()
        next_poll = clock.now()
        try:
            while True:
                now = clock.now()
                if now >= next_poll:
                    next_poll = max(next_poll + self.poll_period_s, now)
                    events = await self.service(now)
                else:
                    events = await self._write_only(now)
                for event in events:
                    events_out(event)
                await self._sleep_or_wake(clock, next_poll - clock.now())
        finally:
            self._wake = None

    async def drain(self, t: float) -> list[Event]:
        """Write what is queued now (at exit, after run() was cancelled). Never raises."""
        if not self.link.connected:
            return []
        return await self._write_only(t)

    async def close(self) -> None:
        await self.link.close()

    # -- internals --------------------------------------------------------------------------

    def _stage_queued(self, t: float) -> list[Event]:
        events: list[Event] = []
        while self._queue:
            cmd = self._queue.popleft()
            try:
                self.link.stage(cmd)
            except (ValueError, TypeError) as exc:
                # Not written: the module keeps its previous setpoint, so the core must know.
                events.append(DriverError(t, SOURCE, f"command rejected, not written: {exc}"))
        return events

    async def _ensure_connected(self, t: float, events: list[Event]) -> bool:
        if self.link.connected:
            return True
        if self._next_connect_t is not None and t < self._next_connect_t:
            return False
        try:
            await self.link.connect()
        except ModuleLinkError as exc:
            await self._lost(t, str(exc), events)
            return False
        self._next_connect_t = None
        return True

    async def _lost(self, t: float, detail: str, events: list[Event]) -> None:
        # Close even on a mere timeout: a late answer on RTU would be taken for the next one.
        # (An exception answer is an answer: the link stays, and what failed is retried at
        # the next service without a back-off.)
        await self.link.close()
        self._next_connect_t = t + self._backoff_s
        events.append(ModuleLinkLost(t, f"{detail}; reconnect in {self._backoff_s:g} s"))
        self._backoff_s = min(2 * self._backoff_s, self.backoff_max_s)

    async def _write_only(self, t: float) -> list[Event]:
        events = self._stage_queued(t)
        if self.link.connected and self.link.pending_writes:
            try:
                await self._flush(t, events)
            except ModuleLinkError as exc:
                await self._lost(t, str(exc), events)
        return events

    async def _flush(self, t: float, events: list[Event]) -> None:
        """The queued writes; a refused one is reported and tried again at once (up to
        REFUSED_WRITE_RETRIES), then left queued for the next service. Raises
        ModuleLinkError for a link that did not answer."""
        for attempt in range(REFUSED_WRITE_RETRIES + 1):
            try:
                await self.link.flush()
                return
            except ModuleRefused as exc:
                if attempt == 0:
                    events.append(ModuleLinkLost(t, str(exc)))

    async def _sleep_or_wake(self, clock: Clock, seconds: float) -> None:
        if self._wake is None or self._queue:
            return
        self._wake.clear()
        sleeper = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                await reap(task)
