"""The DC meter's bus: one owner polls the meter (Modbus RTU, or TCP through a gateway) and
turns every answer or failure into an event. Thin: it decides nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.core.events import DriverError, Event, MeterLost
from drivers.dc_meter.codec import decode_reading, load_meter_map
from drivers.power_module.link import RtuTarget, TcpTarget, make_client, target_label
from drivers.power_module.owner import Clock
from drivers.power_module.regmap import RegisterMap
from drivers.task_end import within

# 1 s: the meter's energy registers change by at most 0.17 Wh per second per kW; the
# cross-check against the module needs a few samples within its 5 s window.
POLL_PERIOD_S = 1.0
REQUEST_TIMEOUT_S = 0.5


class MeterBusOwner:
    def __init__(self, target: TcpTarget | RtuTarget, unit_id: int = 1,
                 regmap: RegisterMap | None = None) -> None:
        self.target = target
        self.unit_id = unit_id
        self.regmap = regmap or load_meter_map()
        self._client: Any = None

    async def run(self, clock: Clock, events_out: Callable[[Event], None],
                  period_s: float = POLL_PERIOD_S) -> None:
        """Real time: the meter's own task, so a slow RS-485 line never delays control."""
        while True:
            for event in await self.service(clock.now()):
                events_out(event)
            await clock.sleep(period_s)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def service(self, t: float) -> list[Event]:
        """One poll; never raises."""
        try:
            if self._client is None or not self._client.connected:
                await self.close()
                self._client = make_client(self.target, REQUEST_TIMEOUT_S,
                                           f"meter {target_label(self.target)}#{self.unit_id}")
                if not await within(self._client.connect(), 2 * REQUEST_TIMEOUT_S):
                    await self.close()
                    return [MeterLost(t, "meter: connect failed")]
            span = self.regmap.span
            response = await within(
                self._client.read_holding_registers(span.start, count=len(span),
                                                    device_id=self.unit_id),
                2 * REQUEST_TIMEOUT_S)
            if response.isError():
                return [MeterLost(t, f"meter answered exception "
                                     f"{getattr(response, 'exception_code', '?')}")]
            reading = decode_reading(self.regmap, t, list(response.registers))
        except Exception as exc:  # every failure reaches the core as an event
            await self.close()
            return [MeterLost(t, f"meter: {type(exc).__name__}: {exc}")]
        if isinstance(reading, DriverError):
            return [MeterLost(t, reading.detail)]
        return [reading]
