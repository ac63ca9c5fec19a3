"""CAN frames handed over as they arrive, not at the next poll.

python-can's Notifier reads the bus for us: on the event loop through the socket's
descriptor (socketcan), or in a reader thread that hands each frame to the loop (buses
without one, such as `virtual`). Each frame is kept for the link's next non-blocking
`recv`, and `on_frame` wakes the control loop, so a BCL is decided on as soon as it is
on the wire. The link itself is unchanged: this is the bus it reads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import can

# How long the reader thread blocks in one `recv` before it looks whether it was stopped.
READER_TIMEOUT_S = 0.1


class NotifiedBus(can.Listener):
    def __init__(self, bus: can.BusABC, loop: asyncio.AbstractEventLoop,
                 on_frame: Callable[[], None]) -> None:
        self.bus = bus
        self._on_frame = on_frame
        self._frames: deque[can.Message] = deque()
        self._error: Exception | None = None
        self._notifier = can.Notifier(bus, [self], timeout=READER_TIMEOUT_S, loop=loop)

    # ---- the Notifier's side (on the event loop) -------------------------------------

    def on_message_received(self, msg: can.Message) -> None:
        self._frames.append(msg)
        self._on_frame()

    def on_error(self, exc: Exception) -> None:
        self._error = exc  # the reader stopped: the link reports it at its next poll
        self._on_frame()

    # ---- the link's side -------------------------------------------------------------

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self.bus.send(msg, timeout)

    def recv(self, timeout: float | None = None) -> can.Message | None:
        """The next frame that arrived, or None; never blocks (the link polls)."""
        if self._frames:
            return self._frames.popleft()
        if self._error is not None:
            raise can.CanError(f"CAN reader stopped: {self._error}")
        return None

    def close(self) -> None:
        """Stop reading (the Notifier then calls `stop`, the Listener's: nothing to do)."""
        self._notifier.stop(timeout=1.0)
