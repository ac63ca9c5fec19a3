"""Stateful safety suite: hypothesis drives the sans-I/O core with a random EV, a lagging
module, faults, inputs and setpoints on a simulated clock, and checks every invariant
of docs/SAFETY.md after every 10 ms tick.

Run long: SAFETY_EXAMPLES=2000 python -m pytest tests/test_safety_stateful.py
Mutation check (each removed limit / disabled watchdog must make this fail):
    python -m tests.mutation_check
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from agent.core.commands import Command, SetContactors, SetModuleOutput, StateChanged
from agent.core.events import (
    Event,
    FaultsCleared,
    ModuleLinkLost,
    ModuleStatus,
    SafetyInputs,
    StopRequested,
    TemperatureReading,
    Tick,
    UpstreamLimit,
    VehicleConnected,
    VehicleDisconnected,
    VehicleMessage,
)
from agent.core.messages import BST, BmsStopReason
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from agent.core.thermal_guard import ThermalSupervisor
from tests.safety_model import Ev, EvParams, PlantModel

TICK = 0.01
EPS = 1e-6
RATINGS = GunRatings(max_voltage_v=750.0, min_voltage_v=200.0, max_current_a=250.0,
                     max_power_w=150_000.0, ramp_up_a_per_s=100.0)
# Examples that must run >= MIN_STEPS steps. Hypothesis ends some early on purpose (it
# explores the rare "stop here" branch of its step loop: 7-17 % of examples here), so it
# is given 30 % more and the test checks that enough of them were long.
EXAMPLES = int(os.environ.get("SAFETY_EXAMPLES", "500"))
MIN_STEPS = 100
LONG_EXAMPLES = {"count": 0}
COVERAGE: dict[str, int] = {}
ENERGISED = (State.INSULATION_CHECK, State.PRECHARGE, State.CHARGING, State.STOPPING)
# The spec, written out here rather than read from agent.core.timing, so that a mutated
# constant in the core cannot loosen the check that should catch it.
BCL_TIMEOUT_S = 1.0  # GB/T 27930-2015 §8: BCL silent 1 s -> stop
BCS_TIMEOUT_S = 5.0  # GB/T 27930-2015 §8: BCS 5 s
HANDSHAKE_TIMEOUT_S = 5.0  # GB/T 27930-2015 §8: default 5 s (BHM, BRM)
MODULE_TIMEOUT_S = 1.0  # must act well before the module's own watchdog (1 s here, 10 s max)
OPEN_AT_A = 5.0  # GB/T 18487.1-2015 B.4.6
CABLE_CHECK_A = 2.0  # IEC 61851-23:2023 6.3.1.109 via EVerest
PRECHARGE_A = 20.0  # GB/T 18487.1-2015 B.4.4
STOP_BUDGET_S = 10.0  # GB/T 27930-2015 §8: <= 5 A within 10 s of BST
CONNECTOR_TRIP_C = 105.0  # GB 44263-2024 §6.2.2


def connector_fraction(temp_c: float) -> float:
    """Connector derating: full to 80 °C, none at 90 °C (GB/T 18487.1-2023 Table C.14)."""
    return min(1.0, max(0.0, (90.0 - temp_c) / 10.0))


class SafetyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ratings = RATINGS
        self.s = GunSession(self.ratings, thermal=ThermalSupervisor())
        self.connector_c = 40.0
        self.sensor_open = False
        self.sensor_open_seen = False
        self.last_temp = 40.0
        self.plant = PlantModel()
        self.ev = Ev()
        self.t = 0.0
        self.plugged = False
        self.module_silent = False
        self.module_frozen = False
        # The bus owner is its own task: a status reaches the core some ticks after its poll.
        self.delivery_lag_ticks = 0
        self.in_flight: list[ModuleStatus] = []
        self.ev_lies = False
        self.session_started_t = 0.0
        self.next_poll = 0.0
        self.last_status_t: float | None = None
        self.last_status_a = 0.0
        self.last_status_gun_v = 0.0
        self.last_status_out_v = 0.0
        self.last_status_cap = math.inf
        self.last_bcl_t: float | None = None
        self.last_bcs_t: float | None = None
        self.bsm_permit = True
        self.bcl_demand: float | None = None
        self.bcp_max: float | None = None
        self.bcp_reported_v: float | None = None
        self.bhm_max: float | None = None
        self.upstream: tuple[float, float] | None = None  # (limit A, expires)
        self.upstream_accepted_t = -1e9
        self.prev_cmd_a = 0.0
        self.prev_cmd_t = 0.0
        self.insulation_passed = False
        self.stopping_since_plug = False
        self.estop = False
        self.gun_unlocked = False
        self.reached_charging = False
        self.steps = -1  # invariants also run once after initialize
        self.max_amps = self.max_power_w = 0.0

    # ---- feeding the core --------------------------------------------------------

    def feed(self, event: Event) -> None:
        commands = self.s.handle(event)  # never raises: handle() swallows into fail-safe
        for c in commands:
            self.check_command(c)
            self.plant.apply(c, self.t)
            msg = getattr(c, "message", None)
            if msg is not None:
                self.ev.hear(msg)
            if isinstance(c, StateChanged):
                self.on_state(c)

    def on_state(self, c: StateChanged) -> None:
        if c.dest == "handshake":
            self.bsm_permit = True
            self.bcl_demand = self.bcp_max = self.bcp_reported_v = self.bhm_max = None
            assert not self.s.safety.latched, "started with a latched fault (I12)"
            assert not self.estop, "started with the E-stop pressed (I12)"
            self.insulation_passed = False
            self.stopping_since_plug = False
            self.session_started_t = self.t
        if c.source == "insulation_check" and c.dest == "identification":
            # I4: on this session's measurement, not a result read before it was asked for
            ready = self.plant.insulation_ready_at
            assert ready is not None and ready > self.session_started_t \
                and self.t >= ready, "I4 insulation result not from this session"
            self.insulation_passed = True
        if c.dest == "fault" and "differs from the reported" in c.reason:
            assert self.ev_lies, f"false battery-voltage fault from an honest EV: {c.reason}"
        if c.dest in ("stopping", "fault"):
            self.stopping_since_plug = True
        if c.dest == "charging":
            self.reached_charging = True

    def tick(self) -> None:
        self.t = round(self.t + TICK, 6)
        for msg in self.ev.speak(self.t):
            if type(msg).__name__ == "BSM":
                self.bsm_permit = msg.charge_permitted  # type: ignore[attr-defined]
            if type(msg).__name__ == "BCS":
                self.last_bcs_t = self.t
            if type(msg).__name__ == "BCL":
                self.last_bcl_t, self.bcl_demand = self.t, msg.current_demand_a  # type: ignore[attr-defined]
            if type(msg).__name__ == "BCP" and self.s.state is State.PARAMETER_EXCHANGE \
                    and self.s.data.bcp is None:
                self.bcp_max = msg.max_charge_current_a  # type: ignore[attr-defined]
                self.bcp_reported_v = msg.battery_voltage_v  # type: ignore[attr-defined]
            if type(msg).__name__ == "BHM":
                self.bhm_max = msg.max_charge_voltage_v  # type: ignore[attr-defined]
            self.feed(VehicleMessage(self.t, msg))
        self.plant.step(TICK, self.ev)
        if self.ev.contactors_closed and self.s.state in (State.STOPPING, State.WELDING_CHECK,
                                                          State.FINISHED, State.FAULT) \
                and self.plant.current_a <= 5.0:
            self.ev.contactors_closed = False  # the car opens K5/K6 once current is low
        if self.t >= self.next_poll - EPS:
            self.next_poll = self.t + 0.1
            self.last_temp, self.sensor_open_seen = self.connector_c, self.sensor_open
            for pin in ("connector_dc_plus", "connector_dc_minus"):
                self.feed(TemperatureReading(self.t, pin, math.nan if self.sensor_open else
                                             self.connector_c,
                                             raw_ohm=1e6 if self.sensor_open else None))
            if self.module_frozen:
                pass  # the bus owner hung: neither status nor link-lost arrives
            elif self.module_silent:
                self.feed(ModuleLinkLost(self.t, "no answer"))
            else:
                self.in_flight.append(self.plant.status(self.t, self.ev))
        while self.in_flight and \
                self.in_flight[0].t + self.delivery_lag_ticks * TICK <= self.t + EPS:
            st_ = self.in_flight.pop(0)
            self.last_status_t, self.last_status_a = st_.t, st_.output_current_a
            self.last_status_gun_v, self.last_status_out_v = st_.gun_voltage_v, \
                st_.output_voltage_v
            self.last_status_cap = st_.capability_current_a or math.inf
            self.feed(st_)
        self.feed(Tick(self.t))
        self.check_setpoint(self.plant.set_a if self.plant.enabled else 0.0, self.plant.set_v)
        self.check_watchdogs()

    # ---- invariants on each command ----------------------------------------------

    def check_setpoint(self, amps: float, voltage_v: float) -> None:
        """I1/I2/I3/I10 on a module setpoint: each new one, and the standing one after every
        tick (a setpoint the core never changes must still respect a limit that moved)."""
        state = self.s.state
        assert math.isfinite(amps) and math.isfinite(voltage_v)
        # I1 / I2 / I3: every limit, whatever the state
        assert abs(amps) <= RATINGS.max_current_a + EPS, "I1 rating"
        power_w = min(RATINGS.max_power_w, self.ratings.grid_limit_w)
        assert abs(amps) * voltage_v <= power_w * (1 + EPS), "I2 power (rated, grid)"
        assert abs(amps) <= self.last_status_cap + EPS, "I1 module capability"
        if state is State.CHARGING and amps > 0:
            # GB/T 27930-2015 BSM: charge not permitted (and no abnormal flag) = pause
            assert self.bsm_permit, "I1 state: current while the BMS pauses"
            assert self.bcl_demand is not None and amps <= max(self.bcl_demand, 0) + EPS, \
                "I1 EV demand"
            assert self.bcp_max is not None and amps <= self.bcp_max + EPS, "I1 EV max"
            if self.upstream is not None and self.t < self.upstream[1]:
                assert amps <= self.upstream[0] + EPS, "I1/I13 upstream limit"
            vmax = min(RATINGS.max_voltage_v, self.ev.p.bcp_max_v,
                       self.bhm_max if self.bhm_max is not None else math.inf)
            assert voltage_v <= vmax + EPS, "I3 voltage"
        elif state is State.INSULATION_CHECK:
            assert amps <= CABLE_CHECK_A + EPS, "I1 state (cable check)"
        elif state is State.PRECHARGE:
            assert amps <= PRECHARGE_A + EPS, "I1 state (precharge)"
        elif state is not State.CHARGING:
            assert amps == 0.0, f"I1 state: {amps} A in {state.value}"
        # I10: never above the connector derating at the latest reading
        cap = connector_fraction(self.last_temp) * RATINGS.max_current_a
        if self.sensor_open_seen:
            cap = 0.0
        assert abs(amps) <= cap + EPS or (state in (State.INSULATION_CHECK, State.PRECHARGE) \
            and cap > PRECHARGE_A), f"I10 thermal: {amps} A at {self.last_temp} °C"

    def check_command(self, c: Command) -> None:
        state = self.s.state
        if isinstance(c, SetContactors) and c.closed:
            assert not self.gun_unlocked, "I4 K1/K2 closed onto an unlocked gun"
        if isinstance(c, SetModuleOutput):
            amps = c.current_a if c.enabled else 0.0
            self.check_setpoint(amps, c.voltage_v)
            self.max_amps = max(self.max_amps, abs(amps))
            self.max_power_w = max(self.max_power_w, abs(amps) * c.voltage_v)
            # I6: up-ramp; I14: never rises once stopping started this session
            if amps > self.prev_cmd_a + EPS:
                dt = self.t - self.prev_cmd_t
                assert amps - self.prev_cmd_a <= RATINGS.ramp_up_a_per_s * dt + 1e-3, "I6 ramp"
                assert not self.stopping_since_plug or state is State.HANDSHAKE, "I14"
            self.prev_cmd_a, self.prev_cmd_t = amps, self.t
        elif isinstance(c, SetContactors) and c.closed and state is State.PRECHARGE:
            # I4: onto the battery only after insulation OK, voltage checked, output below
            assert self.insulation_passed, "I4 insulation not checked this session"
            assert not ({"welding", "module_contactor_mismatch"} & set(self.s.safety.latched))
            assert self.bcp_reported_v is not None
            assert abs(self.last_status_gun_v - self.bcp_reported_v) <= \
                0.05 * self.bcp_reported_v + EPS, "I4 battery voltage not within 5 %"
            gap = self.last_status_gun_v - self.last_status_out_v
            assert 1.0 - EPS <= gap <= 10.0 + EPS, f"I4 output {gap:.2f} V below the battery"
        elif isinstance(c, SetContactors) and not c.closed:
            # I5: open at <= 5 A unless an emergency path (or the stop budget ran out)
            d = self.s.data
            low = abs(self.last_status_a) <= OPEN_AT_A + EPS
            budget = d.fault_at is not None and self.t - d.fault_at > \
                STOP_BUDGET_S
            assert low or d.fault_emergency or budget or self.s.act.internal_error, \
                f"I5 opened at {self.last_status_a:.1f} A in {state.value}"

    def check_watchdogs(self) -> None:
        s = self.s
        # I7: BCL silent 1 s -> no longer charging
        if s.state is State.CHARGING:
            since = max(self.last_bcl_t or 0.0, s.data.state_entered_at)
            assert self.t - since <= BCL_TIMEOUT_S + TICK + EPS, "I7 BCL watchdog"
        # I7: module silent -> de-energised, well before the module's own timeout
        if s.state in ENERGISED:
            since = max(self.last_status_t or 0.0, s.data.started_at)
            assert self.t - since <= MODULE_TIMEOUT_S + TICK + EPS, \
                "I7 module watchdog"
        # I10: a trip temperature ends energy transfer and latches
        if self.last_temp >= CONNECTOR_TRIP_C:
            assert s.state in (State.IDLE, State.FAULT), "I10 thermal trip ignored"
        # I7: BCS silent 5 s -> stop; awaited handshake messages time out
        if s.state is State.CHARGING:
            since = max(self.last_bcs_t or 0.0, s.data.state_entered_at)
            assert self.t - since <= BCS_TIMEOUT_S + TICK + EPS, "I7 BCS watchdog"
        awaited = {State.HANDSHAKE: "BHM", State.IDENTIFICATION: "BRM"}.get(s.state)
        if awaited is not None:
            assert self.t - s.data.state_entered_at <= HANDSHAKE_TIMEOUT_S + TICK + EPS, \
                f"I7 {awaited} watchdog"
        # I4: a lock that opens while K1/K2 are closed ends the session at once
        if self.gun_unlocked and self.plant.k12_cmd:
            assert s.state is State.FAULT, f"I4 unlocked gun energised in {s.state.value}"
        # I15: outside a session nothing is energised
        if s.state in (State.IDLE, State.FINISHED):
            assert not self.plant.k12_cmd, f"K1/K2 commanded closed in {s.state.value}"
        # I12: an E-stop while plugged puts the session in FAULT
        if self.estop:
            assert s.state in (State.IDLE, State.FAULT), "I12 E-stop ignored"

    def teardown(self) -> None:
        # Coverage of the suite itself: --hypothesis-show-statistics lists these, and
        # COVERAGE counts them (the corners where the rating and the power limit bind).
        event("reached charging" if self.reached_charging else "never charged")
        for name, reached in (("charging", self.reached_charging),
                              ("at_rated_current", self.max_amps >= RATINGS.max_current_a - 1),
                              ("at_rated_power", self.max_power_w >= RATINGS.max_power_w * 0.99)):
            COVERAGE[name] = COVERAGE.get(name, 0) + reached
        long = self.steps >= MIN_STEPS
        LONG_EXAMPLES["count"] += long
        event(f"steps >= {MIN_STEPS}" if long else f"steps < {MIN_STEPS} (cut short)")

    @invariant()
    def count_step(self) -> None:
        self.steps += 1

    @invariant()
    def state_is_known(self) -> None:
        assert isinstance(self.s.state, State), "I15 unknown state"

    # ---- rules -------------------------------------------------------------------

    # A full-power car (400 A asked and allowed, 750 V and more) is drawn often: the gun
    # rating and the power limit only bind above what most random cars ask for.
    @initialize(bhm=st.one_of(st.just(800.0), st.floats(300, 800)),
                bcp_max_a=st.one_of(st.just(400.0), st.floats(10, 400)),
                bcp_max_v=st.one_of(st.just(800.0), st.floats(250, 800)),
                battery_v=st.floats(210, 700),
                demand=st.one_of(st.just(400.0), st.floats(-50, 600)),
                lie=st.sampled_from([1.0] * 7 + [1.08]),
                grid_kw=st.one_of(st.just(math.inf), st.floats(20, 200)))
    def plug_in(self, bhm: float, bcp_max_a: float, bcp_max_v: float, battery_v: float,
                demand: float, lie: float, grid_kw: float) -> None:
        # The site's grid connection, below the rated power or not (I2).
        self.ratings = replace(RATINGS, grid_limit_w=grid_kw * 1000.0)
        self.s = GunSession(self.ratings, thermal=ThermalSupervisor())
        battery_v = min(battery_v, bcp_max_v - 5)
        self.ev_lies = lie != 1.0
        self.ev = Ev(EvParams(bhm_max_v=round(bhm, 1), bcp_max_a=round(bcp_max_a, 1),
                              bcp_max_v=round(bcp_max_v, 1), battery_v=round(battery_v, 1),
                              reported_v=round(battery_v * lie, 1), demand_a=round(demand, 1),
                              demand_v=round(bcp_max_v, 1)))
        self.plugged = True
        self.feed(VehicleConnected(self.t, wall_clock_s=1.7e9))

    # Time is drawn far more often than disturbances, so most examples reach energy
    # transfer (about 3 s of simulated time) before things go wrong.
    @rule(ticks=st.integers(1, 150))
    def advance(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    @rule(ticks=st.integers(1, 150))
    def advance_more(self, ticks: int) -> None:
        self.advance(ticks)

    # Long enough to ramp to the rating (250 A at 100 A/s) between two disturbances.
    @rule(ticks=st.integers(150, 600))
    def advance_long(self, ticks: int) -> None:
        self.advance(ticks)

    @rule(demand=st.floats(-100, 600))
    def ev_changes_demand(self, demand: float) -> None:
        self.ev.p.demand_a = round(demand, 1)

    @rule(kind=st.sampled_from([
        "ev_silent", "ev_stops_bcl", "bsm_pause", "bsm_resume", "bsm_over_temperature",
        "bst", "unplug", "plug_again", "module_silent", "module_back", "module_fault",
        "welded", "insulation_low", "insulation_warn", "estop", "estop_released", "door",
        "service", "operator_stop", "module_frozen", "ev_stops_bcs", "cool",
        "sensor_open", "sensor_fixed", "gun_unlocked"]),
        bit=st.sampled_from([0, 1, 4, 5]))
    def disturb(self, kind: str, bit: int) -> None:
        ev, plant = self.ev, self.plant
        match kind:
            case "ev_silent":
                ev.talking = False
            case "ev_stops_bcl":
                ev.send_bcl = False
            case "bsm_pause" | "bsm_resume":
                ev.bsm_permit = kind == "bsm_resume"
            case "bsm_over_temperature":
                ev.bsm_over_temperature = True
            case "bst":
                self.feed(VehicleMessage(self.t, BST(frozenset({BmsStopReason.SOC_REACHED}))))
            case "unplug":
                ev.contactors_closed, self.plugged = False, False
                self.feed(VehicleDisconnected(self.t))
            case "plug_again" if not self.plugged:
                self.ev = Ev(ev.p)
                self.plugged = True
                self.feed(VehicleConnected(self.t, wall_clock_s=1.7e9))
            case "module_silent" | "module_back":
                self.module_silent = kind == "module_silent"
            case "module_fault":
                plant.fault_word = 1 << bit
            case "welded":
                plant.welded = True
            case "insulation_low" | "insulation_warn":
                plant.insulation_ohm = (50.0 if kind == "insulation_low" else 300.0) * 500.0
            case "estop" | "estop_released" | "door" | "gun_unlocked":
                self.estop = kind == "estop"
                self.gun_unlocked = kind == "gun_unlocked"
                self.feed(SafetyInputs(self.t, emergency_stop=self.estop, door_open=kind == "door",
                                       gun_locked=not self.gun_unlocked))
            case "service":
                plant.welded, plant.fault_word = False, 0
                self.connector_c, self.sensor_open = 40.0, False
                self.feed(FaultsCleared(self.t, "service"))
            case "operator_stop":
                self.feed(StopRequested(self.t))
            case "module_frozen":
                self.module_frozen = True
            case "ev_stops_bcs":
                ev.send_bcs = False
            case "cool":
                self.connector_c = 40.0
            case "sensor_open" | "sensor_fixed":
                self.sensor_open = kind == "sensor_open"

    # Its own rule, so temperatures land in the 80-90 °C derating band, not only at the ends.
    @rule(temp=st.floats(60, 110))
    def connector_heats(self, temp: float) -> None:
        self.connector_c = temp

    # Up to 90 ms: a status polled before a command or a vehicle message can reach the
    # core after it (the CI failure of the real-time run).
    @rule(ticks=st.integers(0, 9))
    def module_lags(self, ticks: int) -> None:
        self.delivery_lag_ticks = ticks

    @rule(capability=st.floats(0, 400))
    def module_derates(self, capability: float) -> None:
        self.plant.capability_a = capability

    @rule(amps=st.one_of(st.floats(-300, 300), st.just(math.nan), st.just(math.inf)),
          ttl=st.floats(-5, 30), age=st.floats(0, 10))
    def upstream_setpoint(self, amps: float, ttl: float, age: float) -> None:
        issued, expires = self.t - age, self.t + ttl
        policy = self.s.safety.policy
        valid = (math.isfinite(amps) and abs(amps) <= RATINGS.max_current_a
                 and age <= policy.max_delivery_age_s and expires > self.t
                 and ttl <= policy.max_validity_s
                 and self.t - self.upstream_accepted_t >= policy.min_interval_s)
        if valid:
            self.upstream, self.upstream_accepted_t = (max(amps, 0.0), expires), self.t
        self.feed(UpstreamLimit(issued, "ems", amps, expires_at=expires))


SETTINGS = settings(
    max_examples=EXAMPLES * 13 // 10, stateful_step_count=110, deadline=None,
    # The mutation check runs each mutant on fresh examples, not on another's failures.
    database=None if os.environ.get("SAFETY_NO_DB") else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_safety_invariants_hold_on_random_sessions() -> None:
    before = LONG_EXAMPLES["count"]
    run_state_machine_as_test(SafetyMachine, settings=SETTINGS)
    long_examples = LONG_EXAMPLES["count"] - before
    assert long_examples >= EXAMPLES, \
        f"only {long_examples} examples ran >= {MIN_STEPS} steps; {EXAMPLES} are required"
