"""`pile-agent run`: the pile's service against real interfaces, until it is stopped.

SIGTERM or SIGINT stops it in order (agent/runtime/pile_service.py: every session stopped
and recorded, exit 0 within 5 s); a second signal exits at once (the I/O board's
heartbeat trip holds the hardware safe). Under systemd (Type=notify) it reports READY,
STATUS and feeds the watchdog (agent/runtime/sd_notify.py; docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import IO

from agent.runtime.config import PileConfig
from agent.runtime.event_log import EventLog, route_python_logging
from agent.runtime.pile_service import PileService
from agent.runtime.sd_notify import SdNotifier


def install_signals(service: PileService,
                    exit_now: Callable[[int], None] = os._exit) -> None:
    """SIGTERM/SIGINT: an orderly stop; the second one: exit at once (128 + signal)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if service.stop_reason:
            print(f"pile-agent: {name} again: exiting now", file=sys.stderr, flush=True)
            exit_now(128 + signum)
            return
        service.stop(f"agent stopped ({name})")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def run_pile(config: PileConfig, can_log: str | None = None,
                   out: IO[str] = sys.stdout, *, signals: bool = True,
                   log_format: str = "text") -> int:
    """The service until SIGTERM/SIGINT (or, with signals=False, until cancelled: a
    harness that runs it on a thread of its own); 0 after an orderly stop, 2 if it cannot
    start. log_format: "text" (lines for people) or "json" (one object a line)."""
    events = EventLog(out, json_lines=log_format == "json")
    bridge = route_python_logging(events)
    try:
        service = PileService(config, out=out, can_log=can_log, notifier=SdNotifier(),
                              events=events)
        if signals:
            install_signals(service)
        return await service.run()
    finally:
        logging.getLogger("pile_agent").removeHandler(bridge)
