"""What a session was sent that it could not use as it came: counted, and shown to the
operator without flooding them.

A rejected message, an unknown PGN, an odd informational field or a non-fatal driver
problem is never dropped silently: each kind is counted per message (or field, or
source), the first occurrence in a session is a notice with the raw bytes, and a kind
that keeps coming is noticed again at most every REPEAT_S with its count so far (BCL
arrives 20 times a second; one notice each would bury everything else). Oddities are
noticed once per field and session: they are information, and they repeat with every
copy of the message.
"""

from __future__ import annotations

from collections import Counter

from agent.core.commands import Notice
from agent.core.events import DriverError, VehicleDataNotice

REPEAT_S = 10.0


class VehicleDataLog:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._noticed_at: dict[str, float] = {}

    def on_vehicle(self, event: VehicleDataNotice, now: float) -> Notice | None:
        what = f"{event.message}.{event.field}" if event.field else event.message
        key = f"{event.kind} {what}"
        self.counts[key] += 1
        raw = event.raw_hex or "(none)"
        if event.kind == "oddity":
            if key in self._noticed_at:
                return None
            self._noticed_at[key] = now
            return Notice(now, "vehicle_oddity", f"{what}: {event.detail}; raw {raw}")
        kind = "vehicle_message_rejected" if event.kind == "rejected" else "unknown_pgn"
        return self._throttled(key, now, kind, f"{what} #{self.counts[key]}: {event.detail}; "
                               f"raw {raw}")

    def on_driver(self, event: DriverError, now: float) -> Notice | None:
        key = f"driver {event.source}"
        self.counts[key] += 1
        return self._throttled(key, now, "driver_problem",
                               f"{event.source} #{self.counts[key]}: {event.detail}")

    def _throttled(self, key: str, now: float, kind: str, detail: str) -> Notice | None:
        last = self._noticed_at.get(key)
        if last is not None and now - last < REPEAT_S:
            return None
        self._noticed_at[key] = now
        return Notice(now, kind, detail)
