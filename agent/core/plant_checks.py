"""Is the output doing what it was told? Over-voltage against the gun's and the vehicle's
maximum, over-current against the command, each read from the module's measurements and
held for its clause's time before it is a fault (I17, I18). Sans-I/O: times are the samples'.

The command is the reference for over-current (it never exceeds the vehicle's request, so
this is stricter than GB 44263's I_req). After the command falls, the output has the
settling time IEC 61851-23 allows before an excess counts: a module ramping down at its
own rate is not over-current.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.core import timing as T


@dataclass
class Held:
    """A condition that must hold for a while before it counts."""

    since: float | None = None

    def update(self, t: float, condition: bool, hold_s: float) -> bool:
        if not condition:
            self.since = None
            return False
        if self.since is None:
            self.since = t
        return t - self.since >= hold_s


def over_current_margin_a(commanded_a: float) -> float:
    """How far the output may exceed a command of this magnitude (GB 44263-2024 §8.2.8)."""
    if commanded_a >= T.OVER_CURRENT_SMALL_BELOW_A:
        return (T.OVER_CURRENT_RATIO - 1.0) * commanded_a
    return T.OVER_CURRENT_SMALL_A


def excess_a(measured_a: float, commanded_a: float) -> float:
    """Current beyond the command in its own direction, or any current against it
    (+ = into the vehicle; a command of 0 A allows neither direction)."""
    sign = 1.0 if commanded_a >= 0 else -1.0
    return max(sign * measured_a - abs(commanded_a), -sign * measured_a)


@dataclass
class OverCurrentWatch:
    commanded_a: float = 0.0
    settle_until: float = -math.inf
    held: Held = field(default_factory=Held)

    def command(self, t: float, current_a: float) -> None:
        """A new command (0 A with the output off). Lowering it, or turning it round,
        gives the output the settling time of the step."""
        step = abs(current_a - self.commanded_a)
        if abs(current_a) < abs(self.commanded_a) or current_a * self.commanded_a < 0:
            settle = max(T.SETTLE_MIN.seconds, step / T.SETTLE_SLOPE_A_PER_S)
            self.settle_until = max(self.settle_until, t + settle)
        self.commanded_a = current_a

    def idle(self) -> None:
        """Not judged now (the output is not meant to deliver): the hold starts again."""
        self.held.since = None

    def sample(self, t: float, measured_a: float) -> str | None:
        """A reason once the output has run over the command for the hold time."""
        if t < self.settle_until or not math.isfinite(measured_a):
            self.held.since = None
            return None
        excess = excess_a(measured_a, self.commanded_a)
        margin = over_current_margin_a(abs(self.commanded_a))
        if self.held.update(t, excess > margin, T.OVER_CURRENT_HOLD.seconds):
            return (f"over-current: {measured_a:.1f} A measured against {self.commanded_a:.1f} "
                    f"A commanded for {T.OVER_CURRENT_HOLD.seconds:g} s "
                    f"({T.OVER_CURRENT_HOLD.source})")
        return None


@dataclass
class OverVoltageWatch:
    held: Held = field(default_factory=Held)

    def sample(self, t: float, measured_v: float, limit_v: float) -> str | None:
        """A reason once the output voltage has stood above limit + margin for the hold."""
        ceiling = limit_v + T.OVER_VOLTAGE_MARGIN_V
        if self.held.update(t, measured_v > ceiling, T.OVER_VOLTAGE_HOLD.seconds):
            return (f"over-voltage: output {measured_v:.1f} V above {ceiling:.1f} V "
                    f"(maximum {limit_v:.1f} V + {T.OVER_VOLTAGE_MARGIN_V:g} V) for "
                    f"{T.OVER_VOLTAGE_HOLD.seconds:g} s ({T.OVER_VOLTAGE_HOLD.source})")
        return None
