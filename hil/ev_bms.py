"""A simulated vehicle BMS speaking GB/T 27930-2015, sans-I/O.

`receive(message, t)` takes the charger's messages, `poll(t)` returns the BMS's own
messages that are due. It owns a `Battery` and closes/opens the vehicle contactors
K5/K6. CC-CV demand within its own limits; stops at its target SOC with BST.
Fault-injection hooks let scenarios make it misbehave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    CCS,
    CDP,
    CHM,
    CML,
    CRM,
    CRO,
    CSD,
    CST,
    CTS,
    BemTimeout,
    BmsMessage,
    BmsStopReason,
    ChargeMode,
    ChargerMessage,
    Ready,
)
from agent.core.outgoing import on_grid
from hil.ev_battery import Battery, BatteryParams

# Periods of the BMS's messages: GB/T 27930-2015 §10 message definitions [V].
PERIOD_S = {"BHM": 0.25, "BRM": 0.25, "BCP": 0.5, "BRO": 0.25, "BCL": 0.05, "BCS": 0.25,
            "BSM": 0.25, "BMV": 10.0, "BMT": 10.0, "BSP": 10.0, "BST": 0.01, "BSD": 0.25,
            "BEM": 0.25,
            # The V2G extension (docs/V2G.md): BDP as BCP's period, BDS as BCS's.
            "BDP": 0.25, "BDS": 0.25}
# GB/T 27930-2015 §8 / Fig. A.6 [V]: the BMS stops when CCS is silent 1 s; other
# charger messages have the default 5 s.
CCS_TIMEOUT_S = 1.0
# Sent in energy transfer (the ones `next_due` waits for); BMV/BMT's 10 s come with them.
CHARGING_MESSAGES = frozenset({"BCL", "BCS", "BSM", "BDS"})
DEFAULT_TIMEOUT_S = 5.0
# GB/T 27930-2015 §8: the vehicle opens K5/K6 at <= 5 A, at the latest 10 s after BST.
OPEN_CURRENT_A = 5.0
OPEN_DEADLINE_S = 10.0
BST_AFTER_CST_S = 0.1


@dataclass(frozen=True)
class VehicleConfig:
    battery: BatteryParams = field(default_factory=BatteryParams)
    start_soc_pct: float = 20.0
    target_soc_pct: float = 80.0
    max_charge_current_a: float = 250.0
    max_cell_voltage_v: float = 4.20
    max_temperature_c: float = 55.0
    contactor_close_delay_s: float = 0.5
    battery_type: int = 0x06  # NCM
    vin: str = "LSIMPILEAGENT0001"
    # V2G (the project's extension, docs/V2G.md). v2g=False is a 2015 car: it never answers
    # the charger's CDP and charges only.
    v2g: bool = False
    consent: bool = True
    max_discharge_current_a: float = 150.0
    max_discharge_power_w: float = 60_000.0
    min_discharge_cell_v: float = 3.40  # times the cells in series: the minimum pack voltage
    soc_floor_pct: float = 30.0
    energy_window_kwh: float = 40.0
    # A V2G car parked for the grid does not end the session at its departure SOC: it asks
    # for no more current and waits for the owner (stop_at_target=False).
    stop_at_target: bool = True
    # The car's task cycle: each periodic message goes out at multiples of its period on
    # the car's clock, offset by this phase. 0.0 puts BCL on the instants of the charger's
    # CCS (both keep to multiples of 50 ms on one simulated clock), so an event-driven run
    # visits about half the instants; any other phase tests a car out of step.
    task_phase_s: float = 0.0

    @property
    def max_total_voltage_v(self) -> float:
        return round(self.max_cell_voltage_v * self.battery.cells_in_series, 1)


class BmsSimulator:
    def __init__(self, config: VehicleConfig | None = None) -> None:
        self.config = config or VehicleConfig()
        self.battery = Battery(self.config.battery, self.config.start_soc_pct)
        self.phase = "wait"
        self.seen: dict[type[ChargerMessage], tuple[float, ChargerMessage]] = {}
        self.stop_reason: frozenset[BmsStopReason] = frozenset()
        self.timeouts: frozenset[BemTimeout] = frozenset()
        self._phase_t = 0.0
        self._last: dict[str, float] = {}
        self._stop_t: float | None = None
        # fault injection
        self.silent_from: float | None = None
        self.over_temperature = False
        self.charge_permitted = True
        self.demand_override_a: float | None = None
        self.muted: frozenset[str] = frozenset()  # messages it stops sending, e.g. {"BCS"}
        self.consent = self.config.consent  # the owner may withdraw it mid-session
        self._energy_out_at_start = 0.0
        self._stop_requested = False

    @property
    def finished(self) -> bool:
        return self.phase == "done"

    # ---- fault injection -------------------------------------------------------

    def silence(self, from_t: float) -> None:
        self.silent_from = from_t

    def request_stop(self) -> None:
        self._stop_requested = True

    # ---- inputs ------------------------------------------------------------------

    def receive(self, message: ChargerMessage, t: float) -> None:
        self.seen[type(message)] = (t, message)
        match message:
            case CHM() if self.phase == "wait":
                self._go("handshake", t)
            case CRM(recognized=False) if self.phase in ("wait", "handshake"):
                self._go("identify", t)
            case CRM(recognized=True) if self.phase in ("handshake", "identify"):
                self._go("config", t)
            case CML() | CTS() if self.phase == "config":
                self._go("ready_wait", t)
            case CRO(ready=Ready.READY) if self.phase == "ready":
                self._go("charging", t)
            case CST() if self.phase in ("charging", "ready", "ready_wait", "config"):
                self.stop_reason = frozenset({BmsStopReason.CHARGER_STOPPED})
                self._begin_stop(t)
            case CSD() if self.phase == "stopping" and not self.battery.contactors_closed:
                self._go("done", t)

    def _go(self, phase: str, t: float) -> None:
        self.phase, self._phase_t = phase, t

    def _begin_stop(self, t: float) -> None:
        if self._stop_t is None:
            self._stop_t = t
            self._go("stopping", t)

    # ---- outputs -----------------------------------------------------------------

    def poll(self, t: float) -> list[BmsMessage]:
        self._advance(t)
        if self.silent_from is not None and t >= self.silent_from:
            return []
        return [m for m in self._candidates(t)
                if type(m).__name__ not in self.muted and self._due(type(m).__name__, t)]

    def next_due(self, t: float, step_s: float) -> float:
        """When the car next needs a look if nothing arrives (event-driven simulation).
        In energy transfer: its next periodic message (it reads what the charger sent when
        it next speaks, as a BMS's task cycle does). In every other phase, the sequence
        moves on the charger's frames and the car's own timers: every step."""
        if self.phase != "charging" or self.silent_from is not None:
            return t + step_s
        due = [last + self.period_s(name) for name, last in self._last.items()
               if name in CHARGING_MESSAGES]
        return min((d for d in due if d > t + 1e-9), default=t + step_s)

    def period_s(self, name: str) -> float:
        return PERIOD_S[name]

    def _cell_messages(self, t: float) -> list[BmsMessage]:
        """Cell-level figures for the battery-health limits (a 10 mV spread, the highest
        cell last), built only when due: 96 cells every 10 ms step would be most of the
        simulator's work for a message sent every 10 s."""
        if self._waiting("BMV", t):
            return []
        b, c = self.battery, self.config
        cell_v = round(min(b.terminal_voltage_v() / c.battery.cells_in_series, 40.9), 2)
        cells = (*(round(cell_v - 0.01 * (i % 2), 2)
                   for i in range(c.battery.cells_in_series - 1)), round(cell_v + 0.01, 2))
        return [BMV(cells, tuple(1 + i // 16 % 15 for i in range(len(cells)))),
                BMT(tuple(float(round(b.temperature_c) - k) for k in (0, 1, 1, 2)))]

    def _waiting(self, name: str, t: float) -> bool:
        """Sent less than a period ago (no side effect; `_due` records a send)."""
        last = self._last.get(name)
        return last is not None and t < last + self.period_s(name) - 1e-9

    def _due(self, name: str, t: float) -> bool:
        last, period = self._last.get(name), self.period_s(name)
        if self._waiting(name, t):
            return False
        self._last[name] = self._slot(t, period) if last is None or t - last >= 2 * period \
            else last + period
        return True

    def _slot(self, t: float, period: float) -> float:
        """The slot of the car's task cycle a first send at t stands for: the multiple of
        the period (plus the car's phase) nearest t, as the charger keeps its grid."""
        phase = self.config.task_phase_s
        return phase + on_grid(t - phase, period)

    def _advance(self, t: float) -> None:
        b, c = self.battery, self.config
        if self.phase == "ready_wait" and t - self._phase_t >= c.contactor_close_delay_s:
            b.contactors_closed = True
            self._go("ready", t)
        if self.phase == "charging":
            ccs_t = self.seen.get(CCS, (self._phase_t, None))[0]
            if t - max(ccs_t, self._phase_t) > CCS_TIMEOUT_S:
                self.timeouts = frozenset({BemTimeout.CCS})
                self._begin_stop(t)
            elif (c.stop_at_target and b.soc_pct >= c.target_soc_pct) or self._stop_requested:
                self.stop_reason = frozenset({BmsStopReason.SOC_REACHED})
                self._begin_stop(t)
        if self.phase == "stopping" and b.contactors_closed and self._stop_t is not None and (
                abs(b.current_a) <= OPEN_CURRENT_A or t - self._stop_t >= OPEN_DEADLINE_S):
            b.contactors_closed = False

    def demand_a(self) -> tuple[float, ChargeMode]:
        b, c = self.battery, self.config
        if self.demand_override_a is not None:
            return self.demand_override_a, ChargeMode.CONSTANT_CURRENT
        if not c.stop_at_target and b.soc_pct >= c.target_soc_pct:
            return 0.0, ChargeMode.CONSTANT_VOLTAGE
        limit = c.max_charge_current_a
        if b.temperature_c > c.max_temperature_c - 10:
            limit *= 0.5  # the BMS halves its request near its temperature limit
        cv_a = (c.max_total_voltage_v - b.open_circuit_voltage_v) / b.internal_resistance_ohm
        if cv_a < limit:
            return max(cv_a, 0.0), ChargeMode.CONSTANT_VOLTAGE
        return limit, ChargeMode.CONSTANT_CURRENT

    # ---- V2G (the project's extension, docs/V2G.md) ------------------------------

    def offered_v2g(self) -> bool:
        seen = self.seen.get(CDP)
        return self.config.v2g and seen is not None and isinstance(seen[1], CDP) \
            and seen[1].offered

    @property
    def min_discharge_voltage_v(self) -> float:
        return round(self.config.min_discharge_cell_v * self.config.battery.cells_in_series, 1)

    def remaining_window_kwh(self) -> float:
        given = self.battery.energy_out_kwh - self._energy_out_at_start
        return max(self.config.energy_window_kwh - given, 0.0)

    def _v2g_answer(self) -> list[BmsMessage]:
        if not self.offered_v2g():
            return []
        self._energy_out_at_start = self.battery.energy_out_kwh
        c = self.config
        return [BDP(self.consent, c.max_discharge_current_a, c.max_discharge_power_w,
                    self.min_discharge_voltage_v, c.soc_floor_pct, c.energy_window_kwh)]

    def _v2g_status(self) -> list[BmsMessage]:
        if not self.offered_v2g():
            return []
        c = self.config
        return [BDS(self.consent, c.max_discharge_current_a,
                    round(self.remaining_window_kwh(), 1), c.soc_floor_pct)]

    def _candidates(self, t: float) -> list[BmsMessage]:
        b, c = self.battery, self.config
        match self.phase:
            case "handshake":
                return [BHM(c.max_total_voltage_v)]
            case "identify":
                return [BRM((1, 1, 0), c.battery_type, c.battery.capacity_ah,
                            round(3.7 * c.battery.cells_in_series, 1), "SIMU", vin=c.vin)]
            case "config":
                energy = round(c.battery.capacity_ah * 3.7 * c.battery.cells_in_series / 1000, 1)
                return [BCP(c.max_cell_voltage_v, c.max_charge_current_a, energy,
                            c.max_total_voltage_v, c.max_temperature_c, round(b.soc_pct, 1),
                            round(b.terminal_voltage_v(), 1))]
            case "ready_wait":
                return [*self._v2g_answer(), BRO(Ready.NOT_READY)]
            case "ready":
                return [BRO(Ready.READY)]
            case "charging":
                # Each message built only when its period is up (BCL every 50 ms, the
                # others every 250 ms or 10 s): `poll` would drop the others anyway.
                demand, mode = self.demand_a()
                out: list[BmsMessage] = [BCL(c.max_total_voltage_v, round(demand, 1), mode),
                                         *self._cell_messages(t)]
                if not self._waiting("BCS", t):
                    remaining = max(c.target_soc_pct - b.soc_pct, 0.0) \
                        * c.battery.capacity_ah * 0.6 / max(demand, 1.0)
                    out.append(BCS(round(b.terminal_voltage_v(), 1), round(b.current_a, 1),
                                   round(min(b.max_cell_voltage_v(), 40.95), 2), 1,
                                   round(b.soc_pct), min(int(remaining), 600)))
                if not self._waiting("BSM", t):
                    out.append(BSM(1, round(b.temperature_c), 1, round(b.temperature_c) - 2, 2,
                                   over_temperature=self.over_temperature,
                                   charge_permitted=self.charge_permitted))
                if not self._waiting("BDS", t):
                    out += self._v2g_status()
                return out
            case "stopping":
                msgs: list[BmsMessage] = []
                if self.timeouts:
                    msgs.append(BEM(self.timeouts))
                if CST not in self.seen or (self.stop_reason != frozenset(
                        {BmsStopReason.CHARGER_STOPPED}) and t - self._phase_t < 1.0):
                    msgs.append(BST(self.stop_reason))
                if CST in self.seen and not b.contactors_closed:
                    msgs.append(BSD(round(b.soc_pct), 3.6, round(b.max_cell_voltage_v(), 2),
                                    round(b.temperature_c) - 2, round(b.temperature_c)))
                return msgs
        return []
