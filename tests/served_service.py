"""The pile's service in this process against the loopback pile, for the tests that watch
it from outside (status, metrics, logs, diagnostics, the page): started, handed to the
test, stopped in order and the simulators closed, whatever the test did."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agent.runtime.config import parse_config
from agent.runtime.event_log import EventLog
from agent.runtime.pile_service import PileService
from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile


async def until(test: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def served(tmp_path: Path, cars: list[VehicleConfig], extra: dict[str, Any] | None = None,
                 events: EventLog | None = None, doc: dict[str, Any] | None = None
                 ) -> AsyncIterator[tuple[PileService, LoopbackPile]]:
    """extra: pile.toml sections besides the devices' and [ledger] (a file in tmp_path);
    doc: filled with the whole document the service was configured from."""
    pile = LoopbackPile(cars)
    devices = await pile.start()
    whole = {**devices, "ledger": {"path": str(tmp_path / "ledger.sqlite")}, **(extra or {})}
    if doc is not None:
        doc.update(whole)
    config = parse_config(whole)
    service = PileService(config, out=io.StringIO(), events=events)
    run = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.started.wait(), 20.0)
        yield service, pile
    finally:
        service.stop("test over")
        try:
            await asyncio.wait_for(run, 10.0)
        finally:
            await pile.close()
