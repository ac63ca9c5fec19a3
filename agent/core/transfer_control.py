"""Energy transfer in both directions: the only path to a module setpoint.

Every tick the session's state gives a target (insulation test, precharge, energy
transfer, ramp-down, or output off). In energy transfer the vehicle is read through
its one view (`gbt_profile.view_of`), the direction is chosen (discharge only with a V2G
vehicle's live consent and an authorised upstream discharge setpoint: ISO 15118-20
Dynamic BPT, the EV gives limits and the charger picks within them), a direction change
passes through zero (`direction.DirectionControl`), and every limit of that direction
becomes an arbiter candidate. `decide_current` decides; nothing here clamps.
"""

from __future__ import annotations

import math

from agent.core import timing as T
from agent.core.arbiter import (
    CurrentDecision,
    CurrentLimits,
    Limit,
    VoltageDecision,
    decide_current,
    decide_discharge_voltage,
    decide_voltage,
)
from agent.core.commands import Notice
from agent.core.direction import Direction, Outcome
from agent.core.events import ModuleStatus
from agent.core.gbt_profile import view_of
from agent.core.health_policy import (
    EnergyUse,
    HealthPolicy,
    discharge_health_limit,
    soc_window_limit,
    strictest,
)
from agent.core.ratings import offers_v2g
from agent.core.session_base import SessionBase
from agent.core.states import State
from agent.core.vehicle_view import VehicleView

# When one of these bounds a discharge at zero, discharge is held, and the reason is said
# once (a stop reason of the phase: "SOC floor reached", "V2X energy window used up", ...).
_HOLDS = {Limit.SOC_WINDOW, Limit.ENERGY_WINDOW, Limit.CONSENT, Limit.EV_MIN_VOLTAGE,
          Limit.HEALTH, Limit.UPSTREAM}


class TransferControl(SessionBase):
    thermal_limit_a: float
    operator_policy: HealthPolicy
    owner_policies: dict[str, HealthPolicy]
    view: VehicleView
    decision: CurrentDecision | None  # the latest, for reports and tests
    pooled: bool
    limits: CurrentLimits | None  # the latest decision's inputs (the pool plans by them)

    # ---- what the vehicle and the parties allow ---------------------------------

    def health_policy(self) -> HealthPolicy:
        """Operator's (per pile), owner's (per VIN, and per session) policies: strictest.
        Combined once per change of its inputs, not on every 10 ms tick."""
        d = self.data
        vin = d.brm.vin if d.brm else ""
        key = (vin, d.owner_policy)
        if d.policy_for != key or d.policy is None:
            d.policy_for = key
            d.policy = strictest(self.operator_policy, self.owner_policies.get(vin),
                                 d.owner_policy)
        return d.policy

    def _energy_use(self) -> EnergyUse:
        """This vehicle's energy today: the ledger's earlier sessions plus this one."""
        d = self.data
        return EnergyUse(d.today_discharged_kwh + d.discharged_kwh,
                         d.today_throughput_kwh + d.charged_kwh + d.discharged_kwh)

    def _upstream_discharge_a(self) -> float:
        """The authorised discharge setpoint's magnitude (0: none, or expired: upstream
        silent never sustains a discharge). Power limits are turned into amps at the phase's
        highest pack voltage, as the other discharge power limits (I2); a setpoint at the
        measured voltage."""
        d, st = self.data, self.plant.status
        measured = st.output_voltage_v if st is not None else 0.0
        return self.upstream.limit_a(self.now, charging=False,
                                     volts=max(d.discharge_peak_v, measured),
                                     target_volts=measured or d.discharge_peak_v)[0]

    def _wanted_direction(self, view: VehicleView) -> Direction:
        if offers_v2g(self.ratings) and view.v2g and view.consent \
                and self._upstream_discharge_a() > 0.0:
            return Direction.DISCHARGE
        return Direction.CHARGE

    # ---- control ------------------------------------------------------------------

    def _control(self) -> None:
        d = self.data
        if self.state is State.CHARGING and d.bcl is not None and d.bcp is not None:
            transfer = self._transfer_limits()
            if transfer is None:
                return  # a fault was raised: its own entry turned the output off
            limits, voltage = transfer
        else:
            target = self._sequence_target()
            if target is None:
                # Output off is a decision of 0 A now: the next ramp starts from here (I6).
                self.act.last_decision_t = self.now
                if self.act.module_enabled:
                    self._command_module(enabled=False, voltage_v=0.0, current_a=0.0,
                                         bound="state")
                return
            state_limit_a, demand_a, voltage_v, vbound = target
            voltage = VoltageDecision(voltage_v, vbound)
            limits = self._charge_limits(state_limit_a, demand_a, voltage_v, self.view)
        dt = 0.0 if self.act.last_decision_t is None else self.now - self.act.last_decision_t
        decision = decide_current(limits, previous_a=self.act.current_a, dt_s=dt,
                                  ramp_up_a_per_s=self.ratings.ramp_up_a_per_s)
        self.act.last_decision_t = self.now
        self.decision, self.limits = decision, limits
        if self.state is State.CHARGING:
            self._say_why_discharge_holds(decision)
        self._command_module(
            enabled=True, voltage_v=voltage.voltage_v, current_a=decision.current_a,
            bound=f"{decision.bound_by.value}/voltage:{voltage.bound_by}",
        )

    def _sequence_target(self) -> tuple[float, float, float, str] | None:
        """(state limit A, demand A, voltage V, voltage bound) outside energy transfer, or
        None for output off."""
        d = self.data
        if self.state is State.INSULATION_CHECK and d.phase in ("ramp", "measure"):
            cap = T.INSULATION_TEST_CURRENT_A
            return cap, cap, d.insulation_voltage_v, "insulation_test"
        if self.state is State.PRECHARGE and d.phase in ("match", "close"):
            cap = T.PRECHARGE_CURRENT_A
            return cap, cap, d.precharge_target_v, "precharge"
        if self.state is State.STOPPING and d.phase in ("", "ramp"):
            # Hold the output enabled at 0 A so the module actively ramps down.
            return 0.0, 0.0, self.act.voltage_v, "hold"
        return None

    def _transfer_limits(self) -> tuple[CurrentLimits, VoltageDecision] | None:
        d, st = self.data, self.plant.status
        view = self.view = view_of(d, self.now)
        self._watch_consent(view)
        d.direction.start(self.now)
        outcome = d.direction.update(
            self._wanted_direction(view), self.now,
            st.output_current_a if st is not None else None, self.plant.sampled_at,
            self.act.current_a)
        if outcome is Outcome.TOO_SLOW:
            self._fault(f"direction change: current not <= {T.DIRECTION_CHANGE_CURRENT_A} A "
                        f"in {T.DIRECTION_CHANGE_BUDGET.seconds} s "
                        f"({T.DIRECTION_CHANGE_BUDGET.source})", code="direction_change")
            return None
        if outcome is Outcome.NEW_PHASE:
            d.discharge_held, d.ev_min_voltage_reached, d.discharge_peak_v = None, False, 0.0
            n = len(d.direction.phases)
            self._out.append(Notice(self.now, "energy_transfer_phase",
                                    f"phase {n}: {d.direction.active.value} "
                                    "(after <= 5 A and zero held, GB/T 18487.1-2023 E.5.1)"))
        state_limit_a = 0.0 if d.paused_since is not None else math.inf
        if d.direction.active is Direction.CHARGE:
            voltage = decide_voltage(d.bcl.voltage_demand_v if d.bcl else 0.0,
                                     d.bcp.max_total_voltage_v if d.bcp else 0.0,
                                     d.bhm.max_charge_voltage_v if d.bhm else math.inf,
                                     self.ratings.max_voltage_v)
            # A charge demand only: the vehicle's discharge wish needs the discharge branch.
            limits = self._charge_limits(state_limit_a, max(view.demand_a, 0.0),
                                         voltage.voltage_v, view)
            return limits, voltage
        return self._discharge_limits(state_limit_a, view)

    def _charge_limits(self, state_limit_a: float, demand_a: float, voltage_v: float,
                       view: VehicleView) -> CurrentLimits:
        st, r = self.plant.status, self.ratings
        measured_v = st.output_voltage_v if st is not None else 0.0
        # What the stack can deliver now; 0 means nothing (a stack derated to nothing), and
        # only a module that does not report it leaves it open (I2).
        capability = st.capability_current_a if st is not None \
            and st.capability_current_a is not None else math.inf
        power_cap = st.capability_power_w if st is not None \
            and st.capability_power_w is not None else math.inf
        in_transfer = self.state is State.CHARGING
        pool_a, pool_w = self._pool(discharging=False)
        soc_a = soc_window_limit(self.health_policy(), view, Direction.CHARGE)[0] \
            if in_transfer else math.inf
        return CurrentLimits(
            state_a=state_limit_a,
            ev_demand_a=demand_a,
            ev_max_a=self.data.bcp.max_charge_current_a if self.data.bcp else math.inf,
            charger_max_a=r.max_current_a,
            module_capability_a=capability,
            power_limit_w=min(r.max_power_w, power_cap),
            # The commanded voltage bounds the real one in CC mode, so V_cmd * I <= P
            # guarantees the power limit whatever the battery does (invariant I2).
            voltage_v=max(measured_v, voltage_v),
            thermal_a=self.thermal_limit_a,
            upstream_a=self.upstream.limit_a(self.now, charging=True,
                                             volts=max(measured_v, voltage_v),
                                             target_volts=measured_v or voltage_v)[0],
            grid_limit_w=r.grid_limit_w,
            soc_window_a=soc_a,
            direction_a=self.data.direction.limit_a() if in_transfer else math.inf,
            pool_a=pool_a,
            pool_power_w=pool_w,
        )

    def _discharge_limits(self, state_limit_a: float,
                          view: VehicleView) -> tuple[CurrentLimits, VoltageDecision]:
        d, st, r = self.data, self.plant.status, self.ratings
        ev = view.discharge
        policy = self.health_policy()
        floor = decide_discharge_voltage(ev.min_voltage_v if ev else r.max_voltage_v,
                                         r.min_input_voltage_v)
        measured_v = st.output_voltage_v if st is not None else 0.0
        battery_v = st.gun_voltage_v if st is not None else 0.0
        # The terminal voltage rises when the discharge current falls: the power limits are
        # turned into amps at the highest voltage of the phase, not the present one (I2).
        d.discharge_peak_v = max(d.discharge_peak_v, *(v for v in (
            measured_v, battery_v, view.battery_voltage_v or 0.0) if math.isfinite(v)))
        if ev is not None and battery_v <= ev.min_voltage_v and d.charging_started_at \
                is not None:
            d.ev_min_voltage_reached = True
        upstream_a = self._upstream_discharge_a()
        pool_a, pool_w = self._pool(discharging=True)
        authorised = ev is not None and view.consent and upstream_a > 0.0
        window = ev.remaining_energy_kwh if ev is not None else None
        limits = CurrentLimits(
            state_a=state_limit_a,
            # Dynamic BPT: a vehicle that asks for a discharge (BCL < 0) bounds it by its
            # request; otherwise it gives limits only (-inf) and upstream picks.
            ev_demand_a=view.demand_a if view.demand_a < 0.0 else -math.inf,
            ev_max_a=ev.max_current_a if ev is not None else 0.0,
            charger_max_a=r.max_discharge_current_a,
            module_capability_a=(st.reverse_capability_current_a or 0.0) if st else 0.0,
            power_limit_w=min(r.max_discharge_power_w,
                              (st.reverse_capability_power_w or 0.0) if st else 0.0),
            voltage_v=max(d.discharge_peak_v, floor.voltage_v),
            thermal_a=self.thermal_limit_a,
            upstream_a=upstream_a,
            grid_limit_w=min(r.grid_limit_w, r.export_limit_w),
            ev_power_w=ev.max_power_w if ev is not None else 0.0,
            ev_voltage_a=0.0 if d.ev_min_voltage_reached else math.inf,
            soc_window_a=soc_window_limit(policy, view, Direction.DISCHARGE)[0],
            energy_window_a=0.0 if window is not None and window <= 0.0 else math.inf,
            health_a=discharge_health_limit(policy, view, self._energy_use())[0],
            consent_a=math.inf if authorised else 0.0,
            direction_a=d.direction.limit_a(),
            pool_a=pool_a,
            pool_power_w=pool_w,
        )
        return limits, floor

    def _pool(self, discharging: bool) -> tuple[float, float]:
        """(A, W) the pile's module pool gives this gun in this direction; no limit for a
        gun with its own modules, nothing for a pooled gun before the pool has spoken or
        once it is silent.

        The pool's power share is of one direction's budget (the grid limit for charging,
        the export limit for discharging): a gun whose direction changed after the pool
        planned has no power in the new one until the pool plans it there (its next word,
        <= 100 ms; the change itself takes DIRECTION_DWELL at zero). The share of the side
        it left would put the pile's total over the grid (or export) limit (P4)."""
        if not self.pooled:
            return math.inf, math.inf
        pool = self.plant.pool
        # The pool speaks every control step: a word older than a module status may be
        # old is worth nothing (the coordinator stopped: fail safe, as for a silent module).
        if pool is None or self.now - pool.t > T.MODULE_STATUS_STALE.seconds:
            return 0.0, 0.0
        return pool.current_a, pool.power_w if pool.discharging is discharging else 0.0

    # ---- reporting ------------------------------------------------------------------

    def _watch_consent(self, view: VehicleView) -> None:
        d = self.data
        if view.v2g and view.consent and not d.consent_given:
            d.consent_given = True
        elif d.consent_given and not view.consent:
            d.consent_given = False
            self._out.append(Notice(self.now, "consent_withdrawn",
                                    "the vehicle withdrew its consent to discharge (BDS), "
                                    "or its BDS went silent for "
                                    f"{T.V2G_STATUS.seconds} s"))

    def _say_why_discharge_holds(self, decision: CurrentDecision) -> None:
        """Once per phase and cause: the reason is worded only when the cause changes."""
        d = self.data
        if d.direction.active is not Direction.DISCHARGE or decision.ceiling_a > 0.0 \
                or decision.bound_by not in _HOLDS or decision.bound_by is d.discharge_held:
            return
        d.discharge_held = decision.bound_by
        self._out.append(Notice(self.now, "discharge_held", self._hold_reason(decision.bound_by)))

    def _hold_reason(self, bound: Limit) -> str:
        view, policy = self.view, self.health_policy()
        match bound:
            case Limit.SOC_WINDOW:
                return soc_window_limit(policy, view, Direction.DISCHARGE)[1]
            case Limit.ENERGY_WINDOW:
                return "V2X energy window used up"
            case Limit.CONSENT:
                return "consent withdrawn" if not view.consent else "no authorised setpoint"
            case Limit.EV_MIN_VOLTAGE:
                return "EV minimum discharge voltage reached"
            case Limit.HEALTH:
                return "battery health: " + discharge_health_limit(
                    policy, view, self._energy_use())[1]
        return "upstream discharge setpoint expired or zero"

    def _track_figures(self, status: ModuleStatus) -> None:
        """Peak current and power of the session (health figures), per module sample."""
        d, i, v = self.data, status.output_current_a, status.output_voltage_v
        if math.isfinite(i) and math.isfinite(v):
            d.peak_abs_current_a = max(d.peak_abs_current_a, abs(i))
            d.peak_power_w = max(d.peak_power_w, abs(i * v))
