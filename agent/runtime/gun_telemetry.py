"""What a gun has done, for the people watching it: the latest decision and the limit that
bound it, sessions by outcome, faults by kind, and its power over the last minutes (the
status page's line). Fed from the session's reporting commands and the status task;
decides nothing."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from agent.core.commands import Command, CurrentDecided, SessionReport, StateChanged

# The status page's power line: one sample a second for ten minutes.
HISTORY_S = 600


@dataclass
class GunTelemetry:
    decided: CurrentDecided | None = None
    sessions: Counter[str] = field(default_factory=Counter)  # by outcome
    faults: Counter[str] = field(default_factory=Counter)  # by fault code
    history: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_S))  # (Unix time, W, + = to the car)
    last_ccs_t: float | None = None

    def on_command(self, command: Command, fault_code: str) -> None:
        match command:
            case CurrentDecided():
                self.decided = command
            case StateChanged(dest="fault"):
                self.faults[fault_code or "other"] += 1
            case SessionReport(outcome=outcome):
                self.sessions[outcome] += 1
            case _:
                pass

    @property
    def bound_by(self) -> str:
        """The current limit that bound the latest decision ("" before any)."""
        return self.decided.bound_by.split("/")[0] if self.decided is not None else ""

    def sample(self, wall: float, power_w: float) -> None:
        self.history.append((wall, power_w))
