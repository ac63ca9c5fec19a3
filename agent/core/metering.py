"""Billing energy from the DC meter: settlement intervals and the meter cross-check.

Energy is the difference of the meter's own counters (forward = to the vehicle, reverse =
from it), never integrated setpoints. A session's energy is cut into intervals: at each
wall-clock quarter hour (the settlement period of China's time-of-use tariffs and of VPP
dispatch) and at each direction change, and one at the end. Each closed interval becomes a
`LedgerInterval` command, which the runtime writes to the durable ledger before anything
is reported.

The cross-check: the meter's current against the module's. A difference above
max(METER_MISMATCH_A, METER_MISMATCH_FRACTION) that persists for METER_MISMATCH_PERSIST is a
fault: one of the charger's two instruments is wrong, and settlement cannot rest on it.
Against the vehicle's BCS current the same persistent difference is a notice. Ramps and
sampling skew make short differences normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.core.commands import LedgerCheckpoint, LedgerInterval
from agent.core.events import MeterReading
from agent.core.timing import CHECKPOINT_ENERGY_KWH, CHECKPOINT_PERIOD, Timing

SETTLEMENT_PERIOD_S = 900.0  # 15 min: China's ToU settlement / VPP dispatch period
# DC meter class 1 (JJG 1149-2022, DC charger verification: energy error within +-1 % [V]) and
# the module's own current measurement (State Grid module spec: +-1 %): 2 % between them,
# and never less than 2 A (the meters' starting-current and offset at low load).
METER_MISMATCH_A = 2.0
METER_MISMATCH_FRACTION = 0.02
METER_MISMATCH_PERSIST = Timing(
    5.0, "project rule: five 1 s meter polls in a row disagree (ramps and sampling skew "
    "last well under 1 s at 100 A/s)")


def disagree(a: float, b: float) -> bool:
    return abs(a - b) > max(METER_MISMATCH_A, METER_MISMATCH_FRACTION * max(abs(a), abs(b)))


@dataclass
class Metering:
    first: MeterReading | None = None
    first_wall: float = 0.0
    last: MeterReading | None = None
    interval_start: MeterReading | None = None
    interval_start_wall: float = 0.0
    interval_direction: str = "charge"
    seq: int = 0
    mismatch_since: float | None = None
    vehicle_mismatch_since: float | None = None
    vehicle_mismatch_said: bool = False
    # Energy counted before the meter's counters were re-based (a meter replaced or reset
    # mid-session), and what made the metering incomplete, for the record.
    banked_to_kwh: float = 0.0
    banked_from_kwh: float = 0.0
    note: str = ""
    rebases: int = 0  # how often the counters went backwards in this session
    checkpoint_wall: float | None = None  # the last checkpoint's, None before the first
    checkpoint_kwh: float = 0.0

    @property
    def to_vehicle_kwh(self) -> float:
        if self.first is None or self.last is None:
            return self.banked_to_kwh
        return self.banked_to_kwh + self.last.to_vehicle_kwh - self.first.to_vehicle_kwh

    @property
    def from_vehicle_kwh(self) -> float:
        if self.first is None or self.last is None:
            return self.banked_from_kwh
        return self.banked_from_kwh + self.last.from_vehicle_kwh - self.first.from_vehicle_kwh

    def on_reading(self, r: MeterReading, wall: float, direction: str,
                   in_transfer: bool) -> LedgerInterval | None:
        """Take a reading; the interval it closes, if any."""
        if not all(math.isfinite(x) for x in (r.to_vehicle_kwh, r.from_vehicle_kwh)):
            return None
        if self.last is not None and (r.to_vehicle_kwh < self.last.to_vehicle_kwh
                                      or r.from_vehicle_kwh < self.last.from_vehicle_kwh):
            # A counter that runs backwards is a replaced or reset meter: bank what was
            # counted, close the open interval at the last good reading, and re-base on this
            # one (the record notes it; the energy between the two readings is unknown).
            self.note = "meter counters went backwards; re-based"
            self.rebases += 1
            closed = self.finish(wall, "meter re-based")
            self.banked_to_kwh, self.banked_from_kwh = self.to_vehicle_kwh, self.from_vehicle_kwh
            self.first = self.last = r
            self.first_wall = wall
            if in_transfer:
                self._open(r, wall, direction)
            return closed
        self.last = r
        if self.first is None:
            self.first, self.first_wall = r, wall
        if not in_transfer:
            return None
        if self.interval_start is None:
            # From the session's first reading, not this one: the energy since the last
            # reading before the transfer began (the ramp's first second) is the session's
            # and must be in an interval (it was not: intervals 0.941 kWh, session 0.943).
            # Nothing flows before the transfer, so the interval holds only that energy more.
            self._open(self.first, self.first_wall, direction)
        quarter = math.floor(wall / SETTLEMENT_PERIOD_S) != \
            math.floor(self.interval_start_wall / SETTLEMENT_PERIOD_S)
        if quarter or direction != self.interval_direction:
            closed = self._close(r, wall, "quarter hour" if quarter else "direction change")
            self._open(r, wall, direction)
            return closed
        return None

    def finish(self, wall: float, reason: str) -> LedgerInterval | None:
        if self.interval_start is None or self.last is None:
            return None
        closed = self._close(self.last, wall, reason)
        self.interval_start = None
        return closed

    def checkpoint(self, wall: float) -> LedgerCheckpoint | None:
        """A checkpoint, if one is due: with the first reading, then every
        CHECKPOINT_PERIOD of wall time or CHECKPOINT_ENERGY_KWH metered, whichever first.
        The caller fills in who (VIN, SOC, peak power)."""
        if self.last is None:
            return None
        moved = self.to_vehicle_kwh + self.from_vehicle_kwh
        if self.checkpoint_wall is not None \
                and wall - self.checkpoint_wall < CHECKPOINT_PERIOD.seconds \
                and moved - self.checkpoint_kwh < CHECKPOINT_ENERGY_KWH:
            return None
        self.checkpoint_wall, self.checkpoint_kwh = wall, moved
        start = self.interval_start or self.last
        return LedgerCheckpoint(
            wall=wall, seq=self.seq + 1, interval_open=self.interval_start is not None,
            interval_start_wall=self.interval_start_wall if self.interval_start else wall,
            interval_direction=self.interval_direction,
            interval_start_to_kwh=start.to_vehicle_kwh,
            interval_start_from_kwh=start.from_vehicle_kwh,
            last_to_kwh=self.last.to_vehicle_kwh, last_from_kwh=self.last.from_vehicle_kwh,
            to_vehicle_kwh=round(self.to_vehicle_kwh, 6),
            from_vehicle_kwh=round(self.from_vehicle_kwh, 6))

    def cross_check(self, r: MeterReading, module_a: float | None, now: float) -> bool:
        """True once the meter has disagreed with the module's current for
        METER_MISMATCH_PERSIST (a module reading older than the meter's is no witness)."""
        if module_a is not None and math.isfinite(module_a) \
                and disagree(r.current_a, module_a):
            if self.mismatch_since is None:
                self.mismatch_since = now
            return now - self.mismatch_since > METER_MISMATCH_PERSIST.seconds
        self.mismatch_since = None
        return False

    def vehicle_disagrees(self, r: MeterReading, bcs_a: float, now: float) -> bool:
        """True once (per session) when the vehicle's own current (BCS) has disagreed with
        the meter for METER_MISMATCH_PERSIST: a notice, not a fault (a BMS Hall sensor is
        not a billing instrument, and a replayed car reports its recorded charger's current)."""
        if not (math.isfinite(bcs_a) and disagree(r.current_a, bcs_a)):
            self.vehicle_mismatch_since = None
            return False
        if self.vehicle_mismatch_since is None:
            self.vehicle_mismatch_since = now
        if now - self.vehicle_mismatch_since > METER_MISMATCH_PERSIST.seconds \
                and not self.vehicle_mismatch_said:
            self.vehicle_mismatch_said = True
            return True
        return False

    def _open(self, r: MeterReading, wall: float, direction: str) -> None:
        self.interval_start, self.interval_start_wall = r, wall
        self.interval_direction = direction

    def _close(self, r: MeterReading, wall: float, reason: str) -> LedgerInterval:
        start = self.interval_start
        assert start is not None
        self.seq += 1
        return LedgerInterval(
            seq=self.seq, start_wall=self.interval_start_wall, end_wall=wall,
            direction=self.interval_direction,
            to_vehicle_kwh=round(max(r.to_vehicle_kwh - start.to_vehicle_kwh, 0.0), 6),
            from_vehicle_kwh=round(max(r.from_vehicle_kwh - start.from_vehicle_kwh, 0.0), 6),
            meter_to_vehicle_kwh=r.to_vehicle_kwh, meter_from_vehicle_kwh=r.from_vehicle_kwh,
            closed_by=reason)
