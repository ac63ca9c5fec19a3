"""Events the core consumes. Every event carries `t`, seconds on the session clock.

The core never reads a clock: time only moves when an event says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.core.health_policy import HealthPolicy
from agent.core.messages import BmsMessage


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has advanced; lets the core run periodic sends, ramps and watchdogs. The
    runtime ticks at the session's `next_deadline()`, and at once after an event."""

    t: float


@dataclass(frozen=True, slots=True)
class VehicleConnected:
    """CC1 / detection point 1 reads connected and the gun is locked (GB/T 18487.1 B.3).

    wall_clock_s (POSIX seconds), when known, lets the core fill CTS time sync.
    """

    t: float
    wall_clock_s: float | None = None


@dataclass(frozen=True, slots=True)
class VehicleDisconnected:
    t: float


@dataclass(frozen=True, slots=True)
class VehicleMessage:
    """A complete, decoded message from the BMS (TP reassembly already done)."""

    t: float
    message: BmsMessage


@dataclass(frozen=True, slots=True)
class VehicleDataNotice:
    """What the vehicle sent that was not a clean message (the driver decided nothing):
    kind "rejected" (a field the charger acts on was out of range; the message was
    dropped, so its watchdog runs on), "unknown_pgn" (not a GB/T 27930-2015 message), or
    "oddity" (an informational field that did not decode, or reserved bits not 1; the
    message was used). raw_hex is the payload as received."""

    t: float
    kind: str
    message: str
    field: str
    raw_hex: str
    detail: str


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    """One poll of the power module and the gun's DC measurement.

    output_voltage_v is measured on the module side of K1/K2, gun_voltage_v on the
    vehicle side (it shows the battery once the vehicle has closed K5/K6).
    output_current_a is signed, + = into the vehicle.
    contactors_closed: both poles (K1 and K2) read closed. contactors_any_closed: at least
    one does (None: the module reports one feedback for both). A welded K1 alone reads
    "not closed" but "any closed": commanded open, that is a weld.
    """

    t: float
    output_voltage_v: float
    output_current_a: float
    gun_voltage_v: float
    temperature_c: float
    contactors_closed: bool
    fault_word: int
    insulation_ohm: float | None = None
    capability_current_a: float | None = None
    capability_power_w: float | None = None
    contactors_any_closed: bool | None = None
    # What the stack can take back from the vehicle (inverter mode); None: not reported,
    # which allows no discharge.
    reverse_capability_current_a: float | None = None
    reverse_capability_power_w: float | None = None
    # AC grid frequency at the bidirectional stage (None: not reported): frequency response.
    grid_frequency_hz: float | None = None
    # AC-side active power, + = drawn from the grid (towards the vehicle); None: unknown.
    ac_power_w: float | None = None

    @property
    def any_contactor_closed(self) -> bool:
        return self.contactors_closed if self.contactors_any_closed is None \
            else self.contactors_any_closed or self.contactors_closed


@dataclass(frozen=True, slots=True)
class ModuleLinkLost:
    """The power-module bus failed a request (timeout, connection refused, CRC)."""

    t: float
    detail: str


@dataclass(frozen=True, slots=True)
class DriverError:
    """A driver met input it could not use (malformed frame, TP abort, bus error).

    fatal=True means the link itself is unusable and the session must stop.
    """

    t: float
    source: str
    detail: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class StopRequested:
    """An operator (or the simulator's scenario) asks the session to stop normally."""

    t: float
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class ShutdownDeadline:
    """The agent is stopping and its stop budget is spent: a session whose orderly stop
    (StopRequested) has not finished ends now, outputs off and K1/K2 open, and is reported
    with `reason` (docs/OPERATIONS.md)."""

    t: float
    reason: str


@dataclass(frozen=True, slots=True)
class TemperatureReading:
    """One temperature sensor; NaN when the driver could not turn the reading into °C.

    sensor names: "connector_dc_plus", "connector_dc_minus" (two PT1000-class sensors in
    the gun), "cable", "module", "ambient". raw_ohm is the PT1000 resistance when known,
    so the core can tell an open (very high) from a short (very low) sensor.
    """

    t: float
    sensor: str
    temperature_c: float
    raw_ohm: float | None = None


@dataclass(frozen=True, slots=True)
class SafetyInputs:
    """Digital inputs of the pile's I/O board: E-stop button, cabinet door, gun lock."""

    t: float
    emergency_stop: bool  # True = pressed (the input is normally closed in hardware)
    door_open: bool
    gun_locked: bool = True
    # The safety controller opened K1/K2 on its own (heartbeat lost or E-stop loop).
    safety_relay_tripped: bool = False
    # ... and it was its heartbeat watchdog that tripped it (the agent was dead or hung),
    # not the E-stop loop.
    trip_by_heartbeat: bool = False
    # Detection point 1 (GB/T 18487.1 Annex B), volts; None where the board has no such
    # input or the reading is unusable.
    cc1_voltage_v: float | None = None


@dataclass(frozen=True, slots=True)
class InsulationStatus:
    """The insulation monitoring device (IMD): latest measurement and device health."""

    t: float
    resistance_ohm: float | None  # None while no valid measurement is available
    measurement_done: bool
    device_fault: bool = False


@dataclass(frozen=True, slots=True)
class SafetyIoLost:
    """The I/O board (temperatures, E-stop, door, IMD bus) stopped answering."""

    t: float
    detail: str


@dataclass(frozen=True, slots=True)
class FaultsCleared:
    """A service technician (or the self-test) clears latched faults."""

    t: float
    by: str


@dataclass(frozen=True, slots=True)
class UpstreamLimit:
    """A limit or setpoint from upstream (OCPP central system, site EMS).

    Signed current in A (+ = into the vehicle); valid until `expires_at` (session
    clock). Positive: a charge limit. Negative: an authorised discharge setpoint of that
    magnitude (the only way discharge is authorised; docs/V2G.md). NaN, out-of-range,
    stale or too-frequent limits are rejected by the core.
    """

    t: float
    source: str
    current_a: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class UpstreamSetpoint:
    """One upstream source's offer (OCPP 2.1 charging-schedule period, SunSpec WSet, a
    local schedule), signed + = into the vehicle, in A or W, valid until `expires_at`.

    setpoint: the power or current asked for (None: limits only). charge_limit and
    discharge_limit: magnitudes (inf: none given). freq_watt_curve: OCPP 2.1
    v2xFreqWattCurve points (Hz, value), added to `baseline` (LocalFrequency mode).
    Vetted by `agent/core/upstream.py`; the reason of a refusal is said in a Notice.
    """

    t: float
    source: str
    expires_at: float
    setpoint: float | None = None
    charge_limit: float = math.inf
    discharge_limit: float = math.inf
    unit: str = "A"
    freq_watt_curve: tuple[tuple[float, float], ...] = ()
    baseline: float = 0.0


@dataclass(frozen=True, slots=True)
class UpstreamCleared:
    """A source withdraws its offer (OCPP ClearChargingProfile, the EMS disabling WSet)."""

    t: float
    source: str


@dataclass(frozen=True, slots=True)
class DroopSet:
    """Frequency droop settings from upstream (SunSpec model 711): on or off, the dead band
    each side of nominal (Hz) and the droop (per unit). Vetted like the configured droop."""

    t: float
    source: str
    enabled: bool
    dead_band_hz: float
    droop: float


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One poll of the gun's DC billing meter. Energies are the meter's own counters (they
    only grow); current and power are signed, + = into the vehicle. Billing energy comes
    from these counters, never from integrated setpoints."""

    t: float
    voltage_v: float
    current_a: float
    power_w: float
    to_vehicle_kwh: float
    from_vehicle_kwh: float


@dataclass(frozen=True, slots=True)
class MeterLost:
    """The meter stopped answering: energy is still counted by the meter itself, but the
    cross-check cannot run and the record is marked."""

    t: float
    detail: str


@dataclass(frozen=True, slots=True)
class OwnerPolicy:
    """The owner's battery-health limits for this session (from upstream or the app)."""

    t: float
    policy: HealthPolicy
    source: str = "upstream"


@dataclass(frozen=True, slots=True)
class EnergyHistory:
    """What this vehicle moved earlier today (the runtime reads it from the ledger once the
    vehicle is identified): for the per-day battery-health limits."""

    t: float
    vin: str
    discharged_kwh: float
    throughput_kwh: float


@dataclass(frozen=True, slots=True)
class PoolCapability:
    """What the pile's module pool gives this gun now (agent/core/pile.py): the groups
    whose matrix contactor reads closed to it, its share of the pile rating and of the
    grid (or export) limit. 0 while a group is to leave the gun (held until <= 5 A).

    The power share is of one direction's budget (the grid limit's for charging, the
    export limit's for discharging), the direction the gun transferred in when the pool
    planned: in the other it gives no power."""

    t: float
    current_a: float
    power_w: float
    discharging: bool


@dataclass(frozen=True, slots=True)
class MatrixStatus:
    """One read of the contactor-matrix board: per module group (in the configured
    order), the guns whose matrix contactor reads closed (bit g-1 for gun g), and the
    names of the group's active faults ("": healthy; the driver names the bits)."""

    t: float
    feedback: tuple[int, ...]
    faults: tuple[str, ...]
    current_a: tuple[float, ...] = ()  # each group's own output current, when reported


@dataclass(frozen=True, slots=True)
class MatrixLost:
    """The matrix board's bus failed a request: every group counts as unavailable."""

    t: float
    detail: str


Event = (
    Tick
    | VehicleConnected
    | VehicleDisconnected
    | VehicleMessage
    | VehicleDataNotice
    | ModuleStatus
    | ModuleLinkLost
    | DriverError
    | StopRequested
    | ShutdownDeadline
    | TemperatureReading
    | SafetyInputs
    | InsulationStatus
    | SafetyIoLost
    | FaultsCleared
    | UpstreamLimit
    | UpstreamSetpoint
    | UpstreamCleared
    | DroopSet
    | OwnerPolicy
    | EnergyHistory
    | MeterReading
    | MeterLost
    | PoolCapability
)
