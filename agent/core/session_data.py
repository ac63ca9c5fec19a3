"""What one charging session remembers; a fresh instance per plug-in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.core.arbiter import Limit
from agent.core.direction import DirectionControl
from agent.core.events import ModuleStatus, PoolCapability
from agent.core.health_policy import HealthPolicy
from agent.core.messages import (
    BCL,
    BCP,
    BCS,
    BDP,
    BDS,
    BHM,
    BMT,
    BMV,
    BRM,
    BSD,
    BSM,
    CST,
    CemTimeout,
)
from agent.core.metering import Metering
from agent.core.plant_checks import OverCurrentWatch, OverVoltageWatch
from agent.core.vehicle_data_log import VehicleDataLog


@dataclass
class SessionData:
    started_at: float = 0.0
    wall_clock_at_start: float | None = None
    state_entered_at: float = 0.0
    phase: str = ""  # step within the current state (e.g. "close", "measure")
    phase_entered_at: float = 0.0

    bhm: BHM | None = None
    brm: BRM | None = None
    bcp: BCP | None = None
    bcl: BCL | None = None
    bcs: BCS | None = None
    bsm: BSM | None = None
    bsd: BSD | None = None
    bmv: BMV | None = None  # cell voltages and temperatures, for battery-health limits
    bmt: BMT | None = None
    bmv_range_v: tuple[float, float] | None = None  # (min, max) cell of the last BMV
    # The V2G extension (docs/V2G.md): the vehicle's answer to CDP and its live status.
    bdp: BDP | None = None
    bds: BDS | None = None
    first_cdp_at: float | None = None
    v2g_negotiated: bool = False
    vehicle_data: VehicleDataLog = field(default_factory=VehicleDataLog)
    last_rx: dict[str, float] = field(default_factory=dict)
    bro_seen_at: float | None = None
    bst_seen_at: float | None = None
    first_cml_at: float | None = None

    insulation_voltage_v: float = 0.0
    insulation_requested_at: float | None = None
    insulation_warning: bool = False
    precharge_target_v: float = 0.0
    # The last output sample inside the window: (when it was sampled, volts).
    precharge_last: tuple[float, float] | None = None

    charging_started_at: float | None = None
    paused_since: float | None = None
    charged_kwh: float = 0.0  # integrated module V x I, each direction
    discharged_kwh: float = 0.0
    start_soc_pct: float | None = None
    direction: DirectionControl = field(default_factory=DirectionControl)
    # The limit that holds discharge at zero in this phase, once said (None: none).
    discharge_held: Limit | None = None
    ev_min_voltage_reached: bool = False
    # The highest pack voltage seen in this discharge phase: it bounds the terminal voltage
    # for the rest of the phase (a pack under discharge only sags), so a power limit turned
    # into amps with it holds whatever the current does next.
    discharge_peak_v: float = 0.0
    consent_given: bool = False
    owner_policy: HealthPolicy | None = None  # per session, from upstream
    # The combined (strictest) policy and the (VIN, owner policy) it was combined for.
    policy: HealthPolicy | None = None
    policy_for: tuple[str, HealthPolicy | None] | None = None
    # Energy this vehicle moved today before this session (from the ledger).
    today_discharged_kwh: float = 0.0
    today_throughput_kwh: float = 0.0
    metering: Metering = field(default_factory=Metering)
    # Health figures of the session.
    peak_abs_current_a: float = 0.0
    peak_power_w: float = 0.0
    outside_window_s: float = 0.0

    stop_message: CST = field(default_factory=CST)
    cem_timeouts: frozenset[CemTimeout] = frozenset()
    fault_emergency: bool = False
    fault_at: float | None = None
    # At the fault: the output was (or could be) live, and its |current| as last measured.
    fault_live: bool = False
    fault_current_a: float = 0.0
    reported: bool = False
    outcome_reason: str = ""
    fault_code: str = ""  # the first fault's code (its kind, for metrics and logs)
    # The report's outcome when it is not the state's ("interrupted": the agent stopped
    # with the plant already safe, before the vehicle's last messages).
    outcome_override: str = ""

    @property
    def energy_kwh(self) -> float:
        """Net energy, + = into the vehicle."""
        return self.charged_kwh - self.discharged_kwh

    @property
    def end_soc_pct(self) -> float | None:
        if self.bsd is not None:
            return self.bsd.end_soc_pct
        if self.bcs is not None:
            return self.bcs.soc_pct
        return self.start_soc_pct


@dataclass
class Actuators:
    """What the core last commanded; survives sessions (the hardware does too)."""

    module_enabled: bool = False
    voltage_v: float = 0.0
    current_a: float = 0.0
    contactors_closed: bool = False
    contactors_changed_at: float | None = None
    bleeder_on: bool = False
    last_decision_t: float | None = None
    heartbeat: int = 0
    heartbeat_at: float | None = None
    internal_error: str = ""  # set by the fail-safe path; stops the heartbeat (I15)
    # Set when a fault's safe state went unconfirmed (I15): the heartbeat stays stopped
    # until a service clear, so the safety controller holds K1/K2 open.
    heartbeat_withheld: str = ""


@dataclass
class Plant:
    """The latest measurements from the module, and when they were sampled."""

    status: ModuleStatus | None = None
    sampled_at: float | None = None  # the poll's time, not the time it was handled
    current_steady: bool = False  # the last two samples' currents agree
    link_lost_detail: str = ""
    # First sample whose K1/K2 feedback disagreed with the command (None: they agree), and
    # the time before which no sample counts (a service clear: older ones predate a repair).
    feedback_mismatch_since: float | None = None
    feedback_judged_from: float = -math.inf
    # Latest insulation result (from the IMD, or the module's own monitor), or None.
    insulation_ohm: float | None = None
    insulation_at: float | None = None
    safety_io_at: float | None = None
    safety_io_lost: str = ""
    trip_rearmed_at: float | None = None  # the safety controller's heartbeat trip re-armed
    # The module pool's latest word for this gun (a gun of a pooled pile); None: none yet.
    pool: PoolCapability | None = None
    # The output held to its command and to the voltage limits (I17, I18).
    over_current: OverCurrentWatch = field(default_factory=OverCurrentWatch)
    over_voltage: OverVoltageWatch = field(default_factory=OverVoltageWatch)
