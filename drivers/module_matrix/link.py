"""The matrix board's bus: one owner writes the contactor commands it is given and polls
the board; every answer or failure becomes an event. Thin: the pool decides."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from agent.core.commands import SetMatrix
from agent.core.events import MatrixLost, MatrixStatus
from drivers.module_matrix.codec import (
    decode_status,
    encode_command,
    load_matrix_map,
    read_chunks,
)
from drivers.power_module.link import RtuTarget, TcpTarget, make_client, target_label
from drivers.power_module.owner import Clock
from drivers.task_end import within

# 100 ms, as a power module's poll (drivers/power_module/owner.py): a matrix contactor's
# feedback is judged within 1 s (T.CONTACTOR_FEEDBACK), so ten reads fit in that budget.
POLL_PERIOD_S = 0.1
REQUEST_TIMEOUT_S = 0.5

MatrixEvent = MatrixStatus | MatrixLost


class MatrixBusOwner:
    def __init__(self, target: TcpTarget | RtuTarget, n_groups: int, unit_id: int = 1) -> None:
        self.target = target
        self.n_groups = n_groups
        self.unit_id = unit_id
        self.regmap = load_matrix_map()
        self._client: Any = None
        self._pending: dict[int, SetMatrix] = {}  # the latest command per group
        self._wake: asyncio.Event | None = None

    def submit(self, command: SetMatrix) -> None:
        self._pending[command.group] = command
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _call(self, call: Callable[[], Any]) -> Any:
        response = await within(call(), 2 * REQUEST_TIMEOUT_S)
        if response.isError():
            raise ConnectionError(f"exception {getattr(response, 'exception_code', '?')}")
        return response

    async def _write(self, address: int, words: list[int]) -> None:
        await self._call(lambda: self._client.write_registers(address, words,
                                                              device_id=self.unit_id))

    async def _connect(self) -> None:
        await self.close()
        self._client = make_client(self.target, REQUEST_TIMEOUT_S,
                                   f"matrix {target_label(self.target)}#{self.unit_id}")
        if not await within(self._client.connect(), 2 * REQUEST_TIMEOUT_S):
            await self.close()
            raise ConnectionError("connect failed")

    async def write_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for command in pending.values():
            try:
                address, words = encode_command(self.regmap, command)
            except ValueError:
                continue  # a group the board does not have: the pool's config check says so
            try:
                await self._write(address, words)
            except BaseException:
                # Not written: kept for the next attempt unless a newer one came meanwhile.
                self._pending.setdefault(command.group, command)
                raise

    async def service(self, t: float) -> list[MatrixEvent]:
        """Pending writes, then one read of every group. Never raises."""
        try:
            if self._client is None or not self._client.connected:
                await self._connect()
            await self.write_pending()
            words: list[int] = []
            for start, count in read_chunks(self.regmap, self.n_groups):
                response = await self._read(start, count)
                words += list(response.registers)[:count]
        except Exception as exc:  # every failure reaches the core as an event
            await self.close()
            return [MatrixLost(t, f"matrix board: {type(exc).__name__}: {exc}")]
        return [decode_status(self.regmap, t, words, self.n_groups)]

    async def _read(self, start: int, count: int) -> Any:
        return await self._call(lambda: self._client.read_holding_registers(
            start, count=count, device_id=self.unit_id))

    async def run(self, clock: Clock, events_out: Callable[[MatrixEvent], None],
                  period_s: float = POLL_PERIOD_S) -> None:
        """Real time: polls every period_s; a command is written as soon as it is given."""
        self._wake = asyncio.Event()
        next_poll = clock.now()
        while True:
            now = clock.now()
            if now >= next_poll:
                next_poll = max(next_poll + period_s, now)
                for event in await self.service(now):
                    events_out(event)
            elif self._pending and self._client is not None:
                try:
                    await self.write_pending()
                except Exception as exc:
                    await self.close()
                    events_out(MatrixLost(now, f"matrix board: {type(exc).__name__}: {exc}"))
            self._wake.clear()
            if self._pending and self._client is not None:
                continue  # given while writing: written now, not at the next poll
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), max(0.0, next_poll - clock.now()))
