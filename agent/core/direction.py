"""The direction of energy transfer and how it changes (charge <-> discharge).

GB/T 18487.1-2023 Annex E allows no seamless switch between charging and discharging.
A change therefore goes: the arbiter's DIRECTION candidate drops to 0 A (a decrease is
immediate, the module ramps down); once a sample taken after the change began reads
<= 5 A with 0 A commanded (Annex E / B.4.6), zero is held for DIRECTION_DWELL; then a new
energy-transfer phase starts in the new direction and the arbiter's up-ramp starts from
zero. If the current has not fallen to 5 A within DIRECTION_CHANGE_BUDGET the session
faults. Pure: the session feeds it what it measured and commanded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from agent.core import timing as T


class Direction(Enum):
    CHARGE = "charge"
    DISCHARGE = "discharge"

    @property
    def sign(self) -> float:
        return 1.0 if self is Direction.CHARGE else -1.0


class Outcome(Enum):
    STEADY = "steady"
    CHANGING = "changing"
    NEW_PHASE = "new_phase"
    TOO_SLOW = "too_slow"


@dataclass
class DirectionControl:
    active: Direction = Direction.CHARGE
    changing_since: float | None = None
    low_since: float | None = None
    # (start time, direction) of each energy-transfer phase of the session.
    phases: list[tuple[float, Direction]] = field(default_factory=list)

    @property
    def changing(self) -> bool:
        return self.changing_since is not None

    def limit_a(self) -> float:
        """The arbiter's DIRECTION candidate: zero while a change is under way."""
        return 0.0 if self.changing else math.inf

    def next_change(self) -> float:
        """When a change under way next needs a look on time alone (its budget, its dwell);
        inf when steady. Measurements arrive as events and are looked at then."""
        if self.changing_since is None:
            return math.inf
        if self.low_since is None:
            return self.changing_since + T.DIRECTION_CHANGE_BUDGET.seconds
        return self.low_since + T.DIRECTION_DWELL.seconds

    def start(self, now: float) -> None:
        if not self.phases:
            self.phases.append((now, self.active))

    def update(self, wanted: Direction, now: float, measured_a: float | None,
               sampled_at: float | None, commanded_a: float) -> Outcome:
        if self.changing_since is None:
            if wanted is self.active:
                return Outcome.STEADY
            self.changing_since, self.low_since = now, None
        since = self.changing_since
        fresh = measured_a is not None and sampled_at is not None and sampled_at > since
        low = fresh and commanded_a == 0.0 and measured_a is not None \
            and abs(measured_a) <= T.DIRECTION_CHANGE_CURRENT_A
        if low and self.low_since is None:
            self.low_since = now
        if self.low_since is None:
            if now - since > T.DIRECTION_CHANGE_BUDGET.seconds:
                return Outcome.TOO_SLOW
            return Outcome.CHANGING
        if now - self.low_since < T.DIRECTION_DWELL.seconds:
            return Outcome.CHANGING
        self.changing_since = self.low_since = None
        if wanted is self.active:
            return Outcome.STEADY  # asked back before the change completed: carry on
        self.active = wanted
        self.phases.append((now, wanted))
        return Outcome.NEW_PHASE
