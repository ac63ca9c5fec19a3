"""Fault-injection scenarios for `pile-agent sim --fault NAME`.

Each scenario breaks one thing in the simulated pile or car during energy transfer
(or before it) and states the safe state the agent must reach, and by when:
  output current <= 5 A (measured by the module simulator) and K1/K2 open, with the
  session in FAULT (or, for faults the car itself reports, a normal stop).
Deadlines come from the clause that governs that fault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.core.events import Event
from agent.core.ratings import GunRatings
from hil.ev_bms import BmsSimulator
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.safety_io_sim import SafetyIoSim


class Pile(Protocol):
    module_sim: ModuleSim
    meter_sim: MeterSim
    bms: BmsSimulator
    safety_io: SafetyIoSim
    injected_events: list[Event]
    agent_hung: bool

    @property
    def ratings(self) -> GunRatings: ...


@dataclass(frozen=True)
class FaultScenario:
    name: str
    description: str
    inject: Callable[[Pile, float], None]
    deadline_s: float
    deadline_source: str
    expect_states: tuple[str, ...] = ("fault",)
    during_charging: bool = True
    then_stop: bool = False  # ask the car to stop after injecting (faults found at stop)
    # Faults that must not stop the session, judged otherwise than by the safe state:
    # the commanded current must stay at or under this (after LIMIT_GRACE_S) ...
    limit_a: Callable[[Pile], float] | None = None
    # ... or the agent must say this notice (a Notice kind) within the deadline.
    expect_notice: str = ""


# A limit the module reports takes effect with the next status read and the decision after
# it: one module poll (100 ms) and one step.
LIMIT_GRACE_S = 0.5


def _set(obj_attr: str, value: object) -> Callable[[Pile, float], None]:
    owner, attr = obj_attr.split(".")

    def inject(p: Pile, t: float) -> None:
        target: object = {"module": p.module_sim, "bms": p.bms, "io": p.safety_io,
                          "meter": p.meter_sim, "pile": p}[owner]
        setattr(target, attr, value)

    return inject


def _reset_meter(p: Pile, t: float) -> None:
    p.meter_sim.to_vehicle_kwh = p.meter_sim.from_vehicle_kwh = 0.0


SCENARIOS: dict[str, FaultScenario] = {s.name: s for s in (
    FaultScenario(
        "bms-silence", "the BMS stops sending anything (CAN cable cut, BMS crash)",
        lambda p, t: p.bms.silence(t), 3.0,
        "GB/T 27930-2015 §8: BCL 1 s; GB 44263-2024 §8.2.1: <= 5 A and K1/K2 open 2 s later"),
    FaultScenario(
        "bcs-silence", "the BMS stops sending BCS (status) but goes on with BCL",
        _set("bms.muted", frozenset({"BCS"})), 7.0,
        "GB/T 27930-2015 §8: BCS silent 5 s -> stop; GB 44263-2024 §8.2.1: <= 5 A and "
        "K1/K2 open 2 s later"),
    FaultScenario(
        "module-silence", "the power module stops answering on Modbus",
        _set("module.silent", True), 2.0,
        "before the module's own watchdog; GB 44263-2024 §8.2.1: 2 s to <= 5 A and open"),
    FaultScenario(
        "module-over-temperature", "the power module trips on over-temperature",
        _set("module.force_over_temperature", True), 1.0,
        "GB/T 18487.1-2015 B.4.7.1: charger-side fault, C1/C2 open within 100 ms of <= 5 A"),
    FaultScenario(
        "emergency-stop", "the E-stop button is pressed (I/O board input, safety controller)",
        _set("io.estop_pressed", True), 1.0,
        "GB/T 18487.1-2023 Table C.15: E-stop trigger <= 70 ms, then <= 5 A and open; "
        "IEC 61851-23 CC.3.4: < 5 A within 1 s"),
    FaultScenario(
        "door-open", "the cabinet door is opened while energised (I/O board input)",
        _set("io.door_open", True), 1.0,
        "as the E-stop: an emergency shutdown (GB/T 18487.1-2023 Table C.15)"),
    FaultScenario(
        "gun-unlocked", "the gun's electronic lock reads open while energised (I/O board input)",
        _set("io.gun_unlocked", True), 2.0,
        "IEC 61851-23 AA.3.4: lock failure while charging: < 5 A within 2 s, then open"),
    FaultScenario(
        "insulation-fault", "insulation resistance 50 ohm/V (<= 100 ohm/V) at the cable check",
        _set("io.insulation_ohm", 50.0 * 400), 5.0,
        "GB/T 18487.1-2015 B.5.1: <= 100 ohm/V stop; check ends before CRM", during_charging=False),
    FaultScenario(
        "imd-hung", "the insulation monitor starts a measurement and never finishes it",
        _set("io.imd_hung", True), 25.0,
        "GB/T 18487.1-2015 B.4.3: the insulation check has a budget (25 s; EVs give up at "
        "30 s)", during_charging=False),
    FaultScenario(
        "welded-contactor", "K1/K2 weld during charging; found when the session stops",
        _set("module.welded_contactor", True), 12.0,
        "GB/T 18487.1-2015 §7.9: adhesion check after opening; stop within 10 s of BST",
        expect_states=("fault",), then_stop=True),
    FaultScenario(
        "bms-over-temperature", "the BMS flags battery over-temperature in BSM",
        _set("bms.over_temperature", True), 3.0,
        "GB/T 27930-2015 BSM: an abnormal flag stops charging; GB 44263 §8.2.1 2 s",
        expect_states=("finished", "fault")),
    FaultScenario(
        "connector-over-temperature", "the gun's DC+ / DC- contacts read 110 °C (PT1000s)",
        _set("io.force_connector_c", 110.0), 1.0,
        "GB 44263-2024 §6.2.2: stop before 105 °C; trip is an emergency (I10)"),
    FaultScenario(
        "connector-sensor-open", "the connector PT1000 wiring breaks (open input)",
        _set("io.open_sensor", True), 1.0,
        "a blind connector sensor is a fault, not a derate (I11); GB 44263 §8.2.1"),
    FaultScenario(
        "safety-io-silence", "the safety RS-485 bus (I/O board and IMD) goes silent",
        _set("io.silent", True), 2.0,
        "E-stop and temperatures unknown: emergency stop; GB 44263-2024 §8.2.1 2 s"),
    FaultScenario(
        "agent-hang", "the agent process hangs: no more commands, no heartbeat",
        _set("pile.agent_hung", True), 1.0,
        "heartbeat watchdog 500 ms in the safety controller (io_board_map.toml); "
        "IEC 61851-23 CC.3.4: < 5 A within 1 s", expect_states=()),
    FaultScenario(
        "absurd-demand", "the BMS demands 400 A (the most GB/T can encode), above its own BCP "
        "max and the gun rating; the arbiter must hold its limits",
        _set("bms.demand_override_a", 400.0), 5.0,
        "no stop: the current stays within BCP max, charger max and module capability",
        expect_states=("charging",),
        limit_a=lambda p: min(p.ratings.max_current_a, p.bms.config.max_charge_current_a)),
    # A broken output unit, over the real Modbus transport (issue 24's fault campaign).
    FaultScenario(
        "module-readback-lies", "the module reads back 0 for its setpoint, output enable and "
        "K1/K2 command while it delivers current; the car then stops (BST)",
        _set("module.lies_readback", True), 4.5,
        "the car's BST 2 s after injection; the stop reaches the wire whatever the read-back "
        "(I16); IEC 61851-23 101.2.1.4: >= 100 A/s down, 250 A in 2.5 s",
        expect_states=("finished",), then_stop=True),
    FaultScenario(
        "module-zero-status", "every register of the module reads 0 (a dead board behind a "
        "live gateway) while it delivers current",
        _set("module.zero_status", True), 2.0,
        "K1/K2 feedback lost: a fault after 1 s (GB/T 18487.1-2015 B.4.7.1, polled); output "
        "off and K1/K2 commanded open whatever the read-back (I16); GB 44263 §8.2.1 2 s"),
    FaultScenario(
        "module-over-voltage", "the output voltage reads 1050 V on a 750 V gun",
        _set("module.reads_voltage_v", 1050.0), 1.5,
        "I17: 400 ms over the limit (IEC 61851-23:2023 CC.3.4.2), then GB/T 18487.1-2015 "
        "B.4.7.6: C1/C2 open within 1 s"),
    FaultScenario(
        "module-over-current", "the module's current loop runs 40 A past its setpoint (below "
        "its own over-current trip at 1.1 x its rating)",
        _set("module.overshoot_a", 40.0), 1.6,
        "I18: GB 44263-2024 §8.2.8: over the request for 1 s, fault shutdown within 500 ms"),
    FaultScenario(
        "module-flaky", "every second Modbus request is answered with exception 04",
        _set("module.refuse_every", 2), 2.0,
        "a refused request is a lost link (emergency); GB 44263-2024 §8.2.1: <= 5 A and "
        "K1/K2 open within 2 s of a communication fault"),
    FaultScenario(
        "module-slow", "the module acts on every request at once but answers 1.5 s late",
        _set("module.answer_delay_s", 1.5), 2.0,
        "the 0.5 s request timeout is a lost link (emergency); GB 44263-2024 §8.2.1: <= 5 A "
        "and K1/K2 open within 2 s of a communication fault"),
    FaultScenario(
        "module-no-capability", "the module reports 0 A and 0 W capability (derated to nothing)",
        _set("module.capability_scale", 0.0), 5.0,
        "I2: 0 A capability is 0 A, not 'no limit'; the session goes on at 0 A",
        expect_states=("charging",), limit_a=lambda p: 0.0),
    FaultScenario(
        "meter-reset", "the DC meter's energy counters reset to 0 mid-session",
        _reset_meter, 2.0,
        "billing: a meter whose counters run backwards is said at once (meter_rebased), the "
        "energy so far banked; the session goes on", expect_states=("charging",),
        expect_notice="meter_rebased"),
)}
