"""Where session time comes from: the wall (monotonic) or a simulation."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time, seconds since the clock was made."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class SimClock:
    """Simulated time advanced by the harness; `speed` paces it against the wall.

    speed <= 0 runs as fast as the work allows (lock-step: every component finishes its
    step before time moves on, so results do not depend on machine load).
    """

    def __init__(self, speed: float = 0.0) -> None:
        self.t = 0.0
        self.speed = speed
        self._wall0 = time.monotonic()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await self.advance(seconds)

    async def advance(self, dt: float) -> None:
        self.t += dt
        if self.speed > 0:
            lag = self.t / self.speed - (time.monotonic() - self._wall0)
            await asyncio.sleep(max(lag, 0.0))
        else:
            await asyncio.sleep(0)
