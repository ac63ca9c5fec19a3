"""Stateful safety suite: hypothesis drives the sans-I/O core with a random EV, a lagging
module, faults, inputs and setpoints on a simulated clock, and checks every invariant
of docs/SAFETY.md after every 10 ms tick (the world and its checks: tests/safety_world.py).

Run long: SAFETY_EXAMPLES=2000 python -m pytest tests/test_safety_stateful.py
Mutation check (each removed limit / disabled watchdog must make this fail):
    python -m tests.mutation_check
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agent.core.health_policy import HealthPolicy
from agent.core.states import State
from tests.safety_model import BSM_ALARMS
from tests.safety_world import (
    DATABASE,
    FAULT_KINDS,
    FLAWS,
    MUTE,
    PHASES,
    RATINGS,
    TICK,
    SafetyWorld,
    V2gSetup,
)

# Examples that must run >= MIN_STEPS steps. Hypothesis ends some early on purpose (it
# explores the rare "stop here" branch of its step loop: 18-23 % of examples since the
# V2G draws, 35 % in one mutant's run), so each chunk is given 60 % more (the count varies
# more in a chunk than in the whole) and the test checks that enough of them were long.
EXAMPLES = int(os.environ.get("SAFETY_EXAMPLES", "500"))
MIN_STEPS = 100
LONG_EXAMPLES = {"count": 0}
COVERAGE: dict[str, int] = {}
# States in which the core waits on the car or the plant: `wait_out` fast-forwards there,
# so the long deadlines (BRO(0xAA) 60 s, precharge 60 s, insulation 25 s) are reached.
# Each with how long it lasts in a session where nothing is wrong (seconds).
WAITING = {State.HANDSHAKE: 0.5, State.INSULATION_CHECK: 2.0, State.IDENTIFICATION: 0.5,
           State.PARAMETER_EXCHANGE: 2.0, State.PRECHARGE: 2.0, State.STOPPING: 2.0,
           State.FAULT: 2.0}
DISTURBANCES = (
    "ev_silent", "ev_stops_bcl", "bsm_pause", "bsm_resume", "bsm_over_temperature",
    "bst", "unplug", "plug_again", "module_silent", "module_back", "module_fault",
    "welded", "welded_k1", "welded_k2", "insulation_low", "insulation_warn", "estop",
    "estop_released", "door", "service", "operator_stop", "module_frozen", "ev_stops_bcs",
    "cool", "sensor_open", "sensor_fixed", "gun_unlocked", "gun_unlocked_in_precharge",
    "io_silent", "io_lost", "io_back", "contactor_stuck_open", "current_stuck", "imd_dead",
    "voltage_offset", "voltage_offset_up", "output_weak", "consent_withdrawn",
    "consent_given", "ev_stops_bds", "ev_resumes_bds", "ems_silent")
# Every documented module fault bit: over-temperature, over-voltage, over-current, internal,
# watchdog, contactor mismatch, input fault, and the grid trips that must end a discharge at
# once (D6: over/under voltage, frequency, islanding). tests/test_module_status_words.py
# holds each bit's reaction to what the map documents.
FAULT_BITS = list(range(11))


def _maybe(draw: st.DrawFn, strategy: st.SearchStrategy[float], unset: float) -> float:
    """A limit set in one policy in three (unset: the party does not limit it)."""
    return draw(strategy) if draw(st.integers(0, 2)) == 2 else unset


def _loose(draw: st.DrawFn, loose: float, tight: float) -> float:
    """A limit between its loosest and tightest value, drawn as the distance from the
    loosest: hypothesis leans to its simplest draw (0), which is then the case where the
    limit lets a session discharge, and the other limits get their turn to bind."""
    return loose + (tight - loose) * draw(st.floats(0, 1))


@st.composite
def v2g_setups(draw: st.DrawFn) -> V2gSetup:
    """One gun in four is charge-only, one car in four a 2015 car; the rest draw every
    discharge limit on both sides of where it binds, the BDP answer on both sides of its
    5 s window, a health policy from either party, and today's history. The policy's
    limits are drawn around the car's state, so that they bind within an example (a few
    kWh, a few minutes) rather than block it from the start."""
    # (Hypothesis leans to small integers: the common case is the one drawn at 0.)
    gun_a = _loose(draw, RATINGS.max_current_a, 20) if draw(st.integers(0, 3)) < 3 else 0.0
    soc_floor = draw(st.floats(5, 60))
    # Each drawn as a distance from where it binds: hypothesis's simplest draw (0) is then
    # the case that lets a session discharge, and shrinking moves towards it.
    soc = soc_floor + 10 - draw(st.floats(0, 12))
    temp = draw(st.floats(10, 50))
    history = draw(st.tuples(st.floats(0, 2), st.floats(0, 4)))
    period = draw(st.floats(1, 10))
    car = draw(st.integers(0, 3)) < 3
    discharge = st.floats(0, 245).map(lambda x: x - 250)
    charge = st.floats(0, 250).map(lambda x: 250 - x)
    policy_floor = _maybe(draw, st.floats(max(soc - 8, 0), min(soc + 2, 90)), 0.0)
    return V2gSetup(
        gun_a=gun_a,
        gun_w=_loose(draw, RATINGS.max_power_w, 10_000) if gun_a else 0.0,
        min_input_v=_loose(draw, RATINGS.min_voltage_v, 450),
        export_w=_maybe(draw, st.floats(0, 140_000).map(lambda x: 150_000 - x), math.inf),
        car=car,
        # The car answers on its BRO cadence (250 ms): 4.5 s is in time, 5.3 s is late.
        bdp_delay_s=draw(st.sampled_from([0.0] * 6 + [0.5, 4.5, 5.3, 7.0])),
        consent=draw(st.integers(0, 9)) < 9,
        max_a=_loose(draw, 250, 10),
        max_w=_loose(draw, 150_000, 5_000),
        min_v_fraction=_loose(draw, 0.7, 1.02),
        soc_floor=soc_floor,
        soc_above_floor=soc - soc_floor,
        # The V2X energy window: one that lasts, and ones used up within an example.
        window_kwh=draw(st.sampled_from([5.0, 2.0, 0.5, 0.2, 0.1])),
        capacity_ah=_loose(draw, 200, 20),
        temp_c=temp,
        policy=HealthPolicy(
            soc_floor_pct=policy_floor,
            soc_ceiling_pct=_maybe(draw, st.floats(0, 100 - max(soc - 3, policy_floor + 1))
                                   .map(lambda x: 100 - x), 100.0),
            max_discharge_c_rate=_maybe(draw, st.floats(0.2, 3), math.inf),
            max_discharge_kwh_per_day=_maybe(draw, st.floats(0, 1.6).map(
                lambda x: max(history[0] + 1.5 - x, 0.0)), math.inf),
            max_cycles_per_day=_maybe(draw, st.floats(0, 0.021).map(
                lambda x: max(history[1] / 120 + 0.02 - x, 0.0)), math.inf),
            min_temperature_c=_maybe(draw, st.floats(temp - 15, temp - 1), -math.inf),
            max_temperature_c=_maybe(draw, st.floats(0, 15.5).map(lambda x: temp + 15 - x),
                                     math.inf)),
        policy_source=draw(st.sampled_from(("operator", "owner_vin", "owner_session"))),
        history=history,
        # Three sites in four have an EMS refreshing a setpoint (on a V2G gun with a V2G car
        # it asks for discharge two times in three); its period and validity on both sides
        # of each other.
        ems_a=draw(st.one_of(discharge, discharge, charge) if gun_a and car else charge)
        if draw(st.integers(0, 3)) < 3 else None,
        ems_period_s=period,
        ems_ttl_s=period * _loose(draw, 3.0, 0.8),
    )


class SafetyMachine(RuleBasedStateMachine, SafetyWorld):
    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)
        SafetyWorld.__init__(self)

    def teardown(self) -> None:
        # Coverage of the suite itself: --hypothesis-show-statistics lists these, and
        # COVERAGE counts them (the corners where the rating and the power limit bind).
        event("reached charging" if self.reached_charging else "never charged")
        for name, reached in (("charging", self.reached_charging),
                              ("discharged", self.discharged),
                              ("direction_changed", self.direction_changes > 0),
                              ("at_rated_current", self.max_amps >= RATINGS.max_current_a - 1),
                              ("at_rated_power", self.max_power_w >= RATINGS.max_power_w * 0.99),
                              *((f"fault: {k}", k in self.fault_kinds) for k in FAULT_KINDS)):
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
                # The BCL voltage demand, as a fraction of BCP's max: cars in CV ask less.
                demand_v=st.one_of(st.just(1.0), st.floats(0.8, 1.0)),
                # Both sides of the +-5 % window: 4 % off is honest, 6 % is a liar.
                lie=st.sampled_from([1.0] * 14 + [0.94, 0.96, 1.04, 1.06]),
                grid_kw=st.one_of(st.just(math.inf), st.floats(20, 200)),
                # One EV in four never sends one of the messages the charger awaits.
                mute=st.sampled_from(("",) * 21 + MUTE),
                require_io=st.booleans(),
                # One plant in five is broken from the start in a way only a deadline finds.
                flaw=st.sampled_from(("",) * (4 * len(FLAWS)) + FLAWS),
                v2g=v2g_setups())
    def plug_in(self, bhm: float, bcp_max_a: float, bcp_max_v: float, battery_v: float,
                demand: float, demand_v: float, lie: float, grid_kw: float, mute: str,
                require_io: bool, flaw: str, v2g: V2gSetup) -> None:
        self.plug(bhm, bcp_max_a, bcp_max_v, battery_v, demand, lie, grid_kw, mute, require_io,
                  flaw, demand_v=demand_v, v2g=v2g)

    # Time is drawn far more often than disturbances, so most examples reach energy
    # transfer (about 3 s of simulated time) before things go wrong.
    @rule(ticks=st.integers(1, 150))
    def advance_some(self, ticks: int) -> None:
        self.advance(ticks)

    @rule(ticks=st.integers(1, 150))
    def advance_more(self, ticks: int) -> None:
        self.advance(ticks)

    # Long enough to ramp to the rating (250 A at 100 A/s) between two disturbances.
    @rule(ticks=st.integers(150, 600))
    def advance_long(self, ticks: int) -> None:
        self.advance(ticks)

    # When the core has waited on the car or the plant for longer than a normal session
    # would, time runs on until it moves (or 70 s pass): a stalled step meets its deadline
    # (BRO(0xAA) and precharge 60 s) in one rule. A FAULT waits only with K1/K2 closed.
    @precondition(lambda self: self.s.state in WAITING
                  and self.t - self.state_since > WAITING[self.s.state]
                  and (self.s.state is not State.FAULT or self.plant.k12_cmd))
    @rule()
    def wait_out(self) -> None:
        waiting = (self.s.state, self.plant.k12_cmd)
        for _ in range(7000):
            self.tick()
            if (self.s.state, self.plant.k12_cmd) != waiting:
                return

    # The car changes its demand, current and voltage (CC <-> CV), as real ones do.
    @rule(demand=st.floats(-100, 600), voltage=st.floats(0.8, 1.0))
    def ev_changes_demand(self, demand: float, voltage: float) -> None:
        self.ev.p.demand_a = round(demand, 1)
        self.ev.p.demand_v = self.cv_demand(self.ev.p.bcp_max_v, self.ev.p.battery_v, voltage)

    # A module whose output voltage follows its setpoint slowly (the rising output must not
    # pass for a settled one: insulation test voltage, precharge window).
    @rule(tau=st.floats(0.02, 1.0))
    def module_voltage_lags(self, tau: float) -> None:
        self.plant.voltage_tau_s = tau

    # One disturbance among many, so each is rare enough for sessions to reach and stay in
    # energy transfer; two of them carry their own draws: every BSM alarm in every
    # non-normal encoding (01 set, 10 untrusted, 11 undefined), and the pack's insulation
    # on both sides of 100 ohm/V (for the IMD while charging).
    @rule(kind=st.sampled_from((*DISTURBANCES, "bsm_alarm", "insulation_drifts")),
          bit=st.sampled_from(FAULT_BITS), data=st.data())
    def disturbance(self, kind: str, bit: int, data: st.DataObject) -> None:
        if kind == "bsm_alarm":
            self.bsm_alarm(data.draw(st.sampled_from(sorted(BSM_ALARMS)), label="alarm"),
                           data.draw(st.sampled_from([0b01, 0b10, 0b11]), label="bits"))
        elif kind == "insulation_drifts":
            self.insulation_drifts(data.draw(st.one_of(
                st.sampled_from([95.0, 99.0, 101.0, 105.0]), st.floats(50, 600)),
                label="ohm_per_v"))
        else:
            self.disturb(kind, bit)

    # Its own rule, so temperatures land in the 80-90 °C derating band, not only at the ends.
    @rule(temp=st.floats(60, 110))
    def connector_heats(self, temp: float) -> None:
        self.connector_c = temp

    # Up to 90 ms: a status polled before a command or a vehicle message can reach the
    # core after it (the CI failure of the real-time run).
    @rule(ticks=st.integers(0, 9))
    def module_lags(self, ticks: int) -> None:
        self.delivery_lag_ticks = ticks

    # 0 A is a capability of its own (a stack derated to nothing), drawn on purpose.
    @rule(capability=st.one_of(st.just(0.0), st.floats(0, 400)))
    def module_derates(self, capability: float) -> None:
        self.plant.capability_a = capability

    # A module whose voltage sensors read high: both sides of the vehicle's maximum + 15 V
    # (I17) are reached from the 360-420 V packs the suite draws.
    @rule(volts=st.one_of(st.just(0.0), st.floats(0, 150)))
    def module_reads_high(self, volts: float) -> None:
        self.plant.reads_high_v = volts

    # A current loop that runs past its setpoint: both sides of 10 % / 3 A (I18).
    @rule(amps=st.one_of(st.just(0.0), st.floats(0, 60)))
    def module_overshoots(self, amps: float) -> None:
        self.plant.overshoot_a = amps

    @rule(amps=st.one_of(st.floats(-300, 300), st.just(math.nan), st.just(math.inf)),
          ttl=st.floats(-5, 30), age=st.floats(0, 10))
    def upstream(self, amps: float, ttl: float, age: float) -> None:
        self.upstream_setpoint(amps, ttl, age)

    # A valid limit low enough to bind and short enough to expire within the example (I7).
    @rule(amps=st.floats(0, 60), ttl=st.floats(0.5, 10))
    def upstream_caps(self, amps: float, ttl: float) -> None:
        self.upstream_setpoint(amps, ttl, 0.0)

    # A valid discharge setpoint (the only authorisation to discharge, D1), often enough
    # for V2G sessions to discharge, flip direction and meet their limits; some expire (D4).
    @rule(amps=st.one_of(st.just(-250.0), st.floats(-250, -0.1)), ttl=st.floats(0.5, 60))
    def upstream_discharges(self, amps: float, ttl: float) -> None:
        self.upstream_setpoint(amps, ttl, 0.0)

    # The pack: warmer or colder (the health policy's temperature window), its SOC moved
    # (both sides of the floor and the ceiling), its voltage near the EV's minimum (D2).
    @rule(temp=st.floats(0, 60), soc=st.floats(-5, 5), volts=st.floats(0.97, 1.2))
    def battery_changes(self, temp: float, soc: float, volts: float) -> None:
        p = self.ev.p
        p.temperature_c = temp
        self.ev.soc = min(max(self.ev.soc + soc, 0.0), 100.0)
        if self.s.state is State.CHARGING:  # not across the precharge's voltage check
            lie = p.reported_v / p.battery_v
            p.battery_v = round(min(max(p.discharge_min_v * volts, 150.0), p.bcp_max_v - 5), 1)
            p.reported_v = round(p.battery_v * lie, 1)

    # The central system's maximum profile: charge and discharge limits that bind whatever
    # the EMS asks, on both sides of the EMS's setpoint, some expiring (I13, D3).
    @rule(data=st.data(), ttl=st.floats(0.5, 30))
    def central_system_caps(self, data: st.DataObject, ttl: float) -> None:
        self.central_caps(data.draw(st.builds(lambda f: 300.0 * (1 - f), st.floats(0, 1))),
                          data.draw(st.builds(lambda f: 300.0 * (1 - f), st.floats(0, 1))),
                          ttl)

    # The EMS asks for another setpoint: a flip of sign is a direction change (D5).
    @rule(amps=st.floats(-250, 250))
    def ems_changes(self, amps: float) -> None:
        self.ems_a = amps

    # A direction change on purpose (D5): while energy flows in a V2G session, the EMS asks
    # for the other direction and time runs on for the change (0.5 s at zero, a sample
    # <= 5 A, then the new phase) to happen; random draws alone never reached one.
    @precondition(lambda self: self.v2g_negotiated() and self.last_sign != 0.0
                  and self.s.state is State.CHARGING and self.ems_a is not None)
    @rule(amps=st.floats(20, 150))
    def ems_flips(self, amps: float) -> None:
        self.ems_a = -self.last_sign * amps
        self.advance(round(3.0 / TICK))

    # The car narrows its discharge limits live in BDS: a lower current, a higher floor.
    @rule(amps=st.floats(0, 250), floor=st.floats(0, 20))
    def ev_narrows_discharge(self, amps: float, floor: float) -> None:
        self.ev.bds_max_a = round(250 - amps, 1)
        self.ev.bds_floor_pct = round(max(self.ev.soc - 10 + floor, 0.0), 1)

    @rule(amps=st.floats(0, 330), watts=st.floats(0, 200_000))
    def module_reverse_derates(self, amps: float, watts: float) -> None:
        self.plant.reverse_a, self.plant.reverse_w = 330 - amps, 200_000 - watts


# The examples run in chunks, each its own test with its own hypothesis run: one chunk
# lasts 26-32 s on an idle 2-core machine, so pytest-timeout's 300 s holds on one several
# times slower (a time-out is a slow machine, not a safety finding), and a failing example
# names its chunk.
# With CI set, hypothesis's "ci" profile derandomizes: every chunk would draw the very same
# examples, so such a run is one chunk with a chunk's examples (the same examples once
# instead of five times; four minutes of CI's budget bought nothing).
DERANDOMIZED = bool(settings.default.derandomize)
CHUNKS = 1 if DERANDOMIZED else 5
RUN_EXAMPLES = -(-EXAMPLES // 5) if DERANDOMIZED else EXAMPLES
SETTINGS = settings(
    max_examples=-(-RUN_EXAMPLES * 160 // 100 // CHUNKS), stateful_step_count=110,
    deadline=None,
    database=DATABASE, phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# What the suite must have reached for its invariants to have had something to check:
# energy transfer in a fifth of the required examples (observed: over half; per chunk when
# derandomized, over the run on random draws, where one chunk can clump); over the chunks, a
# discharge and the rated current (observed 6-20 and 6-13 a chunk). Kinds of
# fault are counted (COVERAGE, "fault: ...") but not floors: with CI set, hypothesis's "ci"
# profile derandomizes, the five chunks then draw the same examples, and which faults that
# draw reaches differs between machines (0 over-voltage, E-stop or door faults on CI's, 0
# over-current or insulation faults on another) while random runs reach each several times.
# A direction change, never reached by random draws alone (0 in 264 examples), is now
# asked for on purpose (the ems_flips rule): 20 in 500 random examples, a floor there; the
# one derandomized chunk CI runs reaches 0 or 7 depending on the draw its seed gives (the
# seed moves with the rules' code), so it is not a floor in CI, where
# tests/test_v2g_watchdogs.py and tests/test_v2g_session.py meet a change on purpose.
_chunks_run: set[int] = set()
_charged_per_chunk: dict[int, int] = {}
RUN_FLOORS = {"discharged": 1, "at_rated_current": 1,
              **({} if DERANDOMIZED else {"direction_changed": 1})}


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_safety_invariants_hold_on_random_sessions(chunk: int) -> None:
    before = LONG_EXAMPLES["count"]
    charging_before = COVERAGE.get("charging", 0)
    run_state_machine_as_test(SafetyMachine, settings=SETTINGS)
    long_examples = LONG_EXAMPLES["count"] - before
    required = -(-RUN_EXAMPLES // CHUNKS)
    assert long_examples >= required, \
        f"chunk {chunk}: only {long_examples} examples ran >= {MIN_STEPS} steps; " \
        f"{required} are required"
    charged = COVERAGE.get("charging", 0) - charging_before
    _charged_per_chunk[chunk] = charged
    _chunks_run.add(chunk)
    if _chunks_run == set(range(CHUNKS)):
        # The run's floor (derandomized, the run is one chunk): on random draws one chunk's
        # hypothesis run can clump on examples that never charge (15, 15 and 18 of 100 seen,
        # against over half usually).
        total = sum(_charged_per_chunk.values())
        assert total >= RUN_EXAMPLES // 5, \
            f"only {total} examples reached charging ({_charged_per_chunk} by chunk); " \
            f"{RUN_EXAMPLES // 5} are required"
        short = {k: COVERAGE.get(k, 0) for k, floor in RUN_FLOORS.items()
                 if COVERAGE.get(k, 0) < floor}
        assert not short, f"the suite never reached enough of {short} (floors {RUN_FLOORS}; " \
            f"all it counted: {dict(sorted(COVERAGE.items()))})"
