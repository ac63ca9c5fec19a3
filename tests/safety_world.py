"""The world the stateful safety suite drives the core in, with the invariants it checks.

`SafetyWorld` holds the sans-I/O core, the EV and plant of `tests/safety_model.py`, the
I/O board and upstream on one simulated clock. It checks the invariants of docs/SAFETY.md
on every command and after every 10 ms tick. The spec values are written out here rather
than read from `agent.core.timing`, so that a mutated constant in the core cannot loosen
the check that should catch it. `tests/test_safety_stateful.py` drives it with hypothesis
rules; `tests/test_safety_watchdogs.py` breaks one thing at a time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from hypothesis import Phase, settings

from agent.core.commands import (
    Command,
    CurrentDecided,
    SetBleeder,
    SetContactors,
    SetModuleOutput,
    StartInsulationTest,
    StateChanged,
)
from agent.core.events import (
    EnergyHistory,
    Event,
    FaultsCleared,
    InsulationStatus,
    ModuleLinkLost,
    ModuleStatus,
    OwnerPolicy,
    SafetyInputs,
    SafetyIoLost,
    StopRequested,
    TemperatureReading,
    Tick,
    UpstreamLimit,
    UpstreamSetpoint,
    VehicleConnected,
    VehicleDisconnected,
    VehicleMessage,
)
from agent.core.health_policy import HealthPolicy
from agent.core.messages import BDP, BDS, BST, CCS, CDP, CML, CRO, BmsStopReason
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from agent.core.thermal_guard import ThermalSupervisor
from drivers.gbt27930.codec import encode
from drivers.gbt27930.link import decode_received, events_from
from tests.independent_gbt_decoder import charge_amps, cml_raw, fields_of
from tests.safety_model import BSM_ALARMS, VIN, Ev, EvParams, PlantModel

# The mutation check runs each mutant on fresh examples (no database), and for its summary
# table stops at the first failing example instead of shrinking it (minutes per mutant).
DATABASE = None if os.environ.get("SAFETY_NO_DB") else settings.default.database
PHASES = (Phase.explicit, Phase.reuse, Phase.generate) if os.environ.get("SAFETY_NO_SHRINK") \
    else tuple(Phase)
TICK = 0.01
EPS = 1e-6
RATINGS = GunRatings(max_voltage_v=750.0, min_voltage_v=200.0, max_current_a=250.0,
                     max_power_w=150_000.0, ramp_up_a_per_s=100.0)
ENERGISED = (State.INSULATION_CHECK, State.PRECHARGE, State.CHARGING, State.STOPPING)
LIVE = (State.HANDSHAKE, State.INSULATION_CHECK, State.IDENTIFICATION,
        State.PARAMETER_EXCHANGE, State.PRECHARGE, State.CHARGING, State.STOPPING,
        State.WELDING_CHECK)
MUTE = ("BHM", "BRM", "BCP", "BRO", "BRO_AA", "BCL", "BCS")
# Plant failures that only a deadline or a single moment finds: the long budgets (stop
# 10 s, insulation 25 s, precharge 60 s), the insulation verdict, a hung module bus owner.
FLAWS = ("current_stuck", "imd_dead", "voltage_offset", "voltage_offset_up", "output_weak",
         "insulation_low", "module_frozen")
POLL = 0.1
MAX_QUIET_S = 1.0  # E1: the longest a session may ask to sleep (docs/SAFETY.md)
# E1: the core puts a deadline a hair past the instant its comparison turns (float sums)
DEADLINE_TOLERANCE_S = 1e-4
BCL_TIMEOUT_S = 1.0  # GB/T 27930-2015 §8: BCL silent 1 s -> stop
BCS_TIMEOUT_S = 5.0  # GB/T 27930-2015 §8: BCS 5 s
HANDSHAKE_TIMEOUT_S = 5.0  # GB/T 27930-2015 §8: default 5 s (BHM, BRM, BCP, BRO)
BRO_READY_TIMEOUT_S = 60.0  # GB/T 27930-2015 Fig. A.6: BRO(0xAA) within 60 s
INSULATION_BUDGET_S = 25.0  # GB/T 18487.1-2015 B.4.3 (EVs give up after 30 s)
PRECHARGE_BUDGET_S = 60.0  # GB/T 27930-2015 Fig. A.6: the BMS waits 60 s for CRO(0xAA)
CONTACTOR_FEEDBACK_S = 1.0  # GB/T 18487.1-2015 B.4.7.1 (100 ms) plus polled feedback
SAFETY_IO_TIMEOUT_S = 1.0  # I/O board polled every 100 ms; silence = E-stop unknown
SENSOR_SILENT_S = 2.0  # a blind PT1000 is a fault (GB/T 18487.1-2023 C.7.9)
INSULATION_FAULT_OHM_PER_V = 100.0  # GB/T 18487.1-2015 B.5.1
MODULE_TIMEOUT_S = 1.0  # must act well before the module's own watchdog (1 s here, 10 s max)
OPEN_AT_A = 5.0  # GB/T 18487.1-2015 B.4.6
CABLE_CHECK_A = 2.0  # IEC 61851-23:2023 6.3.1.109 via EVerest
PRECHARGE_A = 20.0  # GB/T 18487.1-2015 B.4.4
STOP_BUDGET_S = 10.0  # GB/T 27930-2015 §8: <= 5 A within 10 s of BST
CONNECTOR_TRIP_C = 105.0  # GB 44263-2024 §6.2.2
BATTERY_V_TOLERANCE = 0.05  # GB/T 18487.1-2015 B.4.4: measured within +-5 % of BCP's
INSULATION_AT_VOLTAGE = 0.95  # GB/T 18487.1-2015 B.4.3: measured at the test voltage
GBT_CHARGE_RAW_MAX = 4000  # GB/T 27930-2015 §4.5: raw 4000 is 0 A, charging below it
IMD_PERIOD_S = 1.0  # Bender isoCHA-class IMD: one measurement a second
# V2G (the project's extension, docs/V2G.md; docs/SAFETY.md D1-D6)
V2G_ANSWER_S = 5.0  # BDP within 5 s of the first CDP, or the session is charge-only
V2G_STATUS_S = 1.0  # a BDS older than this is no consent
DIRECTION_BUDGET_S = 5.0  # GB/T 18487.1-2023 Annex E: <= 5 A within 5 s of a change
DIRECTION_A = 5.0  # ... measured
DIRECTION_DWELL_S = 0.5  # zero held before the new phase (E.5.1)
NOMINAL_KWH = 60.0  # the world's BCP nominal energy: equivalent cycles' base
# Upstream offers (I13), the project's rules as docs/SAFETY.md and docs/UPSTREAM.md state
# them, written here rather than read from the core's policy (a loosened policy must fail):
UPSTREAM_MAX_AGE_S = 5.0  # issued longer ago than this: stale
UPSTREAM_MAX_VALIDITY_S = 900.0  # valid for longer: refused (OCPP 2.1: upstream refreshes)
UPSTREAM_MIN_INTERVAL_S = 1.0  # one offer a second per source (OCPP 2.1 RateLimitExceeded)
# The output held to its command and limits (issue 24, docs/SAFETY.md I17, I18)
OVER_VOLTAGE_MARGIN_V = 15.0  # GB/T 18487.1-2015 B.4.7.6: EV max + 15 V
OVER_VOLTAGE_HOLD_S = 0.4  # IEC 61851-23:2023 CC.3.4.2: over the limit > 400 ms
OVER_CURRENT_HOLD_S = 1.0  # GB 44263-2024 §8.2.8: for 1 s
SETTLE_MIN_S = 1.0  # IEC 61851-23 101.2.1.3: settle within 1 s, else |dI| / 20 A/s
CAPABILITY_REGISTER_MAX_A = 330.0  # the capability register: 0.1 A steps, 0-330 A
# The session's energy (the core integrates polled samples, the world every tick) agrees
# to within this: a second at full power.
ENERGY_SLACK_KWH = 0.05
# The module's documented fault word (bit: name, emergency, latched), and what each must do
# while charging, from the device's description of the bit and the clauses: the module's
# own output and control cannot be trusted (over-voltage, over-current, internal, contactor
# mismatch) -> an emergency (K1/K2 open at once, GB/T 18487.1-2015 B.4.7.1) that latches
# until service (IEC 61851-23 CC.4.4); the module has already turned itself off for a cause
# that passes (over-temperature, its watchdog, the AC input, the grid trips) -> an error
# shutdown that does not latch.
MODULE_FAULT_REACTION: dict[int, tuple[str, bool, bool]] = {
    0: ("over_temperature", False, False), 1: ("over_voltage", True, True),
    2: ("over_current", True, True), 3: ("internal", True, True),
    4: ("watchdog_expired", False, False), 5: ("contactor_mismatch", True, True),
    6: ("input_fault", False, False), 7: ("grid_over_voltage", False, False),
    8: ("grid_under_voltage", False, False), 9: ("grid_frequency", False, False),
    10: ("anti_islanding", False, False),
}


def connector_fraction(temp_c: float) -> float:
    """Connector derating: full to 80 °C, none at 90 °C (GB/T 18487.1-2023 Table C.14)."""
    return min(1.0, max(0.0, (90.0 - temp_c) / 10.0))


@dataclass(frozen=True, slots=True)
class Written:
    """What this world's module put in its registers with a status: the figures the
    oracles judge by (not the core's reading of them)."""

    capability_a: float
    voltage_v: float  # the higher of output and gun voltage, as its sensors read
    current_a: float
    gun_v: float  # the gun (battery side) voltage, as its sensor reads


def _register_a(amps: float) -> float:
    """A current as the module's 0.1 A capability register holds it (its documented layout:
    nearest step, saturating at the ends)."""
    return min(max(math.floor(amps * 10.0 + 0.5) / 10.0, 0.0), CAPABILITY_REGISTER_MAX_A)


# Coverage: what kind of fault a FAULT's reason names (the first word that matches).
FAULT_KINDS = ("over-voltage", "over-current", "module fault", "link lost", "silent",
               "timeout", "insulation", "contactor", "welded", "emergency stop", "door",
               "gun lock", "battery voltage", "precharge", "disconnected", "safety I/O",
               "current did not fall")


def _fault_kind(reason: str) -> str:
    return next((k for k in FAULT_KINDS if k in reason), "other")


def _since(since: float | None, condition: bool, t: float) -> float | None:
    if not condition:
        return None
    return t if since is None else since


@dataclass(frozen=True)
class V2gSetup:
    """What a plug-in draws for V2G: the gun, the car's answer, the owner's or operator's
    battery-health policy and what this car did earlier today."""

    gun_a: float = 0.0  # the gun's discharge rating (0: charge-only, no CDP)
    gun_w: float = 0.0
    min_input_v: float = 200.0
    export_w: float = math.inf
    car: bool = False  # answers CDP with BDP (a 2015 car never does)
    bdp_delay_s: float = 0.0
    consent: bool = True
    max_a: float = 150.0
    max_w: float = 60_000.0
    min_v_fraction: float = 0.9  # the EV's minimum discharge voltage / its battery voltage
    soc_floor: float = 30.0
    soc_above_floor: float = 5.0
    window_kwh: float = 10.0
    capacity_ah: float = 150.0
    temp_c: float = 30.0
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    policy_source: str = "operator"  # or "owner_vin" (config), "owner_session" (the app)
    history: tuple[float, float] = (0.0, 0.0)
    # A site EMS that refreshes its setpoint every ems_period_s, each valid ems_ttl_s (None:
    # no EMS; upstream speaks only through the suite's rules).
    ems_a: float | None = None
    ems_period_s: float = 2.0
    ems_ttl_s: float = 5.0


class SafetyWorld:
    """The core, an EV and a plant on one simulated clock, with every invariant checked
    on each command and after each tick. `disturb` names every way the world misbehaves."""

    def __init__(self, pooled: bool = False) -> None:
        self.ratings = RATINGS
        # A gun of a pile with a shared module pool (tests/test_pile_safety.py).
        self.pooled = pooled
        self.s = GunSession(self.ratings, thermal=ThermalSupervisor(), pooled=pooled)
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
        self.in_flight: list[tuple[ModuleStatus, Written]] = []
        self.ev_lies = False
        self.session_started_t = 0.0
        self.next_poll = 0.0
        self.last_status_t: float | None = None
        self.last_status_a = 0.0
        self.last_status_gun_v = 0.0
        self.last_status_out_v = 0.0
        self.last_status_cap = CAPABILITY_REGISTER_MAX_A
        self.last_bcl_t: float | None = None
        self.last_bcs_t: float | None = None
        self.bsm_permit = True
        self.bcl_demand: float | None = None
        self.bcl_voltage: float | None = None  # the BCL voltage demand the core heard
        self.imd_low_t: float | None = None  # when the IMD last read <= 100 ohm/V
        self.next_imd = 0.0
        self.unlock_at_precharge = False
        self.bcp_max: float | None = None
        self.bcp_reported_v: float | None = None
        self.bhm_max: float | None = None
        self.bcp_max_v: float | None = None  # BCP's maximum total voltage, as heard
        # I17 / I18: since when the readings were over the limit (strictly, and within the
        # measurement's resolution), the setpoint the plant holds and its settling time.
        self.ov_since: float | None = None
        self.ov_loose_since: float | None = None
        self.oc_since: float | None = None
        self.oc_loose_since: float | None = None
        self.set_a = 0.0
        self.settle_until = -math.inf
        self.last_output_t = 0.0
        self.last_written_gun_v = 0.0
        self.upstream: tuple[float, float] | None = None  # (limit A, expires)
        self.upstream_accepted_t = -1e9
        # A second source (the central system's maximum profile): limits only, which bind
        # whatever the EMS asks (agent/core/upstream.py).
        self.caps: tuple[float, float, float] | None = None  # (charge A, discharge A, expires)
        self.caps_accepted_t = -1e9
        self.prev_cmd_a = 0.0
        self.prev_cmd_t = 0.0
        self.insulation_passed = False
        self.stopping_since_plug = False
        # Safety I/O board: what the inputs are, and what the core was last told.
        self.require_io = False
        self.io_mode = ""  # "" (answering), "silent", or "lost" (driver reports it)
        self.inputs = (False, False, False)  # (E-stop, door open, gun unlocked)
        self.estop = self.door = self.gun_unlocked = False
        self.last_io_t: float | None = None
        self.last_temp_t: float | None = None
        # Suite-side clocks of the session (from the core's commands, not its data).
        self.state_since = 0.0
        self.first_cml_t: float | None = None
        self.first_bro_t: float | None = None
        self.k12_changed_t = 0.0
        self.service_t = -1e9
        self.feedback_mismatch_t: float | None = None
        self.insulation_asked_t: float | None = None
        self.insulation_latest_ohm: float | None = None  # read after this session's request
        self.insulation_judged_ohm: float | None = None  # what it was when the core moved on
        self.reached_charging = False
        self.steps = -1  # invariants also run once after initialize
        self.max_amps = self.max_power_w = 0.0
        # V2G: the operator's health policy and today's history; what the car answered and
        # reports (as sent); the module's reverse capability; the direction of the latest
        # nonzero command and since when zero has been commanded.
        self.policy = HealthPolicy()
        self.policy_source = "operator"
        self.ems: V2gSetup = V2gSetup()
        self.ems_a: float | None = None
        self.next_ems = 0.0
        self.history = (0.0, 0.0)  # (kWh discharged, kWh throughput) earlier today
        self.first_cdp_t: float | None = None
        self.bdp: BDP | None = None
        self.bdp_in_time = False
        self.bds: BDS | None = None
        self.bds_t = -1e9
        self.reported_soc: float | None = None
        self.bsm_temp: float | None = None
        self.last_status_rev_a = 0.0
        self.last_status_rev_w = 0.0
        self.last_sign = 0.0
        self.zero_since: float | None = None
        self.low_since_zero = False
        self.want_other_since: float | None = None
        self.low_since_want = False
        self.session_in_kwh = self.session_out_kwh = 0.0
        self.discharged = False  # some session discharged (coverage)
        self.fault_kinds: set[str] = set()  # the kinds of fault reached (coverage)
        self.direction_changes = 0
        self.heard_since_tick = True
        self.last_tick_t = 0.0
        # I5 / I12 from the world's own record of what it made happen, never from the
        # core's verdicts: an emergency cause seen while K1/K2 were closed (it allows an
        # opening under load until they open), when this shutdown began, and the latching
        # causes a FAULT acted on (they block a start until a service that finds them gone).
        self.emergency_seen: str | None = None
        self.shutdown_began_t: float | None = None
        self.latched_causes: set[str] = set()

    # ---- feeding the core --------------------------------------------------------

    def feed(self, event: Event) -> None:
        # E1 (event-driven time): a tick before the session's deadline, with no event since
        # the last tick, changes nothing; so a runtime that sleeps until then loses nothing.
        # Nothing has reached the session since its last tick, so the deadline it names now
        # is the one it named after that tick (asked only here: it costs ~11 us).
        quiet_until = self.s.next_deadline() if isinstance(event, Tick) \
            and not self.heard_since_tick else None
        if quiet_until is not None:
            assert self.last_tick_t < quiet_until <= self.last_tick_t + MAX_QUIET_S + EPS, \
                f"E1 deadline {quiet_until} after a tick at {self.last_tick_t}"
        commands = self.s.handle(event)  # never raises: handle() swallows into fail-safe
        if quiet_until is not None and event.t < quiet_until - DEADLINE_TOLERANCE_S:
            assert not commands, (f"E1 tick at {event.t:.4f} s, before the deadline "
                                  f"{quiet_until:.4f} s, gave {commands}")
        if isinstance(event, Tick):
            self.heard_since_tick = False
            self.last_tick_t = event.t
        else:
            self.heard_since_tick = True
        for c in commands:
            self.check_command(c)
            if isinstance(c, SetContactors) and c.closed != self.plant.k12_cmd:
                self.k12_changed_t = self.t
            if isinstance(c, SetModuleOutput):
                self.on_setpoint(c.current_a if c.enabled else 0.0)
            self.plant.apply(c, self.t)
            msg = getattr(c, "message", None)
            if msg is not None:
                self.check_advertised(msg)
                self.ev.hear(msg, self.t)
                if isinstance(msg, CML) and self.first_cml_t is None:
                    self.first_cml_t = self.t
            if isinstance(c, StartInsulationTest):
                self.insulation_asked_t = self.t
                self.insulation_latest_ohm = self.insulation_judged_ohm = None
            if isinstance(c, SetBleeder) and c.on and self.s.state is State.INSULATION_CHECK:
                self.insulation_judged_ohm = self.insulation_latest_ohm  # the bleed starts
            if isinstance(c, StateChanged):
                self.on_state(c)

    def emergency_cause(self) -> str | None:
        """What in the world, now, lets K1/K2 open under load (docs/SAFETY.md I5: E-stop,
        door, module lost, unplug, welded; the safety I/O lost, I7; a connector past its
        trip temperature, I10; a module fault bit whose meaning is an emergency; a module
        whose current runs more than 5 A past its setpoint or stays stuck above 5 A, I15)."""
        p = self.plant
        emergency_bits = sum(1 << n for n, (_name, emergency, _l)
                             in MODULE_FAULT_REACTION.items() if emergency)
        causes = {
            "E-stop": self.estop or self.inputs[0], "door": self.door or self.inputs[1],
            "safety I/O lost": bool(self.io_mode), "unplugged": not self.plugged,
            "module lost": self.module_silent or self.module_frozen,
            "module fault": bool(p.fault_word & emergency_bits),
            "contactor": p.welded or bool(p.welded_poles) or p.stuck_open,
            "connector trip": not self.sensor_open and self.connector_c >= CONNECTOR_TRIP_C,
            # A module whose current loop runs more than 5 A past its setpoint, or whose
            # current is stuck above 5 A, cannot reach <= 5 A at a 0 A command: only K1/K2
            # and the safety controller's hardware trip reach the safe state in time
            # (GB 44263-2024 §8.2.1; docs/SAFETY.md I15).
            "module ignores the shutdown": p.overshoot_a > OPEN_AT_A
            or (p.current_stuck and abs(p.current_a) > OPEN_AT_A),
        }
        return next((name for name, present in causes.items() if present), None)

    def note_emergency(self) -> None:
        if not self.plant.k12_cmd:
            self.emergency_seen = None
        elif self.emergency_seen is None:
            self.emergency_seen = self.emergency_cause()

    def latch_causes(self, reason: str) -> None:
        """I12: the latching causes present in the world that this FAULT names (the latch
        decided by the world's table, not by the core's)."""
        p = self.plant
        present = {
            "E-stop": (self.estop, "emergency stop"),
            "welded": (p.welded or bool(p.welded_poles), "weld"),
            # a pack at <= 100 ohm/V at some voltage the gun can test at (B.5.1)
            "insulation": (p.insulation_ohm <= INSULATION_FAULT_OHM_PER_V
                           * RATINGS.max_voltage_v, "insulation fault"),
            "connector trip": (self.connector_c >= CONNECTOR_TRIP_C, "trip"),
            "sensor open": (self.sensor_open, "open"),
            **{name: (bool(p.fault_word >> n & 1), name)
               for n, (name, _e, latched) in MODULE_FAULT_REACTION.items() if latched},
        }
        self.latched_causes |= {cause for cause, (there, said) in present.items()
                                if there and said in reason}

    def on_state(self, c: StateChanged) -> None:
        self.state_since = self.t
        if c.dest in ("stopping", "fault") and c.source not in ("stopping", "fault",
                                                                "welding_check"):
            self.shutdown_began_t = self.t
        if c.dest == "fault":
            self.latch_causes(c.reason)
        if c.dest == "precharge" and self.unlock_at_precharge:
            self.unlock_at_precharge = False
            self.inputs = (False, False, True)  # the lock opens just before K1/K2 close
            if not self.io_mode:
                self.feed_inputs()
        if c.dest == "fault" and "insulation fault while charging" in c.reason:
            assert self.imd_low_t == self.t, f"I4 insulation fault on a good reading: {c.reason}"
        if c.dest == "handshake":
            self.bsm_permit = True
            self.bcl_demand = self.bcp_max = self.bcp_reported_v = self.bhm_max = None
            self.bcp_max_v = None
            self.bcl_voltage = None
            self.first_cml_t = self.first_bro_t = None
            assert not self.latched_causes, \
                f"started with latched faults {sorted(self.latched_causes)} (I12)"
            assert not self.estop, "started with the E-stop pressed (I12)"
            self.insulation_passed = False
            self.stopping_since_plug = False
            self.session_started_t = self.t
            self.first_cdp_t, self.bdp, self.bdp_in_time, self.bds = None, None, False, None
            self.bds_t, self.reported_soc, self.bsm_temp = -1e9, None, None
            self.last_sign, self.zero_since, self.want_other_since = 0.0, None, None
            self.session_in_kwh = self.session_out_kwh = 0.0
        if c.dest == "parameter_exchange":
            # The runtime reads today's energy for this VIN from the ledger after BRM.
            self.feed(EnergyHistory(self.t, VIN, *self.history))
        if c.source == "insulation_check" and c.dest == "identification":
            # I4: on this session's measurement, not a result read before it was asked for
            ready = self.plant.insulation_ready_at
            assert ready is not None and ready > self.session_started_t \
                and self.t >= ready, "I4 insulation result not from this session"
            # GB/T 18487.1-2015 B.5.1: <= 100 ohm/V at the test voltage is a fault
            test_v = min(self.bhm_max or RATINGS.max_voltage_v, RATINGS.max_voltage_v)
            judged = self.insulation_judged_ohm
            assert judged is not None and judged / test_v > INSULATION_FAULT_OHM_PER_V, \
                f"I4 insulation passed at {judged} ohm ({test_v} V test)"
            self.insulation_passed = True
        if c.dest == "fault" and c.reason.startswith("over-voltage"):
            assert self.ov_loose_since is not None \
                and self.last_output_t - self.ov_loose_since >= OVER_VOLTAGE_HOLD_S - EPS, \
                f"I17 over-voltage fault on readings within the limit: {c.reason}"
        if c.dest == "fault" and c.reason.startswith("over-current"):
            assert self.oc_loose_since is not None \
                and self.last_output_t - self.oc_loose_since >= OVER_CURRENT_HOLD_S - EPS, \
                f"I18 over-current fault on a current within its command: {c.reason}"
        if c.dest == "fault" and "differs from the reported" in c.reason:
            # A lying EV, or a gun-voltage sensor that reads off by as much (the two look
            # alike to a charger): judged from what this world's sensor read.
            reported = self.bcp_reported_v or 0.0
            misread = abs(self.last_written_gun_v - reported) \
                > BATTERY_V_TOLERANCE * reported - 0.2
            assert self.ev_lies or misread, \
                f"false battery-voltage fault from an honest EV: {c.reason}"
        if c.dest == "fault":
            self.fault_kinds.add(_fault_kind(c.reason))
        if c.dest in ("stopping", "fault"):
            self.stopping_since_plug = True
        if c.dest == "charging":
            self.reached_charging = True

    def tick(self) -> None:
        self.t = round(self.t + TICK, 6)
        for item in self.ev.speak(self.t):
            # Through the driver's own decoding, as on the bus: a codec that misreads a
            # field is the world's to find too.
            pgn, payload = (0x1300, item) if isinstance(item, bytes) else encode(item)
            for event in events_from(self.t, decode_received(pgn, payload)):
                message = getattr(event, "message", None)
                if not isinstance(event, VehicleMessage) or message is None:
                    self.feed(event)
                    continue
                self.hear_vehicle(message if isinstance(item, bytes) else item, message, pgn,
                                  payload)
        self.step_plant()
        self.note_emergency()

    def hear_vehicle(self, msg: object, heard: object, pgn: int, payload: bytes) -> None:
        """Track what the car said (what it sent, not what the decoder made of it: a
        decoder that misreads a field is the world's to find), then feed what was heard."""
        if pgn == 0x1300:
            # Charge permitted is 01 (SPN 3096); any other alarm bits stop the charge.
            self.bsm_permit = (payload[6] >> 4) & 0b11 == 0b01
            self.bsm_temp = float(payload[1] - 50)
            alarmed = any((payload[byte] >> shift) & 0b11
                          for byte, shift in BSM_ALARMS.values())
            charging = self.s.state is State.CHARGING
            self.feed(VehicleMessage(self.t, heard))  # type: ignore[arg-type]
            if alarmed and charging:
                assert self.s.state in (State.STOPPING, State.FAULT), \
                    f"BSM alarm {payload.hex()} ignored in {self.s.state.value}"
            return
        if type(msg).__name__ == "BCS":
            self.last_bcs_t = self.t
            self.reported_soc = msg.soc_pct  # type: ignore[attr-defined]
        if isinstance(msg, BDP) and self.s.state is State.PARAMETER_EXCHANGE \
                and self.bdp is None:
            self.bdp = msg
            # D1: it counts only if the offer went out on a V2G gun within 5 s
            self.bdp_in_time = self.first_cdp_t is not None \
                and self.t - self.first_cdp_t <= V2G_ANSWER_S
        if isinstance(msg, BDS):
            self.bds, self.bds_t = msg, self.t
        if type(msg).__name__ == "BCL":
            self.last_bcl_t, self.bcl_demand = self.t, msg.current_demand_a  # type: ignore[attr-defined]
            self.bcl_voltage = msg.voltage_demand_v  # type: ignore[attr-defined]
        if type(msg).__name__ == "BCP" and self.s.state is State.PARAMETER_EXCHANGE \
                and self.s.data.bcp is None:
            self.reported_soc = msg.soc_pct  # type: ignore[attr-defined]  # until a BCS
            self.bcp_max = msg.max_charge_current_a  # type: ignore[attr-defined]
            self.bcp_reported_v = msg.battery_voltage_v  # type: ignore[attr-defined]
            self.bcp_max_v = msg.max_total_voltage_v  # type: ignore[attr-defined]
        if type(msg).__name__ == "BHM":
            self.bhm_max = msg.max_charge_voltage_v  # type: ignore[attr-defined]
        if type(msg).__name__ == "BRO" and self.s.state is State.PARAMETER_EXCHANGE \
                and self.first_bro_t is None:
            self.first_bro_t = self.t
        self.feed(VehicleMessage(self.t, heard))  # type: ignore[arg-type]

    def step_plant(self) -> None:
        """The plant, the pollers and the tick, after the car has spoken."""
        if self.ems_a is not None and self.t >= self.next_ems - EPS:
            self.next_ems = self.t + self.ems.ems_period_s
            self.upstream_setpoint(self.ems_a, self.ems.ems_ttl_s, 0.0)
        out_before = self.ev.energy_out_kwh
        soc_before = self.ev.soc
        self.plant.step(TICK, self.ev)
        self.session_out_kwh += self.ev.energy_out_kwh - out_before
        if self.ev.soc > soc_before:
            self.session_in_kwh += self.plant.current_a * self.plant.out_v * TICK / 3.6e6
        if self.ev.contactors_closed and self.s.state in (State.STOPPING, State.WELDING_CHECK,
                                                          State.FINISHED, State.FAULT) \
                and self.plant.current_a <= 5.0:
            self.ev.contactors_closed = False  # the car opens K5/K6 once current is low
        if self.t >= self.next_poll - EPS:
            self.next_poll = self.t + POLL
            self.poll_io_board()
            if self.module_frozen:
                pass  # the bus owner hung: neither status nor link-lost arrives
            elif self.module_silent:
                self.feed(ModuleLinkLost(self.t, "no answer"))
                # I7: a link the driver reports lost is an emergency stop at once, not a
                # second later when the last status goes stale
                if self.s.state not in (State.IDLE, State.FINISHED):
                    assert self.s.state is State.FAULT and not self.plant.k12_cmd, \
                        f"I7 module link lost, {self.s.state.value} goes on"
            else:
                self.in_flight.append((self.plant.status(self.t, self.ev), Written(
                    _register_a(self.plant.capability_a),
                    self.plant.read_voltage_v(self.ev), self.plant.current_a,
                    self.plant.gun_v(self.ev) + self.plant.reads_high_v)))
        while self.in_flight and \
                self.in_flight[0][0].t + self.delivery_lag_ticks * TICK <= self.t + EPS:
            st_, written = self.in_flight.pop(0)
            self.last_status_t, self.last_status_a = st_.t, st_.output_current_a
            self.last_status_gun_v, self.last_status_out_v = st_.gun_voltage_v, \
                st_.output_voltage_v
            # I1's module capability: the figure this world wrote (0 A is 0 A), not the
            # decoded one (the core's reading is what is under test).
            self.last_status_cap = written.capability_a
            self.last_status_rev_a = st_.reverse_capability_current_a or 0.0
            self.last_status_rev_w = st_.reverse_capability_power_w or 0.0
            if self.zero_since is not None and st_.t > self.zero_since \
                    and abs(st_.output_current_a) <= DIRECTION_A + EPS:
                self.low_since_zero = True
            live = self.s.state not in (State.IDLE, State.FINISHED, State.FAULT)
            if self.insulation_asked_t is not None and st_.t > self.insulation_asked_t \
                    and st_.insulation_ohm is not None:
                self.insulation_latest_ohm = st_.insulation_ohm
            self.track_output(st_.t, written, live)  # before the core hears the sample
            self.feed(st_)
            self.check_contactor_feedback(st_)
            self.check_output(st_.t, written)
            if st_.fault_word and live:
                # D6 (grid trips) and every other module fault: the session ends at once
                assert self.s.state is State.FAULT, \
                    f"module fault word {st_.fault_word:#06x} ignored in {self.s.state.value}"
        self.feed(Tick(self.t))
        self.check_setpoint(self.plant.set_a if self.plant.enabled else 0.0, self.plant.set_v)
        self.check_watchdogs()

    def poll_io_board(self) -> None:
        """The I/O board: E-stop, door, gun lock and the two connector PT1000s."""
        if self.io_mode == "lost":
            self.feed(SafetyIoLost(self.t, "no answer"))
            if self.require_io and self.s.state not in (State.IDLE, State.FINISHED):
                assert self.s.state is State.FAULT and not self.plant.k12_cmd, \
                    f"I7 safety I/O lost, {self.s.state.value} goes on"
            return
        if self.io_mode == "silent":
            return
        self.feed_inputs()
        if self.s.state is State.CHARGING and self.t >= self.next_imd - EPS:
            self.read_imd()
        self.last_temp, self.sensor_open_seen = self.connector_c, self.sensor_open
        self.last_temp_t = self.t
        for pin in ("connector_dc_plus", "connector_dc_minus"):
            self.feed(TemperatureReading(self.t, pin, math.nan if self.sensor_open else
                                         self.connector_c,
                                         raw_ohm=1e6 if self.sensor_open else None))

    def read_imd(self) -> None:
        """The IMD's continuous monitoring while charging: <= 100 ohm/V at the output
        voltage is an insulation fault at once (GB/T 18487.1-2015 B.5.1), both sides held."""
        self.next_imd = self.t + IMD_PERIOD_S
        ohm_per_v = self.plant.insulation_ohm / max(self.plant.set_v, 1.0)
        self.imd_low_t = self.t if ohm_per_v <= INSULATION_FAULT_OHM_PER_V else None
        self.feed(InsulationStatus(self.t, self.plant.insulation_ohm, measurement_done=True))
        if self.imd_low_t is not None:
            assert self.s.state is State.FAULT, \
                f"I4 insulation {ohm_per_v:.1f} ohm/V while charging, {self.s.state.value}"

    def feed_inputs(self) -> None:
        self.estop, self.door, self.gun_unlocked = self.inputs
        self.last_io_t = self.t
        self.feed(SafetyInputs(self.t, emergency_stop=self.estop, door_open=self.door,
                               gun_locked=not self.gun_unlocked))

    def on_setpoint(self, amps: float) -> None:
        """A new setpoint: lowering it (or turning it round) gives the output the settling
        time of IEC 61851-23 101.2.1.3: 1 s, or |dI| / 20 A/s for a larger step."""
        if abs(amps) < abs(self.set_a) or amps * self.set_a < 0:
            self.settle_until = max(self.settle_until,
                                    self.t + max(SETTLE_MIN_S, abs(amps - self.set_a) / 20.0))
        self.set_a = amps

    def track_output(self, t: float, w: Written, live: bool) -> None:
        """I17: output voltage above min(gun, BHM, BCP maximum) + 15 V (GB/T 18487.1-2015
        B.4.7.6) for 400 ms (IEC 61851-23:2023 CC.3.4.2) is a fault. I18: while the output
        delivers (precharge, charging), current past the setpoint by 10 % (at >= 30 A) or 3 A
        (below), or against it, for 1 s after the settling time (GB 44263-2024 §8.2.8) is a
        fault (in a stop, the stop budget of I5 holds). Each judged from this world's own
        readings, a poll of slack; within the register's 0.1 resolution neither way: here
        since when each was over (strictly, and loosely), before the core hears the sample."""
        self.last_output_t, self.last_written_gun_v = t, w.gun_v
        if not live:
            self.ov_since = self.ov_loose_since = self.oc_since = self.oc_loose_since = None
            return
        ceiling = self.voltage_ceiling()
        self.ov_since = _since(self.ov_since, w.voltage_v > ceiling + 0.2, t)
        self.ov_loose_since = _since(self.ov_loose_since, w.voltage_v > ceiling - 0.2, t)
        cmd = self.set_a
        sign = 1.0 if cmd >= 0 else -1.0
        excess = max(sign * w.current_a - abs(cmd), -sign * w.current_a)
        margin = 0.1 * abs(cmd) if abs(cmd) >= 30.0 else 3.0
        settled = t >= self.settle_until and self.s.state in (State.PRECHARGE, State.CHARGING)
        self.oc_since = _since(self.oc_since, settled and excess > margin + 0.2, t)
        self.oc_loose_since = _since(self.oc_loose_since, settled and excess > margin - 0.2, t)

    def voltage_ceiling(self) -> float:
        return min(RATINGS.max_voltage_v, self.bhm_max or math.inf,
                   self.bcp_max_v or math.inf) + OVER_VOLTAGE_MARGIN_V

    def check_output(self, t: float, w: Written) -> None:
        """I17 / I18 after the core heard the sample: held over long enough is a fault."""
        if self.ov_since is not None and t - self.ov_since > OVER_VOLTAGE_HOLD_S + POLL + EPS:
            assert self.s.state is State.FAULT, \
                f"I17 output {w.voltage_v:.1f} V over {self.voltage_ceiling():.1f} V since " \
                f"{self.ov_since:.2f} s, {self.s.state.value}"
        if self.oc_since is not None and t - self.oc_since > OVER_CURRENT_HOLD_S + POLL + EPS:
            assert self.s.state is State.FAULT, \
                f"I18 {w.current_a:.1f} A against {self.set_a:.1f} A commanded since " \
                f"{self.oc_since:.2f} s, {self.s.state.value}"

    def check_contactor_feedback(self, status: ModuleStatus) -> None:
        """I4/I5: K1/K2 feedback that disagrees with the command for longer than the
        feedback deadline (one poll of slack) ends the session: welded or not closing."""
        # Pole by pole: commanded closed, both must read closed; commanded open, neither.
        agrees = status.contactors_closed if self.plant.k12_cmd else \
            not status.any_contactor_closed
        if agrees:
            self.feedback_mismatch_t = None
            return
        if self.feedback_mismatch_t is None:
            self.feedback_mismatch_t = status.t
        since = max(self.feedback_mismatch_t, self.k12_changed_t, self.service_t)
        if status.t - since > CONTACTOR_FEEDBACK_S + POLL + EPS:
            what = "not closing" if self.plant.k12_cmd else "welded"
            assert self.s.state is State.FAULT, \
                f"I4/I5 contactor {what} for {status.t - since:.2f} s in {self.s.state.value}"

    # ---- invariants on each command ----------------------------------------------

    def check_setpoint(self, amps: float, voltage_v: float) -> None:
        """I1/I2/I3/I10 on a module setpoint: each new one, and the standing one after every
        tick (a setpoint the core never changes must still respect a limit that moved)."""
        state = self.s.state
        assert math.isfinite(amps) and math.isfinite(voltage_v)
        # I1 / I2 / I3: every limit, whatever the state
        assert abs(amps) <= RATINGS.max_current_a + EPS, "I1 rating"
        power_w = min(RATINGS.max_power_w, self.ratings.grid_limit_w)
        if amps >= 0.0:
            assert amps * voltage_v <= power_w * (1 + EPS), "I2 power (rated, grid)"
            assert amps <= self.last_status_cap + EPS, "I1 module capability"
        else:
            self.check_discharge(-amps, voltage_v)
        if state is State.CHARGING and amps > 0:
            # GB/T 27930-2015 BSM: charge not permitted (and no abnormal flag) = pause
            assert self.bsm_permit, "I1 state: current while the BMS pauses"
            assert self.bcl_demand is not None and amps <= max(self.bcl_demand, 0) + EPS, \
                "I1 EV demand"
            assert self.bcp_max is not None and amps <= self.bcp_max + EPS, "I1 EV max"
            if self.upstream is not None and self.t < self.upstream[1]:
                assert amps <= max(self.upstream[0], 0.0) + EPS, "I1/I13 upstream limit"
            assert amps <= self.caps_live()[0] + EPS, \
                f"I13 {amps} A above the central system's charge limit {self.caps_live()[0]} A"
            vmax = min(RATINGS.max_voltage_v, self.ev.p.bcp_max_v,
                       self.bhm_max if self.bhm_max is not None else math.inf)
            assert voltage_v <= vmax + EPS, "I3 voltage"
            # I3: the car's voltage demand (CV) binds too, not only its BCP maximum
            assert self.bcl_voltage is not None and voltage_v <= self.bcl_voltage + EPS, \
                f"I3 voltage {voltage_v} V above the BCL demand {self.bcl_voltage} V"
            # A V2G session charges no further than the health policy's SOC ceiling.
            if self.v2g_negotiated() and self.reported_soc is not None:
                assert self.reported_soc < self.policy.soc_ceiling_pct, \
                    f"charging at {self.reported_soc} % SOC, ceiling " \
                    f"{self.policy.soc_ceiling_pct} %"
        elif state is State.INSULATION_CHECK:
            assert 0.0 <= amps <= CABLE_CHECK_A + EPS, "I1 state (cable check)"
            assert voltage_v <= self.insulation_test_v() + EPS, \
                f"I3 {voltage_v} V in the insulation check, test voltage {self.insulation_test_v()}"
        elif state is State.PRECHARGE:
            assert 0.0 <= amps <= PRECHARGE_A + EPS, "I1 state (precharge)"
        elif state is not State.CHARGING:
            assert amps == 0.0, f"I1 state: {amps} A in {state.value}"
        # I10: never above the connector derating at the latest reading
        cap = connector_fraction(self.last_temp) * RATINGS.max_current_a
        if self.sensor_open_seen:
            cap = 0.0
        assert abs(amps) <= cap + EPS or (state in (State.INSULATION_CHECK, State.PRECHARGE) \
            and cap > PRECHARGE_A), f"I10 thermal: {amps} A at {self.last_temp} °C"

    def v2g_negotiated(self) -> bool:
        return self.bdp is not None and self.bdp_in_time

    def check_discharge(self, amps: float, voltage_v: float) -> None:
        """D1-D4 on a discharge setpoint of `amps` (a magnitude), against what the car, the
        module, the gun's ratings, upstream and the health policy allowed (docs/SAFETY.md)."""
        t, r, p = self.t, self.ratings, self.policy
        # D1: energy transfer, a gun that offers V2G, the car's BDP in time with consent,
        # a live BDS with consent, and an authorised upstream discharge setpoint
        assert self.s.state is State.CHARGING, f"D1 discharge in {self.s.state.value}"
        assert r.max_discharge_current_a > 0, "D1 discharge on a charge-only gun"
        bdp, bds = self.bdp, self.bds
        assert bdp is not None and self.bdp_in_time, "D1 discharge without a BDP in time"
        assert bdp.consent, "D1 discharge without the BDP's consent"
        assert bds is not None and bds.consent and t - self.bds_t <= V2G_STATUS_S + EPS, \
            "D1 discharge without a live BDS consent"
        up = self.upstream
        assert up is not None and up[0] < 0 and t < up[1], \
            "D1/D4 discharge without a valid upstream discharge setpoint"
        # D3: every discharge limit
        assert amps <= -up[0] + EPS, f"D3 {amps} A above the upstream setpoint {up[0]} A"
        assert amps <= self.caps_live()[1] + EPS, \
            f"D3 {amps} A above the central system's discharge limit {self.caps_live()[1]} A"
        if self.bcl_demand is not None and self.bcl_demand < 0:
            assert amps <= -self.bcl_demand + EPS, "D3 above the car's discharge request"
        limit_a = min(bdp.max_discharge_current_a, bds.max_discharge_current_a,
                      r.max_discharge_current_a, self.last_status_rev_a)
        assert amps <= limit_a + EPS, f"D3 {amps} A above the discharge limit {limit_a} A"
        power_w = min(bdp.max_discharge_power_w, r.max_discharge_power_w, r.grid_limit_w,
                      r.export_limit_w, self.last_status_rev_w)
        volts = max(voltage_v, self.last_status_out_v)
        assert amps * volts <= power_w * (1 + EPS), \
            f"D3 {amps * volts:.0f} W above the discharge power limit {power_w:.0f} W"
        # D2: the voltage floor, the EV's minimum voltage, the SOC floor
        floor_v = max(bdp.min_discharge_voltage_v, r.min_input_voltage_v)
        assert voltage_v >= floor_v - EPS, f"D2 voltage floor {voltage_v} V below {floor_v} V"
        assert self.last_status_gun_v > bdp.min_discharge_voltage_v, \
            f"D2 discharging at {self.last_status_gun_v} V, EV minimum " \
            f"{bdp.min_discharge_voltage_v} V"
        soc_floor = max(bdp.soc_floor_pct, bds.soc_floor_pct, p.soc_floor_pct)
        assert self.reported_soc is not None and self.reported_soc > soc_floor, \
            f"D2 discharging at {self.reported_soc} % SOC, floor {soc_floor} %"
        # D3: the V2X energy window and the health policy
        assert bds.remaining_energy_kwh > 0.0, "D3 V2X energy window used up"
        assert self.session_out_kwh <= bdp.energy_kwh + ENERGY_SLACK_KWH, \
            f"D3 {self.session_out_kwh:.3f} kWh out of a {bdp.energy_kwh} kWh window"
        assert amps <= p.max_discharge_c_rate * self.ev.p.capacity_ah + EPS, "D3 C-rate"
        if self.bsm_temp is not None:
            assert p.min_temperature_c <= self.bsm_temp - 2 and \
                self.bsm_temp <= p.max_temperature_c, \
                f"D3 discharging at {self.bsm_temp} °C, window {p.min_temperature_c}.." \
                f"{p.max_temperature_c} °C"
        day_out = self.history[0] + self.session_out_kwh
        assert day_out <= p.max_discharge_kwh_per_day + ENERGY_SLACK_KWH, \
            f"D3 {day_out:.3f} kWh discharged today, limit {p.max_discharge_kwh_per_day}"
        cycles = (self.history[1] + self.session_in_kwh + self.session_out_kwh) \
            / (2 * NOMINAL_KWH)
        assert cycles <= p.max_cycles_per_day + ENERGY_SLACK_KWH / (2 * NOMINAL_KWH), \
            f"D3 {cycles:.4f} equivalent cycles today, limit {p.max_cycles_per_day}"

    def wanted_direction(self) -> float:
        """+1 charge, -1 discharge: what the core must be heading for (docs/V2G.md)."""
        up, bdp, bds = self.upstream, self.bdp, self.bds
        discharge = self.ratings.max_discharge_current_a > 0 and bdp is not None \
            and self.bdp_in_time and bdp.consent and bds is not None and bds.consent \
            and self.t - self.bds_t <= V2G_STATUS_S \
            and up is not None and up[0] < 0 and self.t < up[1] and self.caps_live()[1] > 0
        return -1.0 if discharge else 1.0

    def caps_live(self) -> tuple[float, float]:
        """The central system's (charge, discharge) limits while valid, else none."""
        c = self.caps
        return (c[0], c[1]) if c is not None and self.t < c[2] else (math.inf, math.inf)

    def insulation_test_v(self) -> float:
        """GB/T 18487.1-2015 B.4.3: min(BHM max voltage, charger rated voltage)."""
        return min(self.bhm_max if self.bhm_max is not None else math.inf,
                   RATINGS.max_voltage_v)

    def check_advertised(self, msg: object) -> None:
        """What the charger tells the car is within its ratings and on the wire with the
        standard's sign (GB/T 27930-2015 §4.5: charging counts negative, raw < 4000),
        read back with the independent decoder, field by field where it stands."""
        if isinstance(msg, CDP):
            # D1: only a gun that can discharge offers it, and never beyond its ratings
            r = self.ratings
            assert r.max_discharge_current_a > 0, "CDP sent by a charge-only gun"
            if msg.offered and self.first_cdp_t is None:
                self.first_cdp_t = self.t
            # Read back from the wire as laid out (docs/V2G.md: bytes 1-2 current 0.1 A/bit,
            # -400 A offset, + = discharge; 3-4 power 0.1 kW/bit; 5-6 DC input floor 0.1 V/bit):
            # a rating that is no multiple of a bit must not be rounded up past itself.
            _pgn, payload = encode(msg)
            amps = int.from_bytes(payload[1:3], "little") / 10 - 400
            watts = int.from_bytes(payload[3:5], "little") * 100
            volts = int.from_bytes(payload[5:7], "little") / 10
            assert 0.0 < amps <= r.max_discharge_current_a + EPS \
                and watts <= r.max_discharge_power_w + EPS \
                and volts >= r.min_input_voltage_v - EPS, \
                f"CDP {amps} A, {watts} W, {volts} V on the wire: not a discharge within the " \
                f"gun's discharge ratings"
            return
        if not isinstance(msg, CML | CCS | CRO):
            return
        _pgn, payload = encode(msg)
        if isinstance(msg, CML):
            f = cml_raw(payload)
            assert f["max_current_raw"] <= GBT_CHARGE_RAW_MAX and \
                f["min_current_raw"] <= GBT_CHARGE_RAW_MAX, f"CML currents not charging: {f}"
            max_a, min_a = charge_amps(int(f["max_current_raw"])), \
                charge_amps(int(f["min_current_raw"]))
            assert max_a <= RATINGS.max_current_a + EPS, f"CML max {max_a} A above the rating"
            assert 0.0 <= min_a <= max_a, f"CML min {min_a} A above max {max_a} A"
            assert 0.0 <= f["min_voltage"] <= f["max_voltage"] <= RATINGS.max_voltage_v + EPS, \
                f"CML voltages {f}"
        elif isinstance(msg, CCS):
            f = fields_of("CCS", payload)
            assert abs(f["current"] - msg.output_current_a) <= 0.05 + EPS, \
                f"CCS current {msg.output_current_a} A on the wire as {f['current']} A"
        else:
            assert payload[0] in (0x00, 0xAA), f"CRO byte {payload[0]:#04x}"
            if payload[0] == 0xAA:
                assert self.plant.k12_cmd, "CRO(0xAA) (charger ready) with K1/K2 open"

    def check_command(self, c: Command) -> None:
        state = self.s.state
        if isinstance(c, SetContactors) and c.closed:
            assert not self.gun_unlocked, "I4 K1/K2 closed onto an unlocked gun"
        if isinstance(c, StartInsulationTest):
            # I4: at min(BHM, rating), and with the output there (not half-way up)
            test_v = self.insulation_test_v()
            assert abs(c.test_voltage_v - test_v) <= EPS, \
                f"I4 insulation tested at {c.test_voltage_v} V, not {test_v} V"
            assert self.last_status_out_v >= INSULATION_AT_VOLTAGE * test_v - EPS, \
                f"I4 insulation measured at {self.last_status_out_v:.1f} V of {test_v} V"
        if isinstance(c, CurrentDecided) and c.bound_by.startswith("upstream/") \
                and c.current_a > 0:
            # I7/I13: an upstream limit binds a charge only while a setpoint is valid; once
            # it expires the fallback applies (unlimited charging here). A discharge held at
            # zero by an expired setpoint is D4, checked on every setpoint.
            assert (self.upstream is not None and self.t < self.upstream[1]) \
                or self.caps_live()[0] < math.inf, "I7 expired upstream setpoint still applied"
        if isinstance(c, SetModuleOutput):
            amps = c.current_a if c.enabled else 0.0
            self.check_setpoint(amps, c.voltage_v)
            self.max_amps = max(self.max_amps, abs(amps))
            self.max_power_w = max(self.max_power_w, abs(amps) * c.voltage_v)
            # I6: up-ramp of the magnitude, in either direction (a sign change starts from
            # zero); I14: never rises once stopping started this session
            before = self.prev_cmd_a if self.prev_cmd_a * amps > 0 else 0.0
            if abs(amps) > abs(before) + EPS:
                dt = self.t - self.prev_cmd_t
                assert abs(amps) - abs(before) <= RATINGS.ramp_up_a_per_s * dt + 1e-3, \
                    "I6 ramp"
                assert not self.stopping_since_plug or state is State.HANDSHAKE, "I14"
            self.prev_cmd_a, self.prev_cmd_t = amps, self.t
            self.check_direction_change(amps)
        elif isinstance(c, SetContactors) and c.closed and self.ev.contactors_closed:
            # I4: onto the battery (the world's car has its K5/K6 closed, whatever state the
            # core says it is in) only after insulation OK, voltage checked, output below
            assert self.insulation_passed, "I4 insulation not checked this session"
            assert not ({"welding", "module_contactor_mismatch"} & set(self.s.safety.latched))
            assert self.bcp_reported_v is not None
            assert abs(self.last_status_gun_v - self.bcp_reported_v) <= \
                BATTERY_V_TOLERANCE * self.bcp_reported_v + EPS, \
                "I4 battery voltage not within 5 %"
            gap = self.last_status_gun_v - self.last_status_out_v
            assert 1.0 - EPS <= gap <= 10.0 + EPS, f"I4 output {gap:.2f} V below the battery"
        elif isinstance(c, SetContactors) and not c.closed:
            # I5: open at <= 5 A unless the world holds an emergency cause, or the stop
            # budget ran out (both from the world's record, not the core's fault data)
            low = abs(self.last_status_a) <= OPEN_AT_A + EPS
            budget = self.shutdown_began_t is not None \
                and self.t - self.shutdown_began_t >= STOP_BUDGET_S - EPS
            emergency = self.emergency_seen or self.emergency_cause()
            assert low or emergency or budget, \
                f"I5 opened at {self.last_status_a:.1f} A in {state.value} with no " \
                f"emergency in the world"

    def check_direction_change(self, amps: float) -> None:
        """D5: a command whose sign differs from the last nonzero one comes only after zero
        was commanded for 0.5 s and a sample taken since read <= 5 A."""
        sign = math.copysign(1.0, amps) if amps != 0.0 else 0.0
        if sign == 0.0:
            if self.zero_since is None:
                self.zero_since, self.low_since_zero = self.t, False
            return
        if self.last_sign and sign != self.last_sign:
            assert self.zero_since is not None \
                and self.t - self.zero_since >= DIRECTION_DWELL_S - EPS, \
                f"D5 direction change without {DIRECTION_DWELL_S} s at zero"
            assert self.low_since_zero, f"D5 direction change with no sample <= {DIRECTION_A} A"
            self.direction_changes += 1
        if sign < 0:
            self.discharged = True
        self.last_sign, self.zero_since = sign, None

    def check_direction_budget(self) -> None:
        """D5: once the core must change direction, the current is <= 5 A within 5 s or
        the session faults (a module whose current does not follow cannot reverse)."""
        active = self.last_sign or 1.0  # energy transfer starts in the charge direction
        if self.s.state is not State.CHARGING or self.wanted_direction() == active:
            self.want_other_since = None
            return
        if self.want_other_since is None:
            self.want_other_since, self.low_since_want = self.t, False
        if abs(self.last_status_a) <= DIRECTION_A + EPS:
            self.low_since_want = True
        # One poll and the largest delivery lag of slack.
        assert self.low_since_want or self.t - self.want_other_since <= \
            DIRECTION_BUDGET_S + POLL + 0.1 + TICK + EPS, \
            f"D5 direction change: {self.last_status_a:.1f} A after " \
            f"{self.t - self.want_other_since:.2f} s, still charging"

    def check_watchdogs(self) -> None:
        s, t, late = self.s, self.t, TICK + EPS
        # I7: BCL silent 1 s, BCS silent 5 s -> no longer charging
        if s.state is State.CHARGING:
            since = max(self.last_bcl_t or 0.0, self.state_since)
            assert t - since <= BCL_TIMEOUT_S + late, "I7 BCL watchdog"
            since = max(self.last_bcs_t or 0.0, self.state_since)
            assert t - since <= BCS_TIMEOUT_S + late, "I7 BCS watchdog"
        self.check_awaited_messages()
        self.check_direction_budget()
        # I7: module silent -> de-energised, well before the module's own timeout; an error
        # shutdown still ramping down with K1/K2 closed counts too
        ramping_down = s.state is State.FAULT and self.plant.k12_cmd
        at_stake = s.state in LIVE or ramping_down
        if s.state in ENERGISED or ramping_down:
            since = max(self.last_status_t or 0.0, s.data.started_at)
            assert t - since <= MODULE_TIMEOUT_S + late, "I7 module watchdog"
        # I7: safety I/O silent 1 s (when the pile needs it) -> emergency stop; a connector
        # sensor silent 2 s is blind -> fault (I11)
        if self.require_io and at_stake:
            since = max(self.last_io_t or 0.0, s.data.started_at)
            assert t - since <= SAFETY_IO_TIMEOUT_S + late, "I7 safety I/O watchdog"
        if s.state in LIVE and self.last_temp_t is not None:
            assert t - self.last_temp_t <= SENSOR_SILENT_S + late, "I11 silent sensor"
        # I10: a trip temperature ends energy transfer and latches
        if self.last_temp >= CONNECTOR_TRIP_C:
            assert s.state in (State.IDLE, State.FAULT), "I10 thermal trip ignored"
        # Sequence budgets: a stalled step ends in FAULT, never waits forever.
        budget = {State.INSULATION_CHECK: INSULATION_BUDGET_S,
                  State.PRECHARGE: PRECHARGE_BUDGET_S,
                  State.STOPPING: STOP_BUDGET_S}.get(s.state)
        if budget is not None:
            assert t - self.state_since <= budget + late, f"{s.state.value} over {budget} s"
        # I5: an error shutdown opens K1/K2 within the stop budget, at <= 5 A or not
        if s.state is State.FAULT and self.plant.k12_cmd:
            assert t - self.state_since <= STOP_BUDGET_S + late, "I5 FAULT holds K1/K2 closed"
        # I4: a lock that opens while K1/K2 are closed ends the session at once
        if self.gun_unlocked and self.plant.k12_cmd:
            assert s.state is State.FAULT, f"I4 unlocked gun energised in {s.state.value}"
        # I15: outside a session nothing is energised
        if s.state in (State.IDLE, State.FINISHED):
            assert not self.plant.k12_cmd, f"K1/K2 commanded closed in {s.state.value}"
        # I12: an E-stop while plugged puts the session in FAULT; an open door stops it
        if self.estop:
            assert s.state in (State.IDLE, State.FAULT), "I12 E-stop ignored"
        if self.door:
            assert not at_stake, f"door open in {s.state.value}, K1/K2 {self.plant.k12_cmd}"

    def check_awaited_messages(self) -> None:
        """I7: every message the charger waits for has a deadline (GB/T 27930-2015 §8)."""
        s, t, late = self.s.state, self.t, TICK + EPS
        if s in (State.HANDSHAKE, State.IDENTIFICATION):
            awaited = "BHM" if s is State.HANDSHAKE else "BRM"
            assert t - self.state_since <= HANDSHAKE_TIMEOUT_S + late, f"I7 {awaited} watchdog"
        elif s is State.PARAMETER_EXCHANGE and self.bcp_max is None:
            assert t - self.state_since <= HANDSHAKE_TIMEOUT_S + late, "I7 BCP watchdog"
        elif s is State.PARAMETER_EXCHANGE and self.first_bro_t is None \
                and self.first_cml_t is not None:
            assert t - self.first_cml_t <= HANDSHAKE_TIMEOUT_S + late, "I7 BRO watchdog"
        elif s is State.PARAMETER_EXCHANGE and self.first_bro_t is not None:
            assert t - self.first_bro_t <= BRO_READY_TIMEOUT_S + late, "I7 BRO(0xAA) watchdog"

    # ---- what the rules do ----------------------------------------------------------

    def plug(self, bhm: float, bcp_max_a: float, bcp_max_v: float, battery_v: float,
             demand: float, lie: float, grid_kw: float, mute: str, require_io: bool,
             flaw: str = "", demand_v: float = 1.0, v2g: V2gSetup | None = None,
             k56_delay_s: float = 0.0) -> None:
        """demand_v: the BCL voltage demand as a fraction of BCP's max total voltage (1.0:
        a car in CC that asks its maximum; below: one in CV, or a CC car asking less).
        v2g: the gun's discharge ratings, the car's V2G answer and the health policy (None:
        a charge-only gun and a 2015 car). k56_delay_s: the car's K5/K6 close that long
        after its first BRO(0xAA)."""
        v = v2g or V2gSetup()
        # The site's grid connection, below the rated power or not (I2), and its export
        # share (D3).
        self.ratings = replace(RATINGS, grid_limit_w=grid_kw * 1000.0,
                               max_discharge_current_a=v.gun_a, max_discharge_power_w=v.gun_w,
                               min_input_voltage_v=v.min_input_v, export_limit_w=v.export_w)
        assert not self.ratings.problems(), self.ratings.problems()
        assert not v.policy.problems(), v.policy.problems()
        self.policy, self.policy_source, self.history = v.policy, v.policy_source, v.history
        self.ems, self.ems_a, self.next_ems = v, v.ems_a, 0.0
        # A pile with the safety bus configured needs it to start and to go on (I7).
        self.require_io = require_io
        self.s = GunSession(self.ratings, thermal=ThermalSupervisor(),
                            require_safety_io=require_io,
                            health=v.policy if v.policy_source == "operator" else None,
                            owner_policies={VIN: v.policy} if v.policy_source == "owner_vin"
                            else None, pooled=self.pooled)
        battery_v = round(min(battery_v, bcp_max_v - 5), 1)
        reported_v = round(battery_v * lie, 1)
        # A liar is a car whose BCP voltage is off by more than 5 % either way; 4 % is not.
        self.ev_lies = abs(battery_v - reported_v) > BATTERY_V_TOLERANCE * reported_v
        self.ev = Ev(EvParams(bhm_max_v=round(bhm, 1), bcp_max_a=round(bcp_max_a, 1),
                              bcp_max_v=round(bcp_max_v, 1), battery_v=battery_v,
                              reported_v=reported_v, demand_a=round(demand, 1),
                              demand_v=self.cv_demand(bcp_max_v, battery_v, demand_v),
                              mute=mute, k56_delay_s=k56_delay_s, v2g=v.car,
                              bdp_delay_s=v.bdp_delay_s,
                              bdp_consent=v.consent, discharge_max_a=round(v.max_a, 1),
                              discharge_max_w=round(v.max_w, -2),  # BDP: 100 W a bit
                              discharge_min_v=round(battery_v * v.min_v_fraction, 1),
                              soc_floor_pct=round(v.soc_floor, 1),
                              window_kwh=round(v.window_kwh, 1),
                              soc_pct=min(v.soc_floor + v.soc_above_floor, 100.0),
                              capacity_ah=round(v.capacity_ah, 1), temperature_c=v.temp_c))
        if flaw:
            self.disturb(flaw)  # a plant that is broken from the start
        self.plugged = True
        self.feed_inputs()
        self.connect()

    def connect(self) -> None:
        self.feed(VehicleConnected(self.t, wall_clock_s=1.7e9))
        if self.policy_source == "owner_session":
            self.feed(OwnerPolicy(self.t, self.policy, "app"))

    @staticmethod
    def cv_demand(bcp_max_v: float, battery_v: float, fraction: float) -> float:
        """A BCL voltage demand a car would send: a fraction of its BCP maximum, but above
        its own battery (a car asking below its battery asks for nothing)."""
        return round(min(bcp_max_v, max(bcp_max_v * fraction, battery_v + 10.0)), 1)

    def advance(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def disturb(self, kind: str, bit: int = 0) -> None:
        ev, plant = self.ev, self.plant
        match kind:
            case "ev_silent":
                ev.talking = False
            case "ev_stops_bcl":
                ev.send_bcl = False
            case "bsm_pause" | "bsm_resume":
                ev.bsm_permit = kind == "bsm_resume"
            case "bsm_over_temperature":
                ev.bsm_alarm, ev.bsm_alarm_bits = "over_temperature", 0b01
            case "bst":
                self.feed(VehicleMessage(self.t, BST(frozenset({BmsStopReason.SOC_REACHED}))))
            case "unplug":
                ev.contactors_closed, self.plugged = False, False
                self.feed(VehicleDisconnected(self.t))
            case "plug_again" if not self.plugged:
                self.ev = Ev(ev.p)
                self.plugged = True
                self.connect()
            case "module_silent" | "module_back":
                self.module_silent = kind == "module_silent"
            case "module_fault":
                plant.fault_word = 1 << bit
            case "welded":
                plant.welded = True
            case "welded_k1" | "welded_k2":
                plant.welded_poles |= 0b01 if kind == "welded_k1" else 0b10
            case "gun_unlocked_in_precharge":
                self.unlock_at_precharge = True
            case "voltage_offset_up":
                plant.offset_v = 8.0  # settles 3 V above the battery: never below it
            case "insulation_drops":
                self.insulation_drifts(80.0)  # 80 ohm/V: below the 100 ohm/V fault line
            case "output_weak":
                plant.output_fraction = 0.8  # never reaches the insulation test voltage
            case "insulation_low" | "insulation_warn":
                plant.insulation_ohm = (50.0 if kind == "insulation_low" else 300.0) * 500.0
            case "estop" | "estop_released" | "door" | "gun_unlocked":
                # One input changes at a time; the board reports it at once if it answers.
                self.inputs = (kind == "estop", kind == "door", kind == "gun_unlocked")
                if not self.io_mode:
                    self.feed_inputs()
            case "service":
                plant.welded, plant.fault_word, plant.stuck_open = False, 0, False
                plant.welded_poles, plant.output_fraction = 0, 1.0
                plant.current_stuck, plant.imd_dead, plant.offset_v = False, False, 0.0
                self.connector_c, self.sensor_open = 40.0, False
                self.service_t = self.t
                # I12: service clears a latch only with K1/K2 open and its cause gone (the
                # E-stop released); the repairs above remove every other cause.
                if not self.plant.k12_cmd:
                    self.latched_causes &= {"E-stop"} if self.estop or self.inputs[0] \
                        else set()
                self.feed(FaultsCleared(self.t, "service"))
            case "io_silent" | "io_lost" | "io_back":
                self.io_mode = {"io_silent": "silent", "io_lost": "lost"}.get(kind, "")
            case "contactor_stuck_open":
                plant.stuck_open = True
            case "current_stuck":
                plant.current_stuck = True
            case "imd_dead":
                plant.imd_dead = True
            case "voltage_offset":
                plant.offset_v = -20.0  # output 20 V below its setpoint: gap never 1-10 V
            case "operator_stop":
                self.feed(StopRequested(self.t))
            case "module_frozen":
                self.module_frozen = True
            case "ev_stops_bcs":
                ev.send_bcs = False
            case "cool" | "overheat":
                self.connector_c = 40.0 if kind == "cool" else 110.0
            case "sensor_open" | "sensor_fixed":
                self.sensor_open = kind == "sensor_open"
            case "consent_withdrawn" | "consent_given":
                ev.consent = kind == "consent_given"
            case "ems_silent":
                self.ems_a = None  # its last setpoint expires (D4)
            case "ev_stops_bds" | "ev_resumes_bds":
                ev.send_bds = kind == "ev_resumes_bds"

    def bsm_alarm(self, alarm: str, bits: int) -> None:
        self.ev.bsm_alarm, self.ev.bsm_alarm_bits = alarm, bits

    def insulation_drifts(self, ohm_per_v: float) -> None:
        """The pack's insulation at ohm_per_v of the present output voltage (of the rated
        voltage while the output is off), for the IMD."""
        volts = self.plant.set_v if self.plant.enabled and self.plant.set_v > 0 else \
            RATINGS.max_voltage_v
        self.plant.insulation_ohm = ohm_per_v * volts

    def central_caps(self, charge_a: float, discharge_a: float, ttl: float) -> None:
        """The central system's maximum profile: limits only (source ocpp:max), vetted as
        the core does: one per source per second, validity within the policy."""
        if ttl > 0 and not ttl > UPSTREAM_MAX_VALIDITY_S \
                and not self.t - self.caps_accepted_t < UPSTREAM_MIN_INTERVAL_S:
            self.caps, self.caps_accepted_t = (charge_a, discharge_a, self.t + ttl), self.t
        self.feed(UpstreamSetpoint(self.t, "ocpp:max", self.t + ttl, charge_limit=charge_a,
                                   discharge_limit=discharge_a))

    def upstream_setpoint(self, amps: float, ttl: float, age: float) -> None:
        """Signed: + a charge limit, - an authorised discharge setpoint. Vetted as the spec
        says (I13), with the same arithmetic as the core: a boundary case must not be
        accepted on one side and refused on the other."""
        issued, expires = self.t - age, self.t + ttl
        # Each direction within its own rating: a discharge beyond the gun's discharge
        # rating (any, on a charge-only gun) is refused, as the station answers upstream.
        rated = self.ratings.max_current_a if amps >= 0 else self.ratings.max_discharge_current_a
        valid = (math.isfinite(amps) and abs(amps) <= rated
                 and not self.t - issued > UPSTREAM_MAX_AGE_S and expires > self.t
                 and not expires - self.t > UPSTREAM_MAX_VALIDITY_S
                 and not self.t - self.upstream_accepted_t < UPSTREAM_MIN_INTERVAL_S)
        if valid:
            self.upstream, self.upstream_accepted_t = (amps, expires), self.t
        self.feed(UpstreamLimit(issued, "ems", amps, expires_at=expires))
