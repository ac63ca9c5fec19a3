"""GB/T 27930-2015 messages in physical units, free of any wire format.

These dataclasses are the vocabulary shared by the sans-I/O core, the CAN driver
(`drivers.gbt27930`, which turns them into frames and back) and the BMS simulator.

Sign convention (the project's, not the standard's): a positive current is energy
flowing *into the vehicle*. GB/T 27930-2015 §4.5 counts the other way; the codec
converts at the edge. Limits that are magnitudes (BCP max current, CML max/min
current) are stored as non-negative amps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum


class Ready(IntEnum):
    """BRO/CRO byte 1 (SPN 2829/2830)."""

    NOT_READY = 0x00
    READY = 0xAA
    INVALID = 0xFF


class ChargeMode(IntEnum):
    """BCL byte 5 (SPN 3074)."""

    CONSTANT_VOLTAGE = 0x01
    CONSTANT_CURRENT = 0x02


class Level(IntEnum):
    """A 2-bit BSM level field: 00 normal, 01 too high, 10 too low; 11 is not defined by
    GB/T 27930-2015 for these fields and is read as abnormal (a safety status that cannot
    be confirmed normal is not normal)."""

    NORMAL = 0
    HIGH = 1
    LOW = 2
    UNDEFINED = 3


class BmsStopReason(Enum):
    """BST byte 1 (SPN 3511)."""

    SOC_REACHED = "soc_reached"
    TOTAL_VOLTAGE_REACHED = "total_voltage_reached"
    CELL_VOLTAGE_REACHED = "cell_voltage_reached"
    CHARGER_STOPPED = "charger_stopped"


class BmsFault(Enum):
    """BST bytes 2-3 (SPN 3512)."""

    INSULATION = "insulation"
    CONNECTOR_OVER_TEMPERATURE = "connector_over_temperature"
    BMS_OVER_TEMPERATURE = "bms_over_temperature"
    CONNECTOR = "connector"
    PACK_OVER_TEMPERATURE = "pack_over_temperature"
    HV_RELAY = "hv_relay"
    DETECTION_POINT_2 = "detection_point_2"
    OTHER = "other"


class BmsError(Enum):
    """BST byte 4 (SPN 3513)."""

    OVER_CURRENT = "over_current"
    VOLTAGE_ABNORMAL = "voltage_abnormal"


class ChargerStopReason(Enum):
    """CST byte 1 (SPN 3521)."""

    CONDITION_REACHED = "condition_reached"
    MANUAL = "manual"
    FAULT = "fault"
    BMS_STOPPED = "bms_stopped"


class ChargerFault(Enum):
    """CST bytes 2-3 (SPN 3522)."""

    OVER_TEMPERATURE = "over_temperature"
    CONNECTOR = "connector"
    INTERNAL_OVER_TEMPERATURE = "internal_over_temperature"
    ENERGY_UNAVAILABLE = "energy_unavailable"
    EMERGENCY_STOP = "emergency_stop"
    OTHER = "other"


class ChargerError(Enum):
    """CST byte 4 (SPN 3523)."""

    CURRENT_MISMATCH = "current_mismatch"
    VOLTAGE_ABNORMAL = "voltage_abnormal"


class BemTimeout(Enum):
    """BEM: which charger message the BMS timed out on (SPN 3901-3907)."""

    CRM_00 = "crm_00"
    CRM_AA = "crm_aa"
    CML_CTS = "cml_cts"
    CRO = "cro"
    CCS = "ccs"
    CST = "cst"
    CSD = "csd"


class CemTimeout(Enum):
    """CEM: which BMS message the charger timed out on (SPN 3921-3927)."""

    BRM = "brm"
    BCP = "bcp"
    BRO = "bro"
    BCS = "bcs"
    BCL = "bcl"
    BST = "bst"
    BSD = "bsd"


@dataclass(frozen=True, slots=True)
class CHM:
    """Charger handshake; version V1.1 is (1, 1, 0)."""

    version: tuple[int, int, int] = (1, 1, 0)


@dataclass(frozen=True, slots=True)
class BHM:
    """Vehicle handshake: max permissible total charging voltage (insulation test limit)."""

    max_charge_voltage_v: float


@dataclass(frozen=True, slots=True)
class CRM:
    """Charger recognition: recognized=False is 0x00, True is 0xAA."""

    recognized: bool
    charger_number: int = 0
    region: str = ""


@dataclass(frozen=True, slots=True)
class BRM:
    """BMS and vehicle identification (multi-packet, 49 bytes with software version).

    Every field is information: the charger acts on none of them. Optional fields the
    vehicle leaves at 0xFF, and fields that do not decode (a manufacturer that is not
    ASCII, a month 13), decode as None / "" / b""; `raw` keeps the bytes as received.
    """

    version: tuple[int, int, int]
    battery_type: int
    rated_capacity_ah: float
    rated_voltage_v: float
    manufacturer: str = ""
    pack_serial: int | None = None
    production_date: tuple[int, int, int] | None = None  # (year, month, day)
    cycle_count: int | None = None
    leased: bool | None = None
    vin: str = ""
    software_version: bytes = b""
    raw: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class BCP:
    """Battery charging parameters (multi-packet, 13 bytes)."""

    max_cell_voltage_v: float
    max_charge_current_a: float  # magnitude
    nominal_energy_kwh: float
    max_total_voltage_v: float
    max_temperature_c: float
    soc_pct: float
    battery_voltage_v: float


@dataclass(frozen=True, slots=True)
class CTS:
    """Charger time sync: (year, month, day, hour, minute, second), BCD on the wire.

    None: no time (all bytes 0xFF, as real chargers send, or not BCD); `raw` keeps them.
    """

    timestamp: tuple[int, int, int, int, int, int] | None
    raw: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class CML:
    """Charger max/min output; currents are magnitudes of charging current."""

    max_voltage_v: float
    min_voltage_v: float
    max_current_a: float
    min_current_a: float


@dataclass(frozen=True, slots=True)
class BRO:
    ready: Ready


@dataclass(frozen=True, slots=True)
class CRO:
    ready: Ready


@dataclass(frozen=True, slots=True)
class BCL:
    """Battery charging demand; current_demand_a is signed, + = into the vehicle."""

    voltage_demand_v: float
    current_demand_a: float
    mode: ChargeMode


@dataclass(frozen=True, slots=True)
class BCS:
    """Battery charging status (multi-packet, 9 bytes); measured_current_a is signed, + = in."""

    measured_voltage_v: float
    measured_current_a: float
    max_cell_voltage_v: float
    max_cell_group: int
    soc_pct: float
    remaining_min: int


@dataclass(frozen=True, slots=True)
class CCS:
    """Charger charging status; output_current_a is signed, + = into the vehicle."""

    output_voltage_v: float
    output_current_a: float
    charging_min: int
    permitted: bool


@dataclass(frozen=True, slots=True)
class BSM:
    """Battery status; charge_permitted=False with no abnormal flag means pause."""

    max_cell_voltage_index: int
    max_temperature_c: float
    max_temperature_index: int
    min_temperature_c: float
    min_temperature_index: int
    cell_voltage: Level = Level.NORMAL
    soc: Level = Level.NORMAL
    over_current: bool = False
    over_temperature: bool = False
    insulation_fault: bool = False
    connector_fault: bool = False
    charge_permitted: bool = True

    def abnormal(self) -> bool:
        """Any flag that GB/T 27930 says must stop charging."""
        return (
            self.cell_voltage is not Level.NORMAL
            or self.soc is not Level.NORMAL
            or self.over_current
            or self.over_temperature
            or self.insulation_fault
            or self.connector_fault
        )


@dataclass(frozen=True, slots=True)
class BMV:
    """Cell voltages (multi-packet, 2 bytes a cell): volts, None where the BMS sent 0xFFFF
    (not available), and each cell's group number."""

    cell_voltages_v: tuple[float | None, ...]
    groups: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BMT:
    """Battery temperatures (multi-packet, 1 byte a sensor): °C, None for 0xFF."""

    temperatures_c: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class BSP:
    """Reserved battery parameters (GB/T 27930-2015 leaves the content to the BMS)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class BST:
    reasons: frozenset[BmsStopReason] = field(default_factory=frozenset)
    faults: frozenset[BmsFault] = field(default_factory=frozenset)
    errors: frozenset[BmsError] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class CST:
    reasons: frozenset[ChargerStopReason] = field(default_factory=frozenset)
    faults: frozenset[ChargerFault] = field(default_factory=frozenset)
    errors: frozenset[ChargerError] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class BSD:
    """BMS statistics at the end of a session."""

    end_soc_pct: float
    min_cell_voltage_v: float
    max_cell_voltage_v: float
    min_temperature_c: float
    max_temperature_c: float


@dataclass(frozen=True, slots=True)
class CSD:
    """Charger statistics at the end of a session."""

    charging_min: int
    energy_kwh: float
    charger_number: int = 0


@dataclass(frozen=True, slots=True)
class BEM:
    timeouts: frozenset[BemTimeout] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class CEM:
    timeouts: frozenset[CemTimeout] = field(default_factory=frozenset)


# ---- the project's V2G extension of GB/T 27930-2015 (non-normative; docs/V2G.md) ------
# No public layout exists for discharge over the 2015 message set. These three messages are
# this project's, shaped like GB/T 27930.2-2024's function negotiation and parameter phase and
# carrying ISO 15118-20 Dynamic BPT's fields. Their PGNs are configuration.


@dataclass(frozen=True, slots=True)
class CDP:
    """Charger discharge parameters, sent with CML: the charger's V2G offer.

    offered=False tells a V2G vehicle that this gun (or this session) will not discharge.
    Magnitudes; the DC input range's upper end is CML's max voltage."""

    offered: bool
    max_discharge_current_a: float
    max_discharge_power_w: float
    min_input_voltage_v: float
    version: int = 1


@dataclass(frozen=True, slots=True)
class BDP:
    """BMS discharge parameters: the vehicle's answer to CDP (multi-packet, 11 bytes).

    consent: the owner allows discharge in this session. energy_kwh: the V2X energy window,
    how many kWh the vehicle may give in this session (above its SOC floor)."""

    consent: bool
    max_discharge_current_a: float
    max_discharge_power_w: float
    min_discharge_voltage_v: float
    soc_floor_pct: float
    energy_kwh: float


@dataclass(frozen=True, slots=True)
class BDS:
    """BMS discharge status during energy transfer (250 ms): live consent and limits.

    A BDS with consent=False withdraws consent at once; remaining_energy_kwh is what is left
    of the V2X energy window."""

    consent: bool
    max_discharge_current_a: float
    remaining_energy_kwh: float
    soc_floor_pct: float


ChargerMessage = CHM | CRM | CTS | CML | CRO | CCS | CST | CSD | CEM | CDP
BmsMessage = (BHM | BRM | BCP | BRO | BCL | BCS | BSM | BMV | BMT | BSP | BST | BSD | BEM
              | BDP | BDS)
GbtMessage = ChargerMessage | BmsMessage
