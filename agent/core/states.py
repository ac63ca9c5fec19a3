"""Rule 1: every session transition lives in this table, as data.

States are nouns, triggers are facts. `GunSession` builds its `transitions.Machine`
from TRANSITIONS and nothing else, and `docs/state-diagram.md` is generated from it
(`python -m agent.core.states`), so the diagram cannot drift from the code.

GB/T 27930-2015 runs the insulation check inside the handshake phase (after BHM,
before CRM 0x00), which is why INSULATION_CHECK sits before IDENTIFICATION.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    IDLE = "idle"
    HANDSHAKE = "handshake"
    INSULATION_CHECK = "insulation_check"
    IDENTIFICATION = "identification"
    PARAMETER_EXCHANGE = "parameter_exchange"
    PRECHARGE = "precharge"
    CHARGING = "charging"
    STOPPING = "stopping"
    WELDING_CHECK = "welding_check"
    FINISHED = "finished"
    FAULT = "fault"


class Trigger(Enum):
    PLUGGED_IN = "plugged_in"
    HANDSHAKE_RECEIVED = "handshake_received"
    INSULATION_PASSED = "insulation_passed"
    VEHICLE_IDENTIFIED = "vehicle_identified"
    VEHICLE_READY = "vehicle_ready"
    PRECHARGE_COMPLETE = "precharge_complete"
    STOP_REQUESTED = "stop_requested"
    CURRENT_SETTLED = "current_settled"
    WELDING_CHECK_PASSED = "welding_check_passed"
    FAULT_DETECTED = "fault_detected"
    UNPLUGGED = "unplugged"
    FAULTS_CLEARED = "faults_cleared"


# States in which a stop request leads to an orderly stop.
STOPPABLE: tuple[State, ...] = (
    State.HANDSHAKE,
    State.INSULATION_CHECK,
    State.IDENTIFICATION,
    State.PARAMETER_EXCHANGE,
    State.PRECHARGE,
    State.CHARGING,
)

# States a fault can interrupt (IDLE included: a pile with a lost module must not start).
FAULTABLE: tuple[State, ...] = (
    State.IDLE,
    *STOPPABLE,
    State.STOPPING,
    State.WELDING_CHECK,
    State.FINISHED,
)

# (trigger, sources, destination, guard or None). A guard is the name of a pure
# `is_*`/`has_*` predicate on the session.
TRANSITIONS: tuple[tuple[Trigger, tuple[State, ...], State, str | None], ...] = (
    (Trigger.PLUGGED_IN, (State.IDLE,), State.HANDSHAKE, "is_start_allowed"),
    (Trigger.HANDSHAKE_RECEIVED, (State.HANDSHAKE,), State.INSULATION_CHECK, None),
    (Trigger.INSULATION_PASSED, (State.INSULATION_CHECK,), State.IDENTIFICATION, None),
    (Trigger.VEHICLE_IDENTIFIED, (State.IDENTIFICATION,), State.PARAMETER_EXCHANGE, None),
    (Trigger.VEHICLE_READY, (State.PARAMETER_EXCHANGE,), State.PRECHARGE, None),
    (Trigger.PRECHARGE_COMPLETE, (State.PRECHARGE,), State.CHARGING, None),
    (Trigger.STOP_REQUESTED, STOPPABLE, State.STOPPING, None),
    (Trigger.CURRENT_SETTLED, (State.STOPPING,), State.WELDING_CHECK, None),
    (Trigger.WELDING_CHECK_PASSED, (State.WELDING_CHECK,), State.FINISHED, None),
    (Trigger.FAULT_DETECTED, FAULTABLE, State.FAULT, None),
    (Trigger.UNPLUGGED, (State.FINISHED,), State.IDLE, None),
    (Trigger.UNPLUGGED, (State.FAULT,), State.IDLE, "is_rearm_allowed"),
    (Trigger.FAULTS_CLEARED, (State.FAULT,), State.IDLE, "is_rearm_allowed"),
)


def next_state(state: State, trigger: Trigger) -> State | None:
    """The destination of `trigger` in `state` ignoring guards, or None if not allowed."""
    for row_trigger, sources, dest, _guard in TRANSITIONS:
        if row_trigger is trigger and state in sources:
            return dest
    return None


def mermaid_diagram() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.IDLE.value}"]
    for trigger, sources, dest, guard in TRANSITIONS:
        label = trigger.value if guard is None else f"{trigger.value} [{guard}]"
        lines.extend(f"    {src.value} --> {dest.value}: {label}" for src in sources)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("# Session state diagram\n\nGenerated from `agent/core/states.py` by "
          "`python -m agent.core.states`.\n\n```mermaid\n" + mermaid_diagram() + "```")
