"""Every Modbus request the drivers make, timed and counted per device (the metrics'
`pile_agent_modbus_request_seconds` and `_errors_total`): a wrapper around the pymodbus
client that records each read and write, and the process-wide table it records into."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Request durations (s): an RS-485 poll at 19,200 baud takes ~10-30 ms, TCP on loopback
# ~1 ms; a timeout is counted at what it took.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class DeviceStats:
    requests: int = 0
    errors: int = 0  # exception responses, timeouts, broken links
    seconds: float = 0.0
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))  # per bucket

    def observe(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self.errors += not ok
        self.seconds += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break


STATS: dict[str, DeviceStats] = {}

_TIMED = frozenset({"read_holding_registers", "read_input_registers", "write_registers",
                    "write_register", "read_coils", "write_coils"})


class TimedClient:
    """A pymodbus async client whose requests are timed into STATS[device]."""

    def __init__(self, client: Any, device: str) -> None:
        self._client = client
        self._stats = STATS.setdefault(device, DeviceStats())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _TIMED:
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            ok = False
            try:
                response = await attr(*args, **kwargs)
                ok = not response.isError()
                return response
            finally:
                self._stats.observe(time.perf_counter() - start, ok)

        return timed
