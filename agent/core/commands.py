"""Commands the core emits; the runtime executes them through the drivers."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.core.messages import ChargerMessage


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send one message to the vehicle (the driver segments multi-packet ones)."""

    message: ChargerMessage


@dataclass(frozen=True, slots=True)
class SetModuleOutput:
    """Power-module setpoint. current_a is signed, + = into the vehicle.

    enabled=False turns the module output off regardless of the setpoints.
    """

    enabled: bool
    voltage_v: float
    current_a: float


@dataclass(frozen=True, slots=True)
class SetContactors:
    """K1/K2 (DC+ / DC-) between the module and the gun."""

    closed: bool


@dataclass(frozen=True, slots=True)
class SetBleeder:
    """The discharge (bleeder) resistor across the gun output."""

    on: bool


@dataclass(frozen=True, slots=True)
class StartInsulationTest:
    """Ask the insulation monitor for a measurement at the applied test voltage."""

    test_voltage_v: float


@dataclass(frozen=True, slots=True)
class KickSafetyWatchdog:
    """Heartbeat to the safety controller: if it stops, the hardware opens K1/K2.

    counter increments every kick so the controller can tell a live agent from a
    stuck register.
    """

    counter: int


@dataclass(frozen=True, slots=True)
class ResetSafetyTrip:
    """Re-arm the safety controller's latched trip (the board refuses while the E-stop is
    pressed): after its heartbeat trip once the agent lives again and nothing is at stake,
    or when a service technician or the central system clears the faults."""

    reason: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """Reporting only: the session moved between states."""

    t: float
    source: str
    dest: str
    reason: str


@dataclass(frozen=True, slots=True)
class CurrentDecided:
    """Reporting only: what the arbiter commanded and which limit bound it."""

    t: float
    current_a: float
    voltage_v: float
    bound_by: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Reporting only: something an operator should see (warning, refusal, rejection)."""

    t: float
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class LedgerInterval:
    """A closed metering interval (quarter hour, direction change or session end): the runtime
    writes it to the durable ledger before it reports anything. Energies are meter counter
    differences in kWh; wall times are POSIX seconds (session clock where none is known)."""

    seq: int
    start_wall: float
    end_wall: float
    direction: str
    to_vehicle_kwh: float
    from_vehicle_kwh: float
    meter_to_vehicle_kwh: float
    meter_from_vehicle_kwh: float
    closed_by: str


@dataclass(frozen=True, slots=True)
class LedgerCheckpoint:
    """Where a running session's metering stands: the runtime keeps the latest one durable
    (one row per session, replaced), so a session killed at any moment (kill -9, power loss)
    is closed at the next start from it: its open interval up to `last_*`, its energy so far.
    Emitted with the first reading and then at least every CHECKPOINT_PERIOD or
    CHECKPOINT_ENERGY_KWH of metered energy."""

    wall: float  # when `last_*` was read
    seq: int  # the seq the open interval will have
    interval_open: bool  # False: no interval is open (not transferring energy)
    interval_start_wall: float
    interval_direction: str
    interval_start_to_kwh: float  # meter counters at the open interval's start
    interval_start_from_kwh: float
    last_to_kwh: float  # meter counters now
    last_from_kwh: float
    to_vehicle_kwh: float  # metered for the session so far (both ways)
    from_vehicle_kwh: float
    vin: str = ""
    start_wall: float | None = None
    start_soc_pct: float | None = None
    soc_pct: float | None = None
    peak_power_w: float = 0.0


@dataclass(frozen=True, slots=True)
class SessionReport:
    """Reporting only: emitted once when a session reaches finished or fault."""

    t: float
    outcome: str
    reason: str
    energy_kwh: float
    duration_s: float
    start_soc_pct: float | None
    end_soc_pct: float | None
    # What the vehicle sent that was rejected, unknown or odd, and driver problems:
    # "rejected BCS": 3, "unknown_pgn PGN 0x1800": 12, "oddity BRM.manufacturer": 40.
    vehicle_data: dict[str, int] = field(default_factory=dict)
    # Settlement and battery-health figures (V2G): metered energy both ways (None: no meter),
    # what the module measured both ways, and the health figures.
    vin: str = ""
    # What made the metering incomplete ("meter silent", "counters went backwards"), or "".
    metering_note: str = ""
    start_wall: float | None = None
    metered_to_vehicle_kwh: float | None = None
    metered_from_vehicle_kwh: float | None = None
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    peak_power_w: float = 0.0
    health: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetMatrix:
    """The contactor-matrix board: which guns module group `group` (its index in the
    pile's configured order) is to be closed to, as a bit mask (bit g-1: gun g)."""

    group: int
    closed_guns: int


Command = (
    Transmit
    | SetModuleOutput
    | SetContactors
    | SetBleeder
    | StartInsulationTest
    | KickSafetyWatchdog
    | ResetSafetyTrip
    | StateChanged
    | CurrentDecided
    | Notice
    | LedgerInterval
    | LedgerCheckpoint
    | SessionReport
    | SetMatrix
)
