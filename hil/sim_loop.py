"""The event loop a simulation runs on.

A simulation over the real transports is mostly event-loop work: every Modbus request is
a few wake-ups of the loop on each side of a loopback socket, every simulated instant one
more. uvloop's loop (libuv, in C) does that work in about half the time of asyncio's own,
so `pile-agent sim` (one gun or a pile) and the bench's simulation figure run on it where
it is installed (a dependency on Linux). The traffic, the simulated clock and every result
are the same on either loop; `PILE_AGENT_SIM_LOOP=asyncio` picks asyncio's loop, to
compare or where uvloop cannot run.

The agent as a service (`pile-agent run`) keeps asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "PILE_AGENT_SIM_LOOP"
CHOICES = ("uvloop", "asyncio")


def _refuse(message: str) -> SystemExit:
    print(f"pile-agent: {message}", file=sys.stderr)
    return SystemExit(2)


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """(the factory, its name) as the environment asks; exit 2 with one line if it asks for
    a loop there is not."""
    wanted = os.environ.get(ENV, "").strip().lower() or "uvloop"
    if wanted not in CHOICES:
        raise _refuse(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "uvloop":
        try:
            import uvloop
        except ImportError:
            if os.environ.get(ENV):  # asked for by name: say it is not there
                raise _refuse(f"{ENV}=uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def loop_name() -> str:
    return loop_factory()[1]


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the simulation's loop."""
    try:
        factory, _name = loop_factory()
    except SystemExit:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
