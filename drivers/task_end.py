"""Ending a helper task without losing a cancel of the task that ends it.

`task.cancel()` then `with suppress(CancelledError): await task` swallows *two* cancels:
the helper's own, which is meant, and one that reaches the waiting task while it waits
(its owner stopping it), which is not: the waiting task then runs on, a reconnect loop
reconnects for ever, and whoever awaits it hangs. `reap` lets the helper's own cancel go
and passes the waiting task's on (asyncio.Task.cancelling(), Python 3.11).
"""

from __future__ import annotations

import asyncio
from typing import Any


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
