"""The world the stateful safety suite drives the core in: a small plant and an EV.

Kept independent of `hil/` (its own few lines of physics) so the suite checks the core
against a second, simpler model, and runs fast enough for hundreds of examples.
The EV answers the charger cooperatively with parameters drawn per plug-in; the
suite's rules then make it (and the plant) misbehave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.core.commands import (
    Command,
    SetBleeder,
    SetContactors,
    SetModuleOutput,
    StartInsulationTest,
    Transmit,
)
from agent.core.events import ModuleStatus
from agent.core.messages import (
    BCL,
    BCP,
    BCS,
    BDP,
    BDS,
    BHM,
    BRM,
    BRO,
    CDP,
    CHM,
    CML,
    CRM,
    CRO,
    BmsMessage,
    ChargeMode,
    Ready,
)
from drivers.power_module.codec import decode_status
from drivers.power_module.regmap import load_register_map

GBT_MAX_CHARGE_A = 400.0
VIN = "LSAFETYSUITE00001"


@dataclass
class EvParams:
    bhm_max_v: float = 500.0
    bcp_max_a: float = 200.0
    bcp_max_v: float = 420.0
    battery_v: float = 360.0
    reported_v: float = 360.0  # what BCP claims (a liar differs from battery_v)
    demand_a: float = 150.0
    demand_v: float = 410.0  # BCL voltage demand: below BCP's max (CV), or near it (CC)
    # The one message this EV never sends (its awaited-message watchdog must fire):
    # "BHM", "BRM", "BCP", "BRO", "BCL", "BCS", or "BRO_AA" (BRO stays 0x00, not ready).
    mute: str = ""
    # How long after its first BRO(0xAA) the car's K5/K6 carry the battery to the gun: 0
    # closes them with the message (GB/T 27930-2015: ready once closed); a contactor's
    # operate time, or a car that says ready as it commands them, gives a delay.
    k56_delay_s: float = 0.0
    # V2G (the project's GB/T 27930 extension, docs/V2G.md). v2g=False is a 2015 car that
    # never answers the charger's CDP. bdp_delay_s: how long after the offer it answers
    # (past V2G_ANSWER = 5 s the answer must be ignored: the session is charge-only).
    v2g: bool = False
    bdp_delay_s: float = 0.0
    bdp_consent: bool = True
    discharge_max_a: float = 150.0
    discharge_max_w: float = 60_000.0
    discharge_min_v: float = 300.0
    soc_floor_pct: float = 30.0
    window_kwh: float = 10.0
    soc_pct: float = 50.0
    capacity_ah: float = 150.0  # BRM rated capacity: the C-rate's base
    temperature_c: float = 30.0  # BSM highest battery temperature (lowest: 2 °C less)


@dataclass
class Ev:
    p: EvParams = field(default_factory=EvParams)
    talking: bool = True  # False: CAN silence
    send_bcl: bool = True
    send_bcs: bool = True
    contactors_closed: bool = False
    charging: bool = False
    bsm_permit: bool = True
    # A BSM alarm the car raises: the field, and its 2-bit value (01 set, 10 untrusted,
    # 11 undefined): every non-normal encoding must stop the charge.
    bsm_alarm: str = ""
    bsm_alarm_bits: int = 0b01
    # V2G, live: the owner's consent in BDS, whether BDS is sent, energy given so far.
    consent: bool = True
    send_bds: bool = True
    # BDS narrows the BDP's limits live (a warm pack, the owner's app): current, SOC floor.
    bds_max_a: float = math.inf
    bds_floor_pct: float = 0.0
    soc: float = 50.0
    energy_out_kwh: float = 0.0
    offered_at: float | None = None  # when this car first heard CDP(offered)
    ready_at: float | None = None  # when it first sent BRO(0xAA)
    _last: dict[str, float] = field(default_factory=dict)
    _heard: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.consent, self.soc = self.p.bdp_consent, self.p.soc_pct

    def hear(self, message: object, t: float = 0.0) -> None:
        name = type(message).__name__
        if isinstance(message, CRM):
            name += "_AA" if message.recognized else "_00"
        if isinstance(message, CDP) and message.offered and self.offered_at is None:
            self.offered_at = t
        if isinstance(message, CRO) and message.ready is Ready.READY:
            self.charging = True
        self._heard.add(name)

    def _due(self, name: str, period: float, t: float) -> bool:
        if t - self._last.get(name, -1e9) >= period - 1e-9:
            self._last[name] = t
            return True
        return False

    def speak(self, t: float) -> list[BmsMessage | bytes]:
        """What the car sends: messages, and BSM as its raw bytes (its alarm encodings are
        what the charger's decoder must get right)."""
        if not self.talking:
            return []
        out: list[BmsMessage | bytes] = []
        h, p = self._heard, self.p
        if "CHM" in h and "CRM_00" not in h and self._due("BHM", 0.25, t):
            out.append(BHM(p.bhm_max_v))
        if "CRM_00" in h and "CRM_AA" not in h and self._due("BRM", 0.25, t):
            out.append(BRM((1, 1, 0), 3, p.capacity_ah, 350.0, vin=VIN))
        if "CRM_AA" in h and "CML" not in h and self._due("BCP", 0.5, t):
            out.append(BCP(4.2, p.bcp_max_a, 60.0, p.bcp_max_v, 55.0, self.reported_soc(),
                           p.reported_v))
        if "CML" in h and not self.charging and self._due("BRO", 0.25, t):
            # A V2G car answers the offer (BDP) before it says ready; a late answer is
            # still sent, and BRO(0xAA) waits for it.
            answering = self.answers_v2g()
            answered = answering and t - (self.offered_at or t) >= p.bdp_delay_s
            if answered:
                out.append(BDP(self.consent, p.discharge_max_a, p.discharge_max_w,
                               p.discharge_min_v, p.soc_floor_pct, p.window_kwh))
            ready = p.mute != "BRO_AA" and (answered or not answering)
            if not ready:
                self.ready_at, self.contactors_closed = None, False
            elif self.ready_at is None:
                self.ready_at = t
            out.append(BRO(Ready.READY if ready else Ready.NOT_READY))
        if self.ready_at is not None and not self.charging \
                and t - self.ready_at >= p.k56_delay_s - 1e-9:
            self.contactors_closed = True
        if self.charging:
            if self.send_bcl and self._due("BCL", 0.05, t):
                # GB/T 27930-2015 §4.5 carries at most 400 A of charging demand.
                out.append(BCL(p.demand_v, min(p.demand_a, GBT_MAX_CHARGE_A),
                               ChargeMode.CONSTANT_CURRENT))
            if self.send_bcs and self._due("BCS", 0.25, t):
                out.append(BCS(p.battery_v, 0.0, 4.0, 1, self.reported_soc(), 30))
            if self._due("BSM", 0.25, t):
                out.append(bsm_bytes(self.bsm_permit, self.bsm_alarm, self.bsm_alarm_bits,
                                     p.temperature_c))
            if self.answers_v2g() and self.send_bds and self._due("BDS", 0.25, t):
                out.append(BDS(self.consent, min(p.discharge_max_a, self.bds_max_a),
                               self.remaining_kwh(), max(p.soc_floor_pct, self.bds_floor_pct)))
        return [m for m in out if type(m).__name__ != p.mute]

    def answers_v2g(self) -> bool:
        return self.p.v2g and self.offered_at is not None

    def reported_soc(self) -> float:
        """BCS carries SOC in whole percent (GB/T 27930-2015 SPN 3078)."""
        return float(min(max(round(self.soc), 0), 100))

    def remaining_kwh(self) -> float:
        """What is left of the V2X energy window, as BDS carries it (0.1 kWh)."""
        return math.floor(max(self.p.window_kwh - self.energy_out_kwh, 0.0) * 10) / 10


# GB/T 27930-2015 BSM (PGN 0x1300) byte 6: cell voltage, SOC, over-current,
# over-temperature; byte 7: insulation, connector, charge permitted, reserved (11); two bits
# each, least significant first. Written here from the standard, not through the codec.
BSM_ALARMS = {"cell_voltage": (5, 0), "soc": (5, 2), "over_current": (5, 4),
              "over_temperature": (5, 6), "insulation": (6, 0), "connector": (6, 2)}


def bsm_bytes(permit: bool, alarm: str = "", bits: int = 0b01, temp_c: float = 30.0) -> bytes:
    """Byte 1: highest battery temperature, byte 3: lowest (1 °C/bit, -50 °C offset)."""
    hot = round(temp_c)
    data = bytearray([0, hot + 50, 0, hot - 2 + 50, 1, 0, 0b11 << 6 | (0b01 if permit else 0) << 4])
    if alarm:
        byte, shift = BSM_ALARMS[alarm]
        data[byte] |= bits << shift
    return bytes(data)


BATTERY_OHM = 0.05  # the battery's internal resistance as the plant sees it
REGMAP = load_register_map()


@dataclass
class PlantModel:
    enabled: bool = False
    set_v: float = 0.0
    set_a: float = 0.0
    k12_cmd: bool = False
    welded: bool = False
    bleeder: bool = False
    current_a: float = 0.0
    out_v: float = 0.0
    capability_a: float = 300.0  # a module stack may outrate the gun and cable
    # Reverse (inverter) capability: what the stack can take from the vehicle now.
    reverse_a: float = 300.0
    reverse_w: float = 200_000.0
    insulation_ohm: float = 5e6
    insulation_ready_at: float | None = None
    fault_word: int = 0
    temperature_c: float = 35.0
    # Ways the plant fails the core must notice: a contactor that will not close, a
    # current loop that follows no decrease, an IMD that never answers, a voltage offset
    # that keeps the precharge gap out of its 1-10 V window.
    stuck_open: bool = False
    current_stuck: bool = False
    imd_dead: bool = False
    offset_v: float = 0.0
    # The output reaches only this fraction of its voltage setpoint (a weak module), and
    # follows it with this time constant (a slow one).
    output_fraction: float = 1.0
    voltage_tau_s: float = 0.02
    # Welded poles: bit 0 K1, bit 1 K2 (`welded` = both).
    welded_poles: int = 0
    # A broken output unit (issue 24): voltage sensors that read this much high (I17), a
    # current loop that runs this far past its setpoint and its own capability (I18).
    reads_high_v: float = 0.0
    overshoot_a: float = 0.0

    @property
    def poles(self) -> int:
        """Mirror contacts, a bit per pole."""
        commanded = 0b11 if self.k12_cmd and not self.stuck_open else 0
        return commanded | (0b11 if self.welded else self.welded_poles)

    @property
    def k12(self) -> bool:
        """Both poles closed: the only way current flows."""
        return self.poles == 0b11

    def apply(self, c: Command, t: float) -> None:
        match c:
            case SetModuleOutput():
                self.enabled, self.set_v, self.set_a = c.enabled, c.voltage_v, c.current_a
            case SetContactors(closed=closed):
                self.k12_cmd = closed
            case SetBleeder(on=on):
                self.bleeder = on
            case StartInsulationTest():
                self.insulation_ready_at = t + 0.5

    def step(self, dt: float, ev: Ev) -> None:
        loaded = self.k12 and ev.contactors_closed
        before = self.current_a
        battery_v = ev.p.battery_v
        if self.enabled and loaded and self.set_a >= 0.0:
            # CC up to the setpoint, CV at the voltage setpoint: I = (V_set - V_batt) / R.
            cv_a = max((self.set_v - battery_v) / BATTERY_OHM, 0.0)
            target = min(self.set_a, self.capability_a, cv_a) + self.overshoot_a
            self.current_a += (target - self.current_a) * min(1.0, dt / 0.05)
            self.current_a = min(self.current_a, min(self.set_a, self.capability_a)
                                 + self.overshoot_a)
        elif self.enabled and loaded:
            # Inverter mode: current drawn from the pack up to the setpoint's magnitude, and
            # only while the pack stays above the voltage floor (the setpoint voltage).
            floor_a = max((battery_v - self.set_v) / BATTERY_OHM, 0.0)
            target = -min(-self.set_a, self.reverse_a, floor_a)
            self.current_a += (target - self.current_a) * min(1.0, dt / 0.05)
            self.current_a = max(self.current_a, self.set_a, -self.reverse_a)
        else:
            self.current_a = 0.0 if not loaded else self.current_a * max(0.0, 1 - dt / 0.05)
        if loaded and self.current_stuck and abs(self.current_a) < abs(before):
            self.current_a = before  # follows a rise of magnitude, never a fall
        if loaded:
            self.out_v = battery_v + BATTERY_OHM * self.current_a
            # The pack: SOC and the energy it gave (the V2X energy window).
            ev.soc += self.current_a * dt / 3600.0 / ev.p.capacity_ah * 100.0
            if self.current_a < 0.0:
                ev.energy_out_kwh -= self.current_a * self.out_v * dt / 3.6e6
        elif self.enabled:
            target_v = self.set_v * self.output_fraction + self.offset_v
            self.out_v += (target_v - self.out_v) * min(1.0, dt / self.voltage_tau_s)
        else:
            self.out_v *= math.exp(-dt / (0.1 if self.bleeder else 0.5))

    def gun_v(self, ev: Ev) -> float:
        if ev.contactors_closed:
            return ev.p.battery_v + BATTERY_OHM * self.current_a
        return self.out_v if self.k12 else 0.0

    def read_voltage_v(self, ev: Ev) -> float:
        """The higher of the two voltages the module's sensors read now (as written to its
        registers: they saturate at the register's end)."""
        return min(max(self.out_v, self.gun_v(ev)) + self.reads_high_v,
                   REGMAP["output_voltage"].maximum)

    def status(self, t: float, ev: Ev) -> ModuleStatus:
        """One poll, as the bus carries it: the plant's figures written into the module's
        registers and read back by the driver's own status decoder (a decoder that hides a
        welded pole or misreads a current is the suite's to find)."""
        ready = self.insulation_ready_at is not None and t >= self.insulation_ready_at \
            and not self.imd_dead
        values = {
            "output_voltage": self.out_v + self.reads_high_v, "output_current": self.current_a,
            "gun_voltage": self.gun_v(ev) + self.reads_high_v,
            "module_temperature": self.temperature_c,
            "contactor_feedback": self.poles, "fault_word": self.fault_word,
            "insulation_done": 1 if ready else 0,
            "insulation_resistance": self.insulation_ohm / 1000.0 if ready else 0.0,
            "capability_current": self.capability_a,
            "capability_power": REGMAP["capability_power"].maximum,  # no power limit of its own
            "capability_discharge_current": self.reverse_a,
            "capability_discharge_power": self.reverse_w,
        }
        block = [0] * len(REGMAP.span)
        for name, value in values.items():
            reg = REGMAP[name]
            # Registers saturate: a figure beyond a register's range reads as its end.
            words = reg.encode(min(max(value, reg.minimum), reg.maximum))
            for i, word in enumerate(words):
                block[reg.address - REGMAP.span.start + i] = word
        status = decode_status(REGMAP, t, block)
        assert isinstance(status, ModuleStatus), status
        return status


def transmitted(commands: list[Command]) -> list[object]:
    return [c.message for c in commands if isinstance(c, Transmit)]


__all__ = ["CHM", "CML", "Ev", "EvParams", "PlantModel", "transmitted"]
