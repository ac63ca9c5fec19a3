"""How a gun session reacts to the pile's safety inputs, temperatures, IMD and upstream.

Protocol-independent: the faults raised here are the same for any vehicle protocol;
the session maps them onto its own stop messages (CST reasons).
"""

from __future__ import annotations

import math

from agent.core import timing as T
from agent.core.commands import KickSafetyWatchdog, Notice, ResetSafetyTrip
from agent.core.events import (
    DroopSet,
    Event,
    FaultsCleared,
    InsulationStatus,
    SafetyInputs,
    SafetyIoLost,
    TemperatureReading,
    UpstreamCleared,
    UpstreamLimit,
    UpstreamSetpoint,
)
from agent.core.messages import ChargerFault
from agent.core.outgoing import grid_slot
from agent.core.session_base import SessionBase
from agent.core.states import State, Trigger
from agent.core.thermal_guard import ThermalSupervisor
from agent.core.upstream import UpstreamDecision

_LIVE = (State.HANDSHAKE, State.INSULATION_CHECK, State.IDENTIFICATION,
         State.PARAMETER_EXCHANGE, State.PRECHARGE, State.CHARGING, State.STOPPING,
         State.WELDING_CHECK)
_CST_FOR_SENSOR = {
    "connector": ChargerFault.CONNECTOR,
    "cable": ChargerFault.OVER_TEMPERATURE,
    "module": ChargerFault.INTERNAL_OVER_TEMPERATURE,
}


class SafetyHandling(SessionBase):
    thermal: ThermalSupervisor | None
    require_safety_io: bool
    thermal_limit_a: float

    def _on_safety_event(self, event: Event) -> bool:
        """Handle a safety-related event; False if the event is not one of them."""
        match event:
            case SafetyInputs():
                self.plant.safety_io_at = self._sampled_at(event.t)
                self.plant.safety_io_lost = ""
                self.safety.on_inputs(event)
                self._check_inputs()
            case SafetyIoLost(detail=detail):
                self.plant.safety_io_lost = detail
                if self.require_safety_io and self._at_stake():
                    self._fault(f"safety I/O lost: {detail}", code="safety_io", emergency=True)
            case InsulationStatus():
                self._on_insulation(event)
            case TemperatureReading():
                if self.thermal is not None:
                    self.thermal.update(event, self._measured_current())
            case FaultsCleared(by=by):
                self._clear_faults(by)
            case UpstreamLimit() | UpstreamSetpoint():
                self._say_upstream(event.source, self.upstream.offer(event, self.now))
            case DroopSet():
                self._say_upstream(event.source, self.upstream.set_droop(event))
            case UpstreamCleared():
                self._say_upstream(event.source, self.upstream.clear(event), "setpoint_cleared")
            case _:
                return False
        return True

    def _say_upstream(self, source: str, decision: UpstreamDecision, kind: str = "") -> None:
        """Every upstream offer is logged with its source and the reason it was taken or
        refused (docs/UPSTREAM.md)."""
        kind = kind or ("setpoint_accepted" if decision.accepted else "setpoint_rejected")
        self._out.append(Notice(self.now, kind, f"{source}: {decision.reason}"))

    def _measured_current(self) -> float:
        st = self.plant.status
        return st.output_current_a if st is not None else 0.0

    def _check_inputs(self) -> None:
        fault = self.safety.input_fault()
        if fault is not None and fault.code == "safety_relay" and self._rearm_heartbeat_trip():
            return
        if fault is None:
            if self.safety.gun_unlocked() and self.act.contactors_closed and self.state in _LIVE:
                # An error stop, not an emergency: opening under load would arc the contacts.
                self._fault(f"gun lock opened while K1/K2 are closed ({T.GUN_LOCK_LOST})",
                            code="gun_lock", faults=frozenset({ChargerFault.CONNECTOR}))
            return
        if fault.latched or self._at_stake():
            cst = ChargerFault.EMERGENCY_STOP if fault.code == "emergency_stop" else \
                ChargerFault.OTHER
            self._fault(fault.detail, code=fault.code, emergency=True, latched=fault.latched,
                        faults=frozenset({cst}))

    def _rearm_heartbeat_trip(self) -> bool:
        """The safety controller's heartbeat trip, found while nothing is at stake (no
        session, K1/K2 open, the E-stop loop closed): the agent that failed to beat was dead
        or hung, and this one lives, so it re-arms the board (at most once per
        TRIP_REARM_RETRY) instead of latching a fault; without this every restart of the
        service would leave the gun out of use. A trip by the E-stop, or one during a
        session, stays a latched fault that only a reset clears. True if handled here."""
        i = self.safety.inputs
        if i is None or not i.trip_by_heartbeat or i.emergency_stop \
                or self.state is not State.IDLE or self.act.contactors_closed \
                or self.act.heartbeat_withheld:
            return False
        last = self.plant.trip_rearmed_at
        if last is None or self.now - last >= T.TRIP_REARM_RETRY.seconds:
            self.plant.trip_rearmed_at = self.now
            self._out.append(ResetSafetyTrip("heartbeat trip while the agent was away"))
            self._out.append(Notice(self.now, "safety_trip_rearmed",
                                    "the safety controller's heartbeat trip (a previous "
                                    "process, or a hang) re-armed; nothing was at stake"))
        return True

    def _on_insulation(self, status: InsulationStatus) -> None:
        if status.device_fault:
            if self.state in (State.INSULATION_CHECK, State.PRECHARGE, State.CHARGING):
                self._fault("insulation monitor reports a device fault", code="imd")
            return
        if not status.measurement_done or status.resistance_ohm is None:
            return
        self.plant.insulation_ohm = status.resistance_ohm
        self.plant.insulation_at = self._sampled_at(status.t)
        if self.state is State.CHARGING:
            volts = max(self.act.voltage_v, 1.0)
            ohm_per_v = status.resistance_ohm / volts
            if not ohm_per_v > T.INSULATION_FAULT_OHM_PER_V:
                self._fault(f"insulation fault while charging: {ohm_per_v:.0f} ohm/V "
                            "(GB/T 18487.1 B.5.1)", code="insulation", latched=True)
            elif ohm_per_v <= T.INSULATION_OK_OHM_PER_V:
                self._out.append(Notice(self.now, "insulation_warning",
                                        f"{ohm_per_v:.0f} ohm/V (100-500 ohm/V: warn)"))

    def _clear_faults(self, by: str) -> None:
        if self.state is State.FAULT and self.act.contactors_closed:
            self._out.append(Notice(self.now, "faults_not_cleared",
                                    f"by {by}: the shutdown is still running (K1/K2 closed)"))
            return
        i = self.safety.inputs
        if i is not None and i.safety_relay_tripped:
            self._out.append(ResetSafetyTrip(f"faults cleared by {by}"))
        cleared = self.safety.clear()
        self.act.heartbeat_withheld = ""  # serviced: the heartbeat resumes
        self.plant.feedback_judged_from = self.now
        thermal_ok = self.thermal.clear(self.now) if self.thermal is not None else True
        self._out.append(Notice(self.now, "faults_cleared",
                                f"by {by}: {', '.join(cleared) or 'none'}"
                                + ("" if thermal_ok else "; thermal fault not clearable yet")))
        if self.state is State.FAULT:
            self._fire(Trigger.FAULTS_CLEARED, f"faults cleared by {by}")

    def _supervise(self) -> None:
        """Per tick: thermal verdict, safety-I/O staleness, safety-controller heartbeat."""
        self.thermal_limit_a = math.inf
        if self.thermal is not None:
            verdict = self.thermal.evaluate(self.now, self._measured_current())
            fraction = max(verdict.limit_fraction, 0.0)
            # Only a derate is a thermal limit; at full rating the gun's own limit applies.
            if fraction < 1.0:
                self.thermal_limit_a = fraction * self.ratings.max_current_a
            for f in verdict.faults:
                if f.latched or self._at_stake():
                    kind = next((v for k, v in _CST_FOR_SENSOR.items() if k in f.sensor),
                                ChargerFault.OTHER)
                    self._fault(f"{f.sensor} {f.kind.replace('_', ' ')}: {f.detail}",
                                code=f"thermal_{f.kind}",
                                emergency=f.kind == "over_temperature", latched=f.latched,
                                faults=frozenset({kind}))
        if self.require_safety_io and self._at_stake():
            since = self.plant.safety_io_at
            if since is None or self.now - since > T.SAFETY_IO_STALE.seconds:
                self._fault("safety I/O silent (E-stop, door, temperatures unknown)",
                            code="safety_io", emergency=True)
        self._confirm_safe_state()
        self._kick_heartbeat()

    def _confirm_safe_state(self) -> None:
        """After a fault with the output live, fresh module readings must show the current
        on its way to <= 5 A: below a line from its level at the fault (after
        SAFE_STATE_GRACE) to 5 A at the GB 44263 deadline less the hand-over's own time. A
        module that refuses or ignores the 0 A write, or cannot be read, leaves that line:
        the heartbeat stops and the safety controller opens K1/K2 and turns the output off
        in hardware (I15). The fault is latched: only a service clear resumes the beat."""
        d, a = self.data, self.act
        if self.state is not State.FAULT or not d.fault_live or d.fault_at is None \
                or a.heartbeat_withheld:
            return
        st, at = self.plant.status, self.plant.sampled_at
        fresh = st is not None and at is not None and at > d.fault_at \
            and self.now - at <= T.SAFE_STATE_GRACE.seconds
        amps = abs(st.output_current_a) if st is not None and fresh else math.inf
        if amps <= T.CONTACTOR_OPEN_CURRENT_A:
            d.fault_live = False  # confirmed
            return
        since = self.now - d.fault_at
        if since <= T.SAFE_STATE_GRACE.seconds:
            return
        deadline = T.SAFE_STATE_DEADLINE_HIGH \
            if d.fault_current_a > T.SAFE_STATE_HIGH_CURRENT_A else T.SAFE_STATE_DEADLINE
        span = deadline.seconds - T.SAFE_STATE_HANDOVER_S - T.SAFE_STATE_GRACE.seconds
        done = min((since - T.SAFE_STATE_GRACE.seconds) / span, 1.0)
        allowed = max(d.fault_current_a - (d.fault_current_a - T.CONTACTOR_OPEN_CURRENT_A)
                      * done, T.CONTACTOR_OPEN_CURRENT_A)
        if amps <= allowed:
            return
        seen = f"{amps:.1f} A, above {allowed:.1f} A" if math.isfinite(amps) \
            else "no fresh module reading"
        reason = (f"the shutdown is not on its way to <= 5 A {since:.2f} s after the fault "
                  f"({seen}; {deadline.source}): heartbeat stopped, the safety controller "
                  "opens K1/K2")
        a.heartbeat_withheld = reason
        self._out.append(Notice(self.now, "safe_state_unconfirmed", reason))
        self._fault(reason, code="safe_state_unconfirmed", emergency=True, latched=True)

    def _kick_heartbeat(self) -> None:
        a = self.act
        if a.internal_error or a.heartbeat_withheld:
            # A broken core, or a safe state the core could not reach: the safety
            # controller's watchdog expires and its hardware opens K1/K2 (I15).
            return
        period = T.HEARTBEAT_PERIOD.seconds
        due = self.now if a.heartbeat_at is None else a.heartbeat_at + period
        if self.now >= due - 1e-9:
            a.heartbeat = (a.heartbeat + 1) & 0xFFFF
            # On the grid of the periodic messages, so the kicks share their wakes.
            a.heartbeat_at = grid_slot(due if a.heartbeat_at is not None else None, period,
                                       self.now)
            self._out.append(KickSafetyWatchdog(a.heartbeat))
