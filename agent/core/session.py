"""One gun's charging session, GB/T 27930-2015 charger side, sans-I/O.

`GunSession.handle(event)` takes one event and returns the commands to execute. The
states and legal transitions come from `agent.core.states.TRANSITIONS`; this class
supplies what happens inside each state (its steps, watchdogs and periodic messages).
Every commanded current goes through `agent.core.arbiter.decide_current`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from transitions import Machine

from agent.core import timing as T
from agent.core.commands import (
    Command,
    KickSafetyWatchdog,
    Notice,
    Transmit,
)
from agent.core.deadline import next_deadline
from agent.core.events import (
    DriverError,
    EnergyHistory,
    Event,
    MeterLost,
    MeterReading,
    ModuleLinkLost,
    ModuleStatus,
    OwnerPolicy,
    PoolCapability,
    ShutdownDeadline,
    StopRequested,
    Tick,
    VehicleConnected,
    VehicleDataNotice,
    VehicleDisconnected,
    VehicleMessage,
)
from agent.core.gbt_profile import v2g_answer_in_time
from agent.core.health_policy import HealthPolicy
from agent.core.messages import (
    BCL,
    BCP,
    BCS,
    BDP,
    BDS,
    BEM,
    BHM,
    BMT,
    BMV,
    BRM,
    BRO,
    BSD,
    BSM,
    BST,
    CDP,
    CST,
    BmsMessage,
    CemTimeout,
    ChargerError,
    ChargerFault,
    ChargerStopReason,
    Ready,
)
from agent.core.metering import disagree
from agent.core.module_faults import active_faults
from agent.core.outgoing import PeriodicSender, messages_for
from agent.core.ratings import GunRatings, offers_v2g
from agent.core.safety import SafetySupervisor
from agent.core.safety_handling import SafetyHandling
from agent.core.session_data import Actuators, Plant, SessionData
from agent.core.states import STOPPABLE, TRANSITIONS, State, Trigger
from agent.core.steps import SequenceSteps
from agent.core.thermal_guard import ThermalSupervisor
from agent.core.transfer_control import TransferControl
from agent.core.upstream import UpstreamArbiter, UpstreamPolicy, setpoint_ratings
from agent.core.vehicle_view import NO_VEHICLE

_ENERGISED = (State.INSULATION_CHECK, State.PRECHARGE, State.CHARGING, State.STOPPING)


class GunSession(SequenceSteps, SafetyHandling, TransferControl):
    def __init__(
        self,
        ratings: GunRatings,
        *,
        upstream: UpstreamPolicy | None = None,
        thermal: ThermalSupervisor | None = None,
        require_safety_io: bool = False,
        health: HealthPolicy | None = None,
        owner_policies: dict[str, HealthPolicy] | None = None,
        pooled: bool = False,
    ) -> None:
        """pooled: the gun draws on a pile's shared module pool (agent/core/pile.py), so it
        may deliver only what the pool's latest PoolCapability gives it (none yet: 0 A)."""
        self.ratings = ratings
        self.pooled = pooled
        self.operator_policy = health or HealthPolicy()
        self.owner_policies = dict(owner_policies or {})
        self.view = NO_VEHICLE
        self.decision = None
        self.limits = None
        self.safety = SafetySupervisor()
        self.upstream = UpstreamArbiter(
            upstream or UpstreamPolicy(), ratings.max_current_a,
            max(ratings.max_power_w, ratings.max_discharge_power_w), ratings.min_voltage_v,
            ratings=setpoint_ratings(ratings))
        self.thermal = thermal
        self.require_safety_io = require_safety_io
        self.thermal_limit_a = math.inf
        self.now = 0.0
        self.data = SessionData()
        self.act = Actuators()
        self.plant = Plant()
        self._out: list[Command] = []
        self._periodic = PeriodicSender()
        self.busy = False  # the last tick moved the sequence on (agent/core/deadline.py)
        self._machine = Machine(
            model=self,
            states=State,
            initial=State.IDLE,
            transitions=[
                {
                    "trigger": trig.value,
                    "source": list(sources),
                    "dest": dest,
                    **({"conditions": guard} if guard else {}),
                }
                for trig, sources, dest, guard in TRANSITIONS
            ],
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    # ---- guards (pure predicates) ------------------------------------------------

    def is_start_allowed(self) -> bool:
        return self.is_restart_allowed() and not (
            self.require_safety_io and (self.plant.safety_io_at is None
                                        or self.plant.safety_io_lost))

    def is_restart_allowed(self) -> bool:
        thermal_ok = self.thermal is None or not self.thermal.latched
        return self.safety.can_start() and thermal_ok

    def is_rearm_allowed(self) -> bool:
        """Leaving FAULT: the shutdown is over (K1/K2 commanded open) and nothing blocks a
        restart. IDLE never holds closed contactors."""
        return not self.act.contactors_closed and self.is_restart_allowed()

    # ---- entry point ---------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the next tick is due if no event arrives (agent/core/deadline.py)."""
        return next_deadline(self)

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; return the commands it causes. Never raises."""
        self._out = []
        if math.isfinite(event.t) and event.t > self.now:
            self.now = event.t
        before = (self.state, self.data.phase)
        try:
            self._dispatch(event)
        except Exception as exc:  # any bug must end in the safe state
            self._fail_safe(f"internal error handling {type(event).__name__}: {exc!r}")
        out, self._out = self._out, []
        if isinstance(event, Tick):
            # A tick that moved the sequence on (a command, a new state or phase) may have
            # made the next step possible at once: the next tick is due a step later.
            self.busy = (self.state, self.data.phase) != before or any(
                not isinstance(c, Transmit | KickSafetyWatchdog) for c in out)
        return out

    def _dispatch(self, event: Event) -> None:
        if self._on_safety_event(event):
            return
        match event:
            case Tick():
                self._on_tick()
            case VehicleMessage(message=message):
                self.data.last_rx[type(message).__name__] = self.now
                self._on_vehicle_message(message)
            case ModuleStatus():
                self._on_module_status(event)
            case ModuleLinkLost(detail=detail):
                self.plant.link_lost_detail = detail
                if self._at_stake():
                    self._fault(f"power module link lost: {detail}", code="module_link",
                                emergency=True)
            case VehicleDataNotice():
                self._notice(self.data.vehicle_data.on_vehicle(event, self.now))
            case DriverError(source=source, detail=detail, fatal=fatal):
                if fatal and self.state in (*STOPPABLE, State.STOPPING, State.WELDING_CHECK):
                    self._fault(f"{source} driver failed: {detail}", code=f"{source}_driver",
                                emergency=True)
                elif not fatal:
                    self._notice(self.data.vehicle_data.on_driver(event, self.now))
            case VehicleConnected(wall_clock_s=wall):
                if self.state is State.IDLE:
                    if not self.is_start_allowed():
                        why = self.safety.blocking_reason() or "safety I/O not available"
                        self._out.append(Notice(self.now, "start_refused", why))
                        return
                    self.data = SessionData(started_at=self.now, wall_clock_at_start=wall)
                    self.view = NO_VEHICLE
                    self._fire(Trigger.PLUGGED_IN, "vehicle connected")
            case VehicleDisconnected():
                self._on_unplugged()
            case StopRequested(reason=reason):
                self._stop(reason, CST(reasons=frozenset({ChargerStopReason.MANUAL})))
            case ShutdownDeadline(reason=reason):
                # What still runs, or an error shutdown still ramping with K1/K2 closed,
                # ends now: output off, K1/K2 open (an already reported fault keeps its
                # reason). A session already safe (output off, K1/K2 open) that only waits
                # for the vehicle's statistics (BSD) is reported as interrupted, not as a
                # fault: nothing went wrong but the agent's stop.
                if self.state not in (State.IDLE, State.FINISHED, State.FAULT) \
                        or self.act.contactors_closed or self.act.module_enabled:
                    safe = not (self.act.contactors_closed or self.act.module_enabled)
                    self.data.outcome_reason = self.data.outcome_reason or reason
                    if safe:
                        self.data.outcome_override = "interrupted"
                    self._fault(f"{reason}: the stop sequence did not finish in time",
                                code="agent_stopped", emergency=True)
            case OwnerPolicy(policy=policy, source=source):
                problems = policy.problems()
                if problems:
                    self._out.append(Notice(self.now, "owner_policy_rejected",
                                            f"{source}: " + "; ".join(problems)))
                else:
                    self.data.owner_policy = policy
            case MeterReading():
                self._on_meter(event)
            case PoolCapability():
                self.plant.pool = event
            case MeterLost(detail=detail):
                if self._at_stake() and not self.data.metering.note:
                    self._out.append(Notice(self.now, "meter_lost", detail))
                    self.data.metering.note = f"meter lost: {detail}"
            case EnergyHistory(vin=vin, discharged_kwh=dis, throughput_kwh=thr):
                brm = self.data.brm
                if brm is not None and brm.vin == vin and math.isfinite(dis + thr):
                    self.data.today_discharged_kwh = max(dis, 0.0)
                    self.data.today_throughput_kwh = max(thr, 0.0)

    # ---- vehicle presence --------------------------------------------------------

    def _on_unplugged(self) -> None:
        if self.state is State.FAULT and self.act.contactors_closed:
            # Still ramping down to open: with the car gone there is no load, so open now.
            self._fault("vehicle disconnected during the shutdown", emergency=True,
                        faults=frozenset({ChargerFault.CONNECTOR}))
        if self.state in (State.FINISHED, State.FAULT):
            self._fire(Trigger.UNPLUGGED, "vehicle disconnected")
        elif self.state is not State.IDLE:
            self._fault("vehicle disconnected during the session", emergency=True,
                        faults=frozenset({ChargerFault.CONNECTOR}))

    # ---- inputs --------------------------------------------------------------------

    def _on_module_status(self, status: ModuleStatus) -> None:
        # A status is as old as the poll that read it, not as the step that handles it: the
        # bus owner runs as its own task, so a reading taken before a command can reach the
        # core after it. Stamping it with the handling time once let a gun voltage read
        # before the vehicle closed K5/K6 pass as a measurement of the closed battery.
        sampled_at = self._sampled_at(status.t)
        last = self.plant.sampled_at
        if last is not None and sampled_at < last:
            return  # older than what we hold: it can only mislead
        if self.plant.status is not None and last is not None:
            dt = sampled_at - last
            if 0.0 < dt <= T.MODULE_STATUS_STALE.seconds:
                power_w = status.output_voltage_v * status.output_current_a
                if math.isfinite(power_w):
                    kwh = power_w * dt / 3.6e6
                    if kwh >= 0.0:
                        self.data.charged_kwh += kwh
                    else:
                        self.data.discharged_kwh -= kwh
                        self._count_outside_window(dt)
        previous = self.plant.status
        # Two successive samples that agree: the current is not ramping, so this sample can
        # witness a meter reading taken up to a second away (metering cross-check, D7).
        self.plant.current_steady = previous is not None and not disagree(
            previous.output_current_a, status.output_current_a)
        self.plant.status = status
        self.plant.sampled_at = sampled_at
        if status.grid_frequency_hz is not None:
            self.upstream.on_frequency(status.grid_frequency_hz, sampled_at)
        self._track_figures(status)
        self._check_contactor_feedback(status, sampled_at)
        self._check_output(status, sampled_at)
        if status.insulation_ohm is not None:
            self.plant.insulation_ohm = status.insulation_ohm
            self.plant.insulation_at = sampled_at
        if status.fault_word and self.state not in (State.IDLE, State.FINISHED, State.FAULT):
            faults = active_faults(status.fault_word)
            self._fault(
                "power module fault: " + ", ".join(f.name for f in faults),
                code="module_" + faults[0].name,
                emergency=any(f.emergency for f in faults),
                latched=any(f.latched for f in faults),
                faults=frozenset(f.cst for f in faults),
            )

    def _check_output(self, status: ModuleStatus, sampled_at: float) -> None:
        """The output held to its command while it delivers (I18) and to the voltage limits
        while a vehicle is on the gun (I17); each a latched error shutdown (the plant is
        broken)."""
        if self.state in (State.IDLE, State.FINISHED):
            return
        p = self.plant
        # Over-current while the output is meant to deliver; a stop and an error shutdown
        # have their own budget for a current that does not fall (I5).
        over_current = None
        if self.state in (State.PRECHARGE, State.CHARGING):
            over_current = p.over_current.sample(sampled_at, status.output_current_a)
        else:
            p.over_current.idle()
        if over_current is not None:
            self._fault(over_current, code="over_current", latched=True,
                        errors=frozenset({ChargerError.CURRENT_MISMATCH}))
        over_voltage = p.over_voltage.sample(
            sampled_at, max(status.output_voltage_v, status.gun_voltage_v), self._max_voltage_v())
        if over_voltage is not None:
            self._fault(over_voltage, code="over_voltage", latched=True,
                        errors=frozenset({ChargerError.VOLTAGE_ABNORMAL}))

    def _max_voltage_v(self) -> float:
        """The highest output voltage allowed now: the gun's rating, and the vehicle's
        maximum once it has said it (handshake, then parameters)."""
        d, limit = self.data, self.ratings.max_voltage_v
        if d.bhm is not None:
            limit = min(limit, d.bhm.max_charge_voltage_v)
        if d.bcp is not None:  # from parameter exchange on, not only once charging
            limit = min(limit, d.bcp.max_total_voltage_v)
        return limit

    def _check_contactor_feedback(self, status: ModuleStatus, sampled_at: float) -> None:
        """K1/K2 feedback must follow the command within CONTACTOR_FEEDBACK, in every state
        (a pile whose contactor welded in the last session must not start the next). A sample
        taken before a service clear does not count: it predates the repair. Pole by pole:
        commanded closed, both must read closed; commanded open, neither may."""
        a, p = self.act, self.plant
        closed = status.any_contactor_closed if not a.contactors_closed \
            else status.contactors_closed
        if closed == a.contactors_closed:
            p.feedback_mismatch_since = None
            return
        if p.feedback_mismatch_since is None:
            p.feedback_mismatch_since = sampled_at
        since = max(p.feedback_mismatch_since, p.feedback_judged_from,
                    a.contactors_changed_at or -math.inf)
        if sampled_at - since <= T.CONTACTOR_FEEDBACK.seconds:
            return
        if closed:
            self._fault("K1/K2 read closed while commanded open: welded contactor",
                        code="welding", emergency=True, latched=True)
        elif self.state is not State.FAULT:
            self._fault("K1/K2 did not close (or opened by themselves)", code="contactor",
                        emergency=True)

    def _on_vehicle_message(self, message: BmsMessage) -> None:
        d = self.data
        match message:
            case BHM():
                d.bhm = message
                if self.state is State.HANDSHAKE:
                    self._fire(Trigger.HANDSHAKE_RECEIVED, "BHM received")
            case BRM():
                d.brm = message
                if self.state is State.IDENTIFICATION:
                    self._fire(Trigger.VEHICLE_IDENTIFIED, "BRM received")
            case BCP():
                if self.state is State.PARAMETER_EXCHANGE and d.bcp is None:
                    self._accept_bcp(message)
            case BRO(ready=ready):
                if self.state is State.PARAMETER_EXCHANGE and d.bcp is not None:
                    d.bro_seen_at = d.bro_seen_at if d.bro_seen_at is not None else self.now
                    if ready is Ready.READY:
                        self._fire(Trigger.VEHICLE_READY, "BRO(0xAA) received")
            case BDP():
                self._on_bdp(message)
            case BDS():
                if d.v2g_negotiated:
                    d.bds = message
            case BCL():
                d.bcl = message
            case BCS():
                d.bcs = message
            case BSM():
                d.bsm = message
                self._on_bsm(message)
            case BST():
                d.bst_seen_at = d.bst_seen_at if d.bst_seen_at is not None else self.now
                self._stop("BMS sent BST", CST(reasons=frozenset({ChargerStopReason.BMS_STOPPED})))
            case BMV():
                d.bmv = message
                volts = [v for v in message.cell_voltages_v if v is not None]
                d.bmv_range_v = (min(volts), max(volts)) if volts else None
            case BMT():
                d.bmt = message
            case BSD():
                d.bsd = message
            case BEM(timeouts=timeouts):
                if self.state in (*STOPPABLE, State.STOPPING):
                    names = ", ".join(sorted(x.value for x in timeouts)) or "unspecified"
                    self._fault(f"BMS reported a timeout (BEM: {names})")

    def _accept_bcp(self, bcp: BCP) -> None:
        r = self.ratings
        if not (r.min_voltage_v <= bcp.battery_voltage_v <= r.max_voltage_v):
            self._fault(
                f"battery voltage {bcp.battery_voltage_v} V outside the charger's "
                f"{r.min_voltage_v}-{r.max_voltage_v} V",
                faults=frozenset({ChargerFault.ENERGY_UNAVAILABLE}),
            )
            return
        self.data.bcp = bcp
        self.data.start_soc_pct = bcp.soc_pct

    def _on_bdp(self, bdp: BDP) -> None:
        """The vehicle's answer to the V2G offer (extension, docs/V2G.md): it counts only in
        parameter exchange, before BRO(0xAA) and within V2G_ANSWER of the first CDP."""
        d = self.data
        if d.v2g_negotiated:
            return
        if self.state is State.PARAMETER_EXCHANGE and offers_v2g(self.ratings) \
                and v2g_answer_in_time(d, self.now):
            d.bdp, d.v2g_negotiated = bdp, True
            self._out.append(Notice(
                self.now, "v2g_negotiated",
                f"vehicle discharges up to {bdp.max_discharge_current_a:.1f} A / "
                f"{bdp.max_discharge_power_w / 1000:.1f} kW, not below "
                f"{bdp.min_discharge_voltage_v:.1f} V or {bdp.soc_floor_pct:.1f} % SOC, "
                f"{bdp.energy_kwh:.1f} kWh window; consent "
                f"{'given' if bdp.consent else 'not given'}"))
        else:
            self._out.append(Notice(self.now, "v2g_answer_ignored",
                                    "BDP outside the V2G negotiation window: charge only"))

    def _on_meter(self, reading: MeterReading) -> None:
        d = self.data
        if self.state in (State.IDLE, State.FINISHED, State.FAULT):
            return
        rebases = d.metering.rebases
        closed = d.metering.on_reading(reading, self._wall(), d.direction.active.value,
                                       self.state is State.CHARGING)
        if closed is not None:
            self._out.append(closed)
        checkpoint = d.metering.checkpoint(self._wall())
        if checkpoint is not None:
            self._out.append(replace(
                checkpoint, vin=d.brm.vin if d.brm else "", start_wall=d.wall_clock_at_start,
                start_soc_pct=d.start_soc_pct, soc_pct=self.view.soc_pct,
                peak_power_w=d.peak_power_w))
        if d.metering.rebases != rebases:
            # Billing must hear of it now, not in the session's record hours later.
            self._out.append(Notice(self.now, "meter_rebased",
                                    f"DC meter counters went backwards (replaced or reset: "
                                    f"{reading.to_vehicle_kwh:.3f} kWh in, "
                                    f"{reading.from_vehicle_kwh:.3f} "
                                    "kWh out now); the energy so far is banked, counted on "
                                    "from this reading"))
        if self.state is not State.CHARGING:
            return
        if d.bcs is not None and self.now - d.last_rx.get("BCS", -math.inf) \
                <= T.TIMEOUTS["BCL"].seconds \
                and d.metering.vehicle_disagrees(reading, d.bcs.measured_current_a, self.now):
            self._out.append(Notice(self.now, "meter_vehicle_mismatch",
                                    f"DC meter {reading.current_a:.1f} A, vehicle (BCS) "
                                    f"{d.bcs.measured_current_a:.1f} A for over 5 s"))
        st, at = self.plant.status, self.plant.sampled_at
        # A module sample during a ramp is no witness: at 100 A/s, a second between the two
        # samples is 100 A apart (a VPP that moves the setpoint often raised false faults).
        module_a = st.output_current_a if st is not None and at is not None \
            and self.plant.current_steady \
            and abs(at - reading.t) <= T.MODULE_STATUS_STALE.seconds else None
        if d.metering.cross_check(reading, module_a, self.now):
            self._fault(f"DC meter reads {reading.current_a:.1f} A against the module's "
                        f"{module_a:.1f} A for over 5 s: metering not trustworthy",
                        code="meter_mismatch")

    def _count_outside_window(self, dt: float) -> None:
        """Seconds of discharge with the battery outside the policy's temperature window
        (the health figures; the HEALTH candidate keeps this at 0)."""
        p, cells = self.health_policy(), self.view.cells
        hot = cells.max_temperature_c is not None and cells.max_temperature_c > p.max_temperature_c
        cold = cells.min_temperature_c is not None and cells.min_temperature_c < p.min_temperature_c
        if hot or cold:
            self.data.outside_window_s += dt

    def _on_bsm(self, bsm: BSM) -> None:
        if self.state is not State.CHARGING:
            return
        if bsm.abnormal():
            self._stop("BSM reports an abnormal battery state",
                       CST(reasons=frozenset({ChargerStopReason.FAULT}),
                           faults=frozenset({ChargerFault.OTHER})))
        elif not bsm.charge_permitted:
            if self.data.paused_since is None:
                self.data.paused_since = self.now
        else:
            self.data.paused_since = None

    # ---- time ----------------------------------------------------------------------

    def _on_tick(self) -> None:
        self._supervise()
        self._check_watchdogs()
        if self.state is State.FAULT:
            self._advance_fault()
        else:
            self._advance_state()
        self._control()
        self._send_periodic()

    def _module_heard_since(self) -> float:
        """The last module sample of this session (its start, before the first)."""
        since = self.plant.sampled_at
        return self.data.started_at if since is None or since < self.data.started_at \
            else since

    def _check_watchdogs(self) -> None:
        now = self.now
        if self._at_stake() and now - self._module_heard_since() > T.MODULE_STATUS_STALE.seconds:
            self._fault("power module silent", code="module_link", emergency=True)
            return
        waiting = self._awaited_message()
        if waiting is None:
            return
        name, since, cem = waiting
        if now - since > T.TIMEOUTS[name].seconds:
            self._fault(f"{name} timeout ({T.TIMEOUTS[name].source})", code="timeout", cem=cem)

    def _awaited_message(self) -> tuple[str, float, frozenset[CemTimeout]] | None:
        d, entered = self.data, self.data.state_entered_at
        match self.state:
            case State.HANDSHAKE:
                return "BHM", entered, frozenset()
            case State.IDENTIFICATION:
                return "BRM", entered, frozenset({CemTimeout.BRM})
            case State.PARAMETER_EXCHANGE if d.bcp is None:
                return "BCP", entered, frozenset({CemTimeout.BCP})
            case State.PARAMETER_EXCHANGE if d.bro_seen_at is None and d.first_cml_at:
                return "BRO", d.first_cml_at, frozenset({CemTimeout.BRO})
            case State.PARAMETER_EXCHANGE if d.bro_seen_at is not None:
                return "BRO_AA", d.bro_seen_at, frozenset({CemTimeout.BRO})
            case State.CHARGING:
                bcl = d.last_rx.get("BCL", entered)
                bcs = d.last_rx.get("BCS", entered)
                if self.now - max(bcl, entered) > T.TIMEOUTS["BCL"].seconds:
                    return "BCL", max(bcl, entered), frozenset({CemTimeout.BCL})
                return "BCS", max(bcs, entered), frozenset({CemTimeout.BCS})
        return None

    # ---- periodic messages -----------------------------------------------------

    def _send_periodic(self) -> None:
        d = self.data
        if self.state is State.PARAMETER_EXCHANGE and d.bcp is not None and d.first_cml_at is None:
            d.first_cml_at = self.now
        due = messages_for(self.state, d, self.ratings, self.plant.status, self.now)
        sent = self._periodic.due(due, self.now)
        if d.first_cdp_at is None and any(isinstance(m, CDP) for m in sent):
            d.first_cdp_at = self.now
        self._out.extend(Transmit(m) for m in sent)
