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
    BHM,
    BRM,
    BRO,
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
    _last: dict[str, float] = field(default_factory=dict)
    _heard: set[str] = field(default_factory=set)

    def hear(self, message: object) -> None:
        name = type(message).__name__
        if isinstance(message, CRM):
            name += "_AA" if message.recognized else "_00"
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
            out.append(BRM((1, 1, 0), 3, 150.0, 350.0))
        if "CRM_AA" in h and "CML" not in h and self._due("BCP", 0.5, t):
            out.append(BCP(4.2, p.bcp_max_a, 60.0, p.bcp_max_v, 55.0, 50.0, p.reported_v))
        if "CML" in h and not self.charging and self._due("BRO", 0.25, t):
            ready = p.mute != "BRO_AA"
            self.contactors_closed = ready
            out.append(BRO(Ready.READY if ready else Ready.NOT_READY))
        if self.charging:
            if self.send_bcl and self._due("BCL", 0.05, t):
                # GB/T 27930-2015 §4.5 carries at most 400 A of charging demand.
                out.append(BCL(p.demand_v, min(p.demand_a, GBT_MAX_CHARGE_A),
                               ChargeMode.CONSTANT_CURRENT))
            if self.send_bcs and self._due("BCS", 0.25, t):
                out.append(BCS(p.battery_v, 0.0, 4.0, 1, 50.0, 30))
            if self._due("BSM", 0.25, t):
                out.append(bsm_bytes(self.bsm_permit, self.bsm_alarm, self.bsm_alarm_bits))
        return [m for m in out if type(m).__name__ != p.mute]


# GB/T 27930-2015 BSM (PGN 0x1300) byte 6: cell voltage, SOC, over-current,
# over-temperature; byte 7: insulation, connector, charge permitted, reserved (11); two bits
# each, least significant first. Written here from the standard, not through the codec.
BSM_ALARMS = {"cell_voltage": (5, 0), "soc": (5, 2), "over_current": (5, 4),
              "over_temperature": (5, 6), "insulation": (6, 0), "connector": (6, 2)}


def bsm_bytes(permit: bool, alarm: str = "", bits: int = 0b01) -> bytes:
    data = bytearray([0, 30 + 50, 0, 28 + 50, 1, 0, 0b11 << 6 | (0b01 if permit else 0) << 4])
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
        if self.enabled and loaded:
            # CC up to the setpoint, CV at the voltage setpoint: I = (V_set - V_batt) / R.
            cv_a = max((self.set_v - ev.p.battery_v) / BATTERY_OHM, 0.0)
            target = min(max(self.set_a, 0.0), self.capability_a, cv_a)
            self.current_a += (target - self.current_a) * min(1.0, dt / 0.05)
            self.current_a = min(self.current_a, max(self.set_a, 0.0), self.capability_a)
        else:
            self.current_a = 0.0 if not loaded else self.current_a * max(0.0, 1 - dt / 0.05)
        if loaded and self.current_stuck:
            self.current_a = max(self.current_a, before)  # follows rises, never a fall
        if loaded:
            self.out_v = ev.p.battery_v + BATTERY_OHM * self.current_a
        elif self.enabled:
            target_v = self.set_v * self.output_fraction + self.offset_v
            self.out_v += (target_v - self.out_v) * min(1.0, dt / self.voltage_tau_s)
        else:
            self.out_v *= math.exp(-dt / (0.1 if self.bleeder else 0.5))

    def gun_v(self, ev: Ev) -> float:
        if ev.contactors_closed:
            return ev.p.battery_v + BATTERY_OHM * self.current_a
        return self.out_v if self.k12 else 0.0

    def status(self, t: float, ev: Ev) -> ModuleStatus:
        """One poll, as the bus carries it: the plant's figures written into the module's
        registers and read back by the driver's own status decoder (a decoder that hides a
        welded pole or misreads a current is the suite's to find)."""
        ready = self.insulation_ready_at is not None and t >= self.insulation_ready_at \
            and not self.imd_dead
        values = {
            "output_voltage": self.out_v, "output_current": self.current_a,
            "gun_voltage": self.gun_v(ev), "module_temperature": self.temperature_c,
            "contactor_feedback": self.poles, "fault_word": self.fault_word,
            "insulation_done": 1 if ready else 0,
            "insulation_resistance": self.insulation_ohm / 1000.0 if ready else 0.0,
            "capability_current": self.capability_a,
            "capability_power": REGMAP["capability_power"].maximum,  # no power limit of its own
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
