"""Protocol-independent safety state of one gun: faults, latches, inputs.

The session asks this object whether a start is allowed and which faults are active; it
tells it what it measured (upstream offers go to `agent/core/upstream.py`). Nothing here commands
anything: faults become state changes in the session, limits go to the arbiter.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.events import SafetyInputs


@dataclass(frozen=True, slots=True)
class Fault:
    code: str
    detail: str
    emergency: bool  # open K1/K2 at once; otherwise ramp to <= 5 A first
    latched: bool  # blocks a new session until cleared by service (invariant I12)


class SafetySupervisor:
    def __init__(self) -> None:
        self.latched: dict[str, Fault] = {}
        self.inputs: SafetyInputs | None = None

    # ---- faults ----------------------------------------------------------------

    def latch(self, fault: Fault) -> None:
        if fault.latched:
            self.latched.setdefault(fault.code, fault)

    def can_start(self) -> bool:
        return not self.latched and self.input_fault() is None

    def blocking_reason(self) -> str:
        if self.latched:
            return "latched fault(s): " + ", ".join(sorted(self.latched))
        fault = self.input_fault()
        return fault.detail if fault else ""

    def clear(self) -> list[str]:
        """Clear latched faults whose cause is gone; returns the codes cleared."""
        i = self.inputs
        persists = {"emergency_stop": bool(i and i.emergency_stop),
                    "safety_relay": bool(i and i.safety_relay_tripped)}
        cleared = [code for code in self.latched if not persists.get(code, False)]
        for code in cleared:
            del self.latched[code]
        return cleared

    # ---- inputs ----------------------------------------------------------------

    def on_inputs(self, inputs: SafetyInputs) -> None:
        self.inputs = inputs

    def gun_unlocked(self) -> bool:
        """The I/O board reports the gun's electronic lock open (no board: nothing known).
        Not an input fault: the lock engages just after plug-in, so only closing K1/K2 and
        keeping them closed depend on it."""
        return self.inputs is not None and not self.inputs.gun_locked

    def input_fault(self) -> Fault | None:
        i = self.inputs
        if i is None:
            return None
        if i.emergency_stop:
            return Fault("emergency_stop", "emergency stop pressed", emergency=True, latched=True)
        if i.safety_relay_tripped:
            return Fault("safety_relay", "safety controller tripped K1/K2 (heartbeat lost?)",
                         emergency=True, latched=True)
        if i.door_open:
            return Fault("door_open", "cabinet door open", emergency=True, latched=False)
        return None
