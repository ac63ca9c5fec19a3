"""What every part of a gun session shares: its data and the primitive operations.

`GunSession` (session.py) combines this with the per-state steps (steps.py) and the
safety handling (safety_handling.py). Only these primitives append commands.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.core import timing as T
from agent.core.commands import (
    Command,
    CurrentDecided,
    Notice,
    SessionReport,
    SetBleeder,
    SetContactors,
    SetModuleOutput,
    StartInsulationTest,
    StateChanged,
)
from agent.core.messages import CST, CemTimeout, ChargerError, ChargerFault, ChargerStopReason
from agent.core.outgoing import PeriodicSender
from agent.core.ratings import GunRatings
from agent.core.safety import Fault, SafetySupervisor
from agent.core.session_data import Actuators, Plant, SessionData
from agent.core.states import STOPPABLE, State, Trigger, next_state
from agent.core.upstream import UpstreamArbiter


class SessionBase:
    state: State
    trigger: Callable[..., bool]  # attached by transitions.Machine
    ratings: GunRatings
    safety: SafetySupervisor
    upstream: UpstreamArbiter
    now: float
    data: SessionData
    act: Actuators
    plant: Plant
    _out: list[Command]
    _periodic: PeriodicSender

    # ---- transitions -----------------------------------------------------------

    def _fire(self, trigger: Trigger, reason: str) -> bool:
        if next_state(self.state, trigger) is None:
            return False
        source = self.state
        if not self.trigger(trigger.value):
            return False
        self.data.state_entered_at = self.now
        self._set_phase("")
        self._out.append(StateChanged(self.now, source.value, self.state.value, reason))
        self._on_enter(self.state, reason)
        return True

    def _on_enter(self, state: State, reason: str) -> None:
        if state is State.FINISHED:
            self.data.outcome_reason = self.data.outcome_reason or reason
            self._report("finished")
        elif state is State.FAULT:
            self.data.fault_at = self.now
            st = self.plant.status
            self.data.fault_current_a = abs(st.output_current_a) if st is not None else 0.0
            self.data.fault_live = self.act.contactors_closed or self.act.module_enabled \
                or self.data.fault_current_a > T.CONTACTOR_OPEN_CURRENT_A
            self.data.outcome_reason = reason
            self._command_module(enabled=False, voltage_v=0.0, current_a=0.0, bound="state")
            if self.data.fault_emergency:
                self._command_contactors(closed=False)
            self._report("fault")
        elif state is State.IDLE:
            self._periodic.reset()

    def _stop(self, reason: str, cst: CST) -> None:
        if self.state in STOPPABLE:
            self.data.stop_message = cst
            # The first cause of the stop is the session's outcome reason, not the last
            # step of the stop sequence ("BSD received").
            self.data.outcome_reason = self.data.outcome_reason or reason
            self._fire(Trigger.STOP_REQUESTED, reason)

    def _stop_for(self, reason: str) -> None:
        self._stop(reason, CST(reasons=frozenset({ChargerStopReason.FAULT}),
                               faults=frozenset({ChargerFault.OTHER})))

    def _fault(
        self,
        reason: str,
        *,
        code: str = "error",
        emergency: bool = False,
        latched: bool = False,
        cem: frozenset[CemTimeout] = frozenset(),
        faults: frozenset[ChargerFault] = frozenset({ChargerFault.OTHER}),
        errors: frozenset[ChargerError] = frozenset(),
    ) -> None:
        """Error shutdown (ramp to <= 5 A, then open) or, if emergency, open at once."""
        self.safety.latch(Fault(code, reason, emergency=emergency, latched=latched))
        if self.state is State.FAULT:
            if emergency and not self.data.fault_emergency:
                self.data.fault_emergency = True
                self._command_contactors(closed=False)
            return
        self.data.fault_emergency = emergency
        self.data.fault_code = code
        self.data.cem_timeouts = cem
        self.data.stop_message = CST(reasons=frozenset({ChargerStopReason.FAULT}), faults=faults,
                                     errors=errors)
        self._fire(Trigger.FAULT_DETECTED, reason)

    def _gun_lock_refuses(self) -> bool:
        """Asked before K1/K2 close: an unlocked gun ends the session instead (I4)."""
        if not self.safety.gun_unlocked():
            return False
        self._fault(f"gun not locked, K1/K2 stay open ({T.GUN_LOCK_BEFORE_CLOSING})",
                    code="gun_lock", faults=frozenset({ChargerFault.CONNECTOR}))
        return True

    def _fail_safe(self, reason: str) -> None:
        """Last resort after an internal error: outputs off, contactors open (I15)."""
        self._out = [
            SetModuleOutput(enabled=False, voltage_v=0.0, current_a=0.0),
            SetContactors(closed=False),
        ]
        self.act.module_enabled, self.act.current_a, self.act.contactors_closed = False, 0.0, False
        self.act.contactors_changed_at = self.now
        self.plant.over_current.command(self.now, 0.0)
        self.act.voltage_v = 0.0
        self.act.internal_error = reason
        try:
            self.data.fault_emergency = True
            if self.state is not State.FAULT:
                self.data.fault_code = "internal_error"
            if self.state is not State.FAULT and self.trigger(Trigger.FAULT_DETECTED.value):
                self.data.state_entered_at = self.now
                self.data.fault_at = self.now
                self.data.outcome_reason = reason
                self._out.append(StateChanged(self.now, "unknown", State.FAULT.value, reason))
        except Exception:  # the commands above are already safe
            pass

    def _at_stake(self) -> bool:
        """In a session, or in an error shutdown that still holds K1/K2 closed while it
        ramps down: losing the module or the safety bus then means opening at once."""
        if self.state is State.FAULT:
            return self.act.contactors_closed
        return self.state not in (State.IDLE, State.FINISHED)

    # ---- actuators: only these append hardware commands ------------------------

    def _command_module(self, *, enabled: bool, voltage_v: float, current_a: float,
                        bound: str) -> None:
        # `act` is what the module was last told. Currents come from the arbiter in whole
        # setpoint steps, so any change is sent; a voltage change under the register's 0.1 V
        # is not, and then `act` keeps the voltage the module really has.
        a = self.act
        if (enabled, round(voltage_v, 1), current_a) == (
                a.module_enabled, round(a.voltage_v, 1), a.current_a):
            return
        a.module_enabled, a.voltage_v, a.current_a = enabled, voltage_v, current_a
        self.plant.over_current.command(self.now, current_a if enabled else 0.0)
        self._out.append(SetModuleOutput(enabled, voltage_v, current_a))
        self._out.append(CurrentDecided(self.now, current_a, voltage_v, bound))

    def _command_contactors(self, *, closed: bool) -> None:
        if self.act.contactors_closed != closed:
            self.act.contactors_closed = closed
            self.act.contactors_changed_at = self.now
            self._out.append(SetContactors(closed))

    def _command_bleeder(self, *, on: bool) -> None:
        if self.act.bleeder_on != on:
            self.act.bleeder_on = on
            self._out.append(SetBleeder(on))

    def _request_insulation_test(self, voltage_v: float) -> None:
        self.data.insulation_requested_at = self.now
        self.plant.insulation_ohm = None
        self._out.append(StartInsulationTest(voltage_v))

    def _notice(self, notice: Notice | None) -> None:
        if notice is not None:
            self._out.append(notice)

    def _report(self, outcome: str) -> None:
        d = self.data
        if d.reported:
            return
        d.reported = True
        last = d.metering.finish(self._wall(), "session end")
        if last is not None:
            self._out.append(last)
        metered = d.metering.last is not None
        nominal = d.bcp.nominal_energy_kwh if d.bcp and d.bcp.nominal_energy_kwh > 0 else None
        capacity = d.brm.rated_capacity_ah if d.brm and d.brm.rated_capacity_ah > 0 else None
        throughput = d.charged_kwh + d.discharged_kwh
        if metered:
            throughput = d.metering.to_vehicle_kwh + d.metering.from_vehicle_kwh
        cells = [d.bmv_range_v[0]] if d.bmv_range_v else []
        if d.bsd is not None:
            cells.append(d.bsd.min_cell_voltage_v)
        temps = [t for t in (d.bsm.max_temperature_c if d.bsm else None,
                             d.bsd.max_temperature_c if d.bsd else None) if t is not None]
        self._out.append(SessionReport(
            t=self.now, outcome=d.outcome_override or outcome, reason=d.outcome_reason,
            energy_kwh=d.energy_kwh,
            duration_s=self.now - d.started_at, start_soc_pct=d.start_soc_pct,
            end_soc_pct=d.end_soc_pct, vehicle_data=dict(d.vehicle_data.counts),
            vin=d.brm.vin if d.brm else "", metering_note=d.metering.note,
            start_wall=d.wall_clock_at_start,
            metered_to_vehicle_kwh=d.metering.to_vehicle_kwh if metered else None,
            metered_from_vehicle_kwh=d.metering.from_vehicle_kwh if metered else None,
            charged_kwh=d.charged_kwh, discharged_kwh=d.discharged_kwh,
            peak_power_w=d.peak_power_w,
            health={
                "equivalent_cycles": throughput / (2 * nominal) if nominal else None,
                "max_c_rate": d.peak_abs_current_a / capacity if capacity else None,
                "min_cell_v": min(cells) if cells else None,
                "max_temperature_c": max(temps) if temps else None,
                "outside_window_s": d.outside_window_s,
                "energy_transfer_phases": float(len(d.direction.phases)),
            },
        ))

    # ---- phases and freshness ----------------------------------------------------

    def _wall(self) -> float:
        """POSIX time now, when the runtime gave the wall clock at plug-in (settlement and
        tariffs need it); the session clock otherwise."""
        d = self.data
        if d.wall_clock_at_start is None:
            return self.now
        return d.wall_clock_at_start + (self.now - d.started_at)

    def _set_phase(self, phase: str) -> None:
        self.data.phase = phase
        self.data.phase_entered_at = self.now

    def _sampled_at(self, t: float) -> float:
        """When a measurement event was taken: its own time (drivers stamp a poll when they
        start it), which can be earlier than the step that handles it."""
        return t if math.isfinite(t) else self.now

    def _fresh_since(self, t: float) -> bool:
        """A module status sampled after t (a sample taken at t predates what t commanded)."""
        at = self.plant.sampled_at
        return self.plant.status is not None and at is not None and at > t

    def _insulation_result_ohm(self) -> float | None:
        """The insulation resistance read after this session asked for it, else None: a
        reading polled before the request was written may still carry the last session's
        valid result (I4)."""
        p, asked = self.plant, self.data.insulation_requested_at
        if p.insulation_at is None or asked is None or not p.insulation_at > asked:
            return None
        return p.insulation_ohm

    def _fresh(self) -> bool:
        """A module status sampled since the current phase began."""
        return self._fresh_since(self.data.phase_entered_at)

    def _in_phase_for(self) -> float:
        return self.now - self.data.phase_entered_at

    def _in_state_for(self) -> float:
        return self.now - self.data.state_entered_at
