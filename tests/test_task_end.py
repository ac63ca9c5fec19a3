"""drivers/task_end.py: ending a helper task passes a cancel of the waiting task on.

The pattern it replaces (`task.cancel()`, then `suppress(CancelledError): await task`)
swallowed a cancel that reached the waiting task while it waited for its helper: the OCPP
client's reconnect loop then ran on after its owner cancelled it, and the owner's
`await` hung (a CI run: test_one_connection_an_evse_per_gun, 300 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from drivers.task_end import reap, within


async def _swallowing_end(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _loop_cancelled_while_it_ends_a_helper(
        end: Callable[[asyncio.Future[Any]], Awaitable[None]]) -> str:
    """A reconnect loop whose owner cancels it while it waits for a helper to end (the
    helper takes a moment after its own cancel). What became of the loop."""
    release = asyncio.Event()
    rounds = 0

    async def helper() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # a reader closing its socket, say
            raise

    async def loop() -> None:
        nonlocal rounds
        while rounds < 3:  # bounded, so a loop that runs on ends and the test can say so
            rounds += 1
            h = asyncio.ensure_future(helper())
            await asyncio.sleep(0)
            await end(h)

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0.01)  # the loop now waits for its first helper to end
    task.cancel()  # its owner stops it
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait({task}, timeout=2.0)
    if task.cancelled():
        return f"cancelled in round {rounds}"
    return f"ran on to round {rounds}" if task.done() else "still running"


def test_a_cancel_of_the_waiting_task_is_passed_on() -> None:
    assert asyncio.run(_loop_cancelled_while_it_ends_a_helper(reap)) == "cancelled in round 1"
    # The old pattern swallows it (the loop runs on): the test can tell the two apart.
    assert asyncio.run(_loop_cancelled_while_it_ends_a_helper(_swallowing_end)) \
        == "ran on to round 3"


def test_the_helper_s_own_end_stays_here() -> None:
    async def body() -> None:
        async def fails() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ValueError("closing failed") from None

        await reap(asyncio.ensure_future(asyncio.Event().wait()))  # its cancel ends here
        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0)
        await reap(task, errors_too=True)  # its error too, when asked
        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="closing failed"):
            await reap(task)

    asyncio.run(body())


async def _poller_stopped_as_it_wakes(
        wait: Callable[[Awaitable[Any], float], Awaitable[Any]]) -> str:
    """A polling loop that waits on a wake-up with a timeout; its owner cancels it in the
    very turn of the loop that wakes it (a message queued as the service stops)."""
    wake = asyncio.Event()
    rounds = 0

    async def poller() -> None:
        nonlocal rounds
        while rounds < 50:  # bounded, so a loop that runs on ends and the test can say so
            rounds += 1
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await wait(wake.wait(), 0.02)

    task = asyncio.ensure_future(poller())
    await asyncio.sleep(0.01)
    wake.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5.0)
    return "cancelled" if task.cancelled() else f"ran on to round {rounds}"


def test_a_cancel_that_meets_the_wake_up_is_passed_on() -> None:
    assert asyncio.run(_poller_stopped_as_it_wakes(within)) == "cancelled"
    if sys.version_info < (3, 12):  # the test tells the two apart where wait_for drops it
        assert asyncio.run(_poller_stopped_as_it_wakes(asyncio.wait_for)) == "ran on to round 50"


def test_within_answers_times_out_and_ends_what_it_waited_for() -> None:
    async def body() -> None:
        assert await within(asyncio.sleep(0.01, "answer"), 1.0) == "answer"
        ended = asyncio.Event()

        async def slow() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                ended.set()

        with pytest.raises(TimeoutError):
            await within(slow(), 0.05)
        assert ended.is_set(), "what timed out was left running"
        ended.clear()
        waiter = asyncio.ensure_future(within(slow(), 10.0))
        await asyncio.sleep(0.01)
        waiter.cancel()  # the caller is cancelled: what it waited for ends too
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert ended.is_set()
        with pytest.raises(ValueError, match="bad reply"):
            await within(_raises(), 1.0)

    asyncio.run(body())


async def _raises() -> None:
    raise ValueError("bad reply")

