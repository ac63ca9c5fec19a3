"""Protocol-independent safety state of one gun: faults, latches, inputs, upstream limits.

The session asks this object whether a start is allowed, which faults are active and
what the upstream limit is; it tells it what it measured. Nothing here commands
anything: faults become state changes in the session, limits go to the arbiter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.core.events import SafetyInputs, UpstreamLimit


@dataclass(frozen=True, slots=True)
class Fault:
    code: str
    detail: str
    emergency: bool  # open K1/K2 at once; otherwise ramp to <= 5 A first
    latched: bool  # blocks a new session until cleared by service (invariant I12)


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """How upstream setpoints are vetted (invariant I13)."""

    # OCPP 2.1 answers RateLimitExceeded to profiles sent too often; one per second is
    # well inside AGC cadence (a few seconds) and keeps the module from chattering.
    min_interval_s: float = 1.0
    # A setpoint that claims validity longer than this is treated as out of range:
    # upstream must refresh (OCPP 2.1 dynUpdateInterval / maxOfflineDuration).
    max_validity_s: float = 900.0
    # A setpoint that reaches us later than this after it was issued is stale.
    max_delivery_age_s: float = 5.0
    # After expiry (upstream offline past its validity) charging falls back to this
    # limit; discharge always falls back to 0 A (never sustained discharge, I7).
    fallback_charge_a: float = math.inf


@dataclass(frozen=True, slots=True)
class UpstreamDecision:
    accepted: bool
    reason: str


class SafetySupervisor:
    def __init__(self, policy: UpstreamPolicy, rated_current_a: float) -> None:
        self.policy = policy
        self.rated_current_a = rated_current_a
        self.latched: dict[str, Fault] = {}
        self.inputs: SafetyInputs | None = None
        self._upstream: UpstreamLimit | None = None
        self._upstream_accepted_at: float | None = None

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

    # ---- upstream --------------------------------------------------------------

    def on_upstream(self, sp: UpstreamLimit, now: float) -> UpstreamDecision:
        p = self.policy
        if not (math.isfinite(sp.current_a) and math.isfinite(sp.expires_at)
                and math.isfinite(sp.t)):
            return UpstreamDecision(False, "not a finite number")
        if abs(sp.current_a) > self.rated_current_a:
            return UpstreamDecision(
                False, f"|{sp.current_a} A| above the rated {self.rated_current_a} A")
        if now - sp.t > p.max_delivery_age_s or sp.expires_at <= now:
            return UpstreamDecision(False, "stale: issued too long ago or already expired")
        if sp.expires_at - now > p.max_validity_s:
            return UpstreamDecision(False, f"validity over {p.max_validity_s} s")
        last = self._upstream_accepted_at
        if last is not None and now - last < p.min_interval_s:
            return UpstreamDecision(False, "too frequent (rate limit)")
        self._upstream = sp
        self._upstream_accepted_at = now
        return UpstreamDecision(True, "accepted")

    def upstream_limit_a(self, now: float, charging: bool) -> tuple[float, bool]:
        """(limit magnitude for the direction, whether the fallback applies)."""
        sp = self._upstream
        if sp is None or now >= sp.expires_at:
            return (self.policy.fallback_charge_a if charging else 0.0), True
        signed = sp.current_a if charging else -sp.current_a
        return max(signed, 0.0), False
