"""Ending a helper task without losing a cancel of the task that ends it.

`task.cancel()` then `with suppress(CancelledError): await task` swallows *two* cancels:
the helper's own, which is meant, and one that reaches the waiting task while it waits
(its owner stopping it), which is not: the waiting task then runs on, a reconnect loop
reconnects for ever, and whoever awaits it hangs. `reap` lets the helper's own cancel go
and passes the waiting task's on (asyncio.Task.cancelling(), Python 3.11).

`asyncio.wait_for` drops a cancel the same way on Python 3.11: a cancel that arrives as the
awaited thing finishes (an event set in the same turn of the loop, a reply read) returns
its result instead, and a polling loop polls on after its owner stopped it. `within` is
wait_for without that: a cancel of the caller always propagates (also on 3.11.0-3.11.2,
whose asyncio.timeout could drop one that met its own expiry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def reap(task: asyncio.Future[Any], *, errors_too: bool = False) -> None:
    """Cancel `task` and wait for it to end. Its CancelledError ends here; a cancel of the
    caller propagates. `errors_too`: the task's own exception ends here as well."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        if not errors_too:
            raise


async def within(aw: Awaitable[T], timeout_s: float) -> T:
    """The result of `aw` if it comes within `timeout_s`, else TimeoutError (`aw` is then
    cancelled and awaited). A cancel of the caller always propagates (`aw` is ended first)."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    except asyncio.CancelledError:
        await reap(task, errors_too=True)
        raise
    if not task.done():
        await reap(task, errors_too=True)
        raise TimeoutError(f"no answer within {timeout_s:.3g} s")
    return task.result()
