"""V2G scenarios for `pile-agent sim --scenario NAME`: a car, a gun and a script of upstream
setpoints, run over the real transports, each with the expectations it must meet.

The script plays the site EMS / VPP: it sends signed current setpoints (- = discharge),
refreshed every REFRESH_S with a validity of 2 x REFRESH_S, as a dispatch platform would.
A scenario passes only when every expectation holds; `check` says which did not.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ocpp.v21 import call

from agent.core.events import Event, StopRequested, UpstreamLimit, UpstreamSetpoint
from agent.core.frequency_watt import FrequencyDroop
from agent.core.ratings import GunRatings
from agent.core.states import State
from agent.core.upstream import UpstreamPolicy
from drivers.sunspec.ems_controls import EmsSettings
from hil.ev_bms import VehicleConfig

if TYPE_CHECKING:
    from hil.sim import SimulatedPile

REFRESH_S = 30.0
V2G_GUN = GunRatings(max_discharge_current_a=200.0, max_discharge_power_w=100_000.0)


@dataclass
class Script:
    """What the EMS does: setpoint(t) -> signed A or None (no setpoint), and when it ends."""

    stage: str = "charge"
    stage_since: float = 0.0
    last_sent: float = -1e9
    sent: float | None = None
    notes: list[str] = field(default_factory=list)
    power: list[tuple[float, float]] = field(default_factory=list)  # (t, DC W at the gun)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    vehicle: VehicleConfig
    step: Callable[[SimulatedPile, Script, float], list[Event]]
    check: Callable[[SimulatedPile, Script], list[str]]
    ratings: GunRatings = V2G_GUN
    max_sim_s: float = 3600.0
    upstream: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    # The agent's SunSpec server for the site EMS, and the VPP's moves through it.
    ems: EmsSettings | None = None
    vpp: Callable[[SimulatedPile, Script, float], Awaitable[None]] | None = None
    csms: bool = False  # a central system on loopback, and the agent's OCPP client
    # The site's local time (s after midnight) at the start, and when the scenario ends
    # (`pile-agent sim --site-time/--site-until` move them); None: no site clock.
    site_start_s: float | None = None
    site_end_s: float | None = None


def _send(pile: SimulatedPile, script: Script, t: float, amps: float | None) -> list[Event]:
    if amps is None:
        return []
    if amps == script.sent and t - script.last_sent < REFRESH_S:
        return []
    script.sent, script.last_sent = amps, t
    return [UpstreamLimit(t, "ems", amps, t + 2 * REFRESH_S)]


def _go(script: Script, stage: str, t: float) -> None:
    script.stage, script.stage_since = stage, t
    script.notes.append(f"{t:8.1f} s  EMS: {stage}")


def _soc(pile: SimulatedPile) -> float:
    return pile.bms.battery.soc_pct


def _held(pile: SimulatedPile, text: str) -> bool:
    return any(kind == "discharge_held" and text in detail
               for _t, kind, detail in pile.result.notices)


def _charging(pile: SimulatedPile) -> bool:
    return pile.session.state is State.CHARGING


# ---- v2g-peak-shaving ---------------------------------------------------------------

def _peak_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    if not _charging(pile):
        return []
    if s.stage == "charge" and _soc(pile) >= 80.0:
        _go(s, "evening peak: discharge 150 A", t)
    elif s.stage.startswith("evening") and _held(pile, "SOC floor"):
        pile.bms.config = replace(pile.bms.config, target_soc_pct=70.0)
        _go(s, "night: charge back to the departure SOC (70 %)", t)
    elif s.stage.startswith("night") and _soc(pile) >= 70.0:
        _go(s, "owner departs", t)
        return [StopRequested(t, "owner departs at 70 %")]
    if s.stage.startswith("evening"):
        return _send(pile, s, t, -150.0)
    if s.stage.startswith("night"):
        return _send(pile, s, t, 250.0)
    return []


def _common(pile: SimulatedPile) -> list[str]:
    r = pile.result
    out = []
    if r.outcome != "finished":
        out.append(f"session {r.outcome}: {r.reason}")
    return out


def _ledger_matches_battery(pile: SimulatedPile) -> list[str]:
    r = pile.result
    battery = pile.bms.battery.energy_out_kwh
    ledger = r.ledger_from_vehicle_kwh
    if ledger is None or battery <= 0:
        return [f"no discharge metered (ledger {ledger}, battery {battery:.3f} kWh)"]
    err = abs(ledger - battery) / battery
    if err > 0.005:
        return [f"ledger discharged {ledger:.3f} kWh vs battery {battery:.3f} kWh: "
                f"{err * 100:.2f} % > 0.5 %"]
    return []


def _peak_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    phases = [d for _t, d in pile.result.phases]
    if phases[:3] != ["charge", "discharge", "charge"]:
        out.append(f"energy-transfer phases {phases}, expected charge, discharge, charge")
    if pile.result.min_soc_pct < pile.bms.config.soc_floor_pct - 1.0:
        out.append(f"SOC fell to {pile.result.min_soc_pct:.1f} %")
    if _soc(pile) < 69.5:
        out.append(f"left at {_soc(pile):.1f} %, departure SOC 70 %")
    return out


# ---- consent-withdrawn ------------------------------------------------------------------

def _consent_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    if not _charging(pile):
        return []
    if s.stage == "charge" and t - pile.charging_since(t) > 5.0:
        _go(s, "discharge 100 A", t)
    elif s.stage.startswith("discharge") and t - s.stage_since > 60.0:
        pile.bms.consent = False
        _go(s, "owner withdraws consent", t)
    elif s.stage.startswith("owner") and t - s.stage_since > 30.0:
        _go(s, "end", t)
        return [StopRequested(t, "scenario over")]
    return _send(pile, s, t, -100.0) if s.stage != "charge" else []


def _consent_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    withdrawn = next((float(n.split()[0]) for n in s.notes if "withdraws" in n), None)
    if withdrawn is None:
        return [*out, "consent was never withdrawn"]
    late = [(t, i) for t, i in pile.result.current_trace if t > withdrawn + 1.0 and i < -5.0]
    if late:
        out.append(f"discharging {late[0][1]:.1f} A at {late[0][0]:.1f} s, consent withdrawn "
                   f"at {withdrawn:.1f} s")
    if not any(k == "consent_withdrawn" for _t, k, _d in pile.result.notices):
        out.append("no consent_withdrawn notice")
    return out


# ---- soc-floor -----------------------------------------------------------------------

def _floor_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    if not _charging(pile):
        return []
    if s.stage == "charge":
        _go(s, "discharge 200 A until the floor", t)
    elif _held(pile, "SOC floor") and s.stage.startswith("discharge"):
        _go(s, "held at the floor", t)
    elif s.stage.startswith("held") and t - s.stage_since > 60.0:
        _go(s, "end", t)
        return [StopRequested(t, "scenario over")]
    return _send(pile, s, t, -200.0)


def _floor_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    floor = pile.bms.config.soc_floor_pct
    if pile.result.min_soc_pct < floor - 0.5:
        out.append(f"SOC {pile.result.min_soc_pct:.2f} % below the {floor} % floor "
                   "(BCS resolution is 1 %)")
    if not _held(pile, "SOC floor"):
        out.append("discharge was never held at the floor")
    return out


# ---- direction-changes -------------------------------------------------------------------

def _flip_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    if not _charging(pile):
        return []
    since = pile.charging_since(t)
    k = int((t - since) // 120.0)
    if k >= 6:
        if s.stage != "end":
            _go(s, "end", t)
            return [StopRequested(t, "scenario over")]
        return []
    amps = -120.0 if k % 2 == 0 else 120.0
    if s.sent != amps:
        _go(s, f"setpoint {amps:+.0f} A", t)
    return _send(pile, s, t, amps)


def _flip_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    phases = [d for _t, d in pile.result.phases]
    if len(phases) < 6:
        out.append(f"{len(phases)} energy-transfer phases, expected >= 6")
    # Each sign change of the measured current passed through <= 5 A.
    prev, low_seen = 0.0, True
    for t, i in pile.result.current_trace:
        if abs(i) <= 5.0:
            low_seen = True
            continue
        if prev * i < 0 and not low_seen:
            out.append(f"current jumped from {prev:.1f} A to {i:.1f} A at {t:.2f} s")
            break
        prev, low_seen = i, False
    return out


# ---- charge-only-car ----------------------------------------------------------------------

def _charge_only_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    if _charging(pile) and s.stage == "charge":
        _go(s, "EMS asks for a discharge the car cannot give", t)
    elif s.stage.startswith("EMS asks") and t - s.stage_since > 60.0:
        _go(s, "EMS allows charging at 250 A", t)
    if s.stage.startswith("EMS asks"):
        return _send(pile, s, t, -150.0)
    return _send(pile, s, t, 250.0) if s.stage.startswith("EMS allows") else []


def _charge_only_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile)
    if any(i < -1e-9 for _t, i in pile.result.current_trace):
        out.append("a 2015 car was discharged")
    if pile.session.data.v2g_negotiated:
        out.append("V2G negotiated with a car that never answers")
    if _soc(pile) < pile.bms.config.target_soc_pct:
        out.append("the car did not charge to its target")
    return out


# ---- frequency-step ---------------------------------------------------------------------

STEP_FROM_HZ, STEP_TO_HZ = 50.00, 49.80
FREQ_DROOP = FrequencyDroop(rated_w=V2G_GUN.max_discharge_power_w)
DISCHARGE_W = 40_000.0


def _freq_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    if not _charging(pile):
        return []
    m = pile.module_sim
    s.power.append((t, m.current_a * m.output_voltage_v))
    if s.stage == "charge":
        _go(s, f"VPP: discharge {DISCHARGE_W / 1000:.0f} kW", t)
    elif s.stage.startswith("VPP") and t - s.stage_since > 60.0:
        m.grid_frequency_hz = STEP_TO_HZ
        _go(s, f"grid frequency {STEP_FROM_HZ:.2f} -> {STEP_TO_HZ:.2f} Hz", t)
    elif s.stage.startswith("grid") and t - s.stage_since > 30.0:
        _go(s, "end", t)
        return [StopRequested(t, "scenario over")]
    if s.stage == "end" or t - s.last_sent < REFRESH_S:
        return []
    s.last_sent = t
    return [UpstreamSetpoint(t, "ems", t + 2 * REFRESH_S, setpoint=-DISCHARGE_W, unit="W")]


def frequency_step_response(s: Script) -> tuple[float, float, float] | None:
    """(power before, power after, seconds to reach 90 % of the change) of the step."""
    stepped = next((float(n.split()[0]) for n in s.notes if "Hz" in n), None)
    if stepped is None:
        return None
    before = [p for t, p in s.power if stepped - 10.0 <= t < stepped]
    after = [p for t, p in s.power if stepped + 20.0 <= t < stepped + 29.0]
    if not before or not after:
        return None
    p0, p1 = sum(before) / len(before), sum(after) / len(after)
    reached = next((t for t, p in s.power if t >= stepped
                    and abs(p - p1) <= 0.1 * abs(p1 - p0)), None)
    return p0, p1, (reached - stepped) if reached is not None else math.inf


def _freq_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    response = frequency_step_response(s)
    if response is None:
        return [*out, "the frequency step never happened"]
    p0, p1, seconds = response
    expected = FREQ_DROOP.offset_w(STEP_TO_HZ) or 0.0
    s.notes.append(f"{'':8} response: {p0 / 1000:.2f} kW -> {p1 / 1000:.2f} kW "
                   f"(droop asks {expected / 1000:+.2f} kW) in {seconds:.2f} s to 90 %")
    if abs((p1 - p0) - expected) > 0.1 * abs(expected):
        out.append(f"power moved {(p1 - p0) / 1000:+.2f} kW, droop asks "
                   f"{expected / 1000:+.2f} kW")
    if seconds > 1.0:
        out.append(f"power reached 90 % of its change in {seconds:.2f} s > 1 s "
                   "(GB/T 40595-2021)")
    return out


# ---- upstream-lost ----------------------------------------------------------------------

LOST_DISPATCH_W, LOST_REVERT_S, LOST_REFRESH_S = 40_000, 10, 5.0


async def _lost_vpp(pile: SimulatedPile, s: Script, t: float) -> None:
    """The VPP over Modbus TCP: dispatch 40 kW with a 10 s reversion time, refresh every
    5 s, read the pile's power back, then lose the link mid-discharge."""
    vpp = pile.vpp
    if vpp is None or not _charging(pile):
        return
    if s.stage == "charge" and t - pile.charging_since(t) > 3.0:
        _go(s, f"VPP dispatches {LOST_DISPATCH_W / 1000:.0f} kW over SunSpec "
               f"(WSetRvrtTms {LOST_REVERT_S} s)", t)
    elif s.stage.startswith("VPP dispatches") and t - s.stage_since > 60.0:
        vpp.drop()
        _go(s, "the VPP's link drops", t)
    if s.stage.startswith("VPP dispatches"):
        if t - s.last_sent >= LOST_REFRESH_S:
            await vpp.dispatch(LOST_DISPATCH_W, LOST_REVERT_S)
            s.last_sent = t
        if t - s.stage_since >= 30.0 and not any("reads" in n for n in s.notes):
            seen = await vpp.read_power_w()
            s.notes.append(f"{t:8.1f} s  VPP reads W = {seen} W (SunSpec: + = injection)")


def _end_after(stage: str, seconds: float) -> Callable[[SimulatedPile, Script, float],
                                                        list[Event]]:
    """A step that ends the session `seconds` after the script reached `stage`."""
    def step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
        if s.stage.startswith(stage) and t - s.stage_since > seconds:
            _go(s, "end", t)
            return [StopRequested(t, "scenario over")]
        return []
    return step


_lost_step = _end_after("the VPP's link", 60.0)


def _lost_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    dropped = next((float(n.split()[0]) for n in s.notes if "link drops" in n), None)
    if dropped is None:
        return [*out, "the link never dropped"]
    last_write = s.last_sent
    allowed = last_write + LOST_REVERT_S + 2.0  # reversion, then the ramp to zero
    late = [(t, i) for t, i in pile.result.current_trace if t > allowed and i < -5.0]
    if late:
        out.append(f"still discharging {late[0][1]:.1f} A at {late[0][0]:.1f} s; last VPP "
                   f"write {last_write:.1f} s, reversion {LOST_REVERT_S} s")
    stopped = next((t for t, i in pile.result.current_trace if t > dropped and i >= -5.0),
                   None)
    if stopped is not None:
        s.notes.append(f"{'':8} discharge stopped {stopped - last_write:.1f} s after the last "
                       f"write ({LOST_REVERT_S} s reversion)")
    seen = next((n for n in s.notes if "reads" in n), "")
    m = seen.split("W = ")[1].split(" W")[0] if "W = " in seen else "None"
    # The setpoint is met on the DC side; 701 W is the AC side, lower by the conversion
    # losses (4 % in the module simulator).
    if m == "None" or not 0.90 * LOST_DISPATCH_W <= float(m) <= LOST_DISPATCH_W:
        out.append(f"the VPP read {m} W, dispatched {LOST_DISPATCH_W} W")
    if [d for _t, d in pile.result.phases][-1:] != ["charge"]:
        out.append("charging did not resume on the fallback after the reversion")
    return out


# ---- ocpp-offline-replay ----------------------------------------------------------------

OCPP_DISCHARGE_W, OCPP_MAX_OFFLINE_S, OCPP_OFFLINE_S = 30_000.0, 20, 60.0


async def _ocpp_csms(pile: SimulatedPile, s: Script, t: float) -> None:
    """The central system: a TxProfile (CentralSetpoint, 30 kW discharge, maxOfflineDuration
    20 s) for the running transaction; then it goes away for 60 s and comes back."""
    csms = pile.csms
    if csms is None or not _charging(pile):
        return
    started = [e for e in csms.of("TransactionEvent") if e["event_type"] == "Started"]
    if s.stage == "charge" and started and t - pile.charging_since(t) > 3.0:
        tx = started[-1]["transaction_info"]["transaction_id"]
        side = csms.stations["SIM-PILE-1"]
        r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile={
            "id": 1, "stack_level": 1, "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Relative", "transaction_id": tx,
            "max_offline_duration": OCPP_MAX_OFFLINE_S,
            "charging_schedule": [{"id": 1, "charging_rate_unit": "W",
                                   "charging_schedule_period": [{
                                       "start_period": 0, "operation_mode": "CentralSetpoint",
                                       "setpoint": -OCPP_DISCHARGE_W,
                                       "discharge_limit": -40_000.0}]}]}))
        _go(s, f"CSMS: TxProfile CentralSetpoint {-OCPP_DISCHARGE_W / 1000:.0f} kW, "
               f"maxOfflineDuration {OCPP_MAX_OFFLINE_S} s: {r.status}", t)
    elif s.stage.startswith("CSMS: TxProfile") and t - s.stage_since > 40.0:
        await csms.stop()
        _go(s, "the central system goes offline", t)
    elif s.stage.startswith("the central system goes") and t - s.stage_since > OCPP_OFFLINE_S:
        await csms.start(pile.csms_port)
        _go(s, "the central system is back", t)


_ocpp_step = _end_after("the central system is back", 30.0)


def _ocpp_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile) + _ledger_matches_battery(pile)
    csms = pile.csms
    offline = next((float(n.split()[0]) for n in s.notes if "goes offline" in n), None)
    if csms is None or offline is None:
        return [*out, "the central system never went offline"]
    late = [(t, i) for t, i in pile.result.current_trace
            if t > offline + OCPP_MAX_OFFLINE_S + 3.0 and i < -5.0
            and not any("is back" in n and float(n.split()[0]) < t for n in s.notes)]
    if late:
        out.append(f"discharging {late[0][1]:.1f} A at {late[0][0]:.1f} s: the profile "
                   f"outlived its maxOfflineDuration ({OCPP_MAX_OFFLINE_S} s)")
    stopped = next((t for t, i in pile.result.current_trace if t > offline and i >= -5.0),
                   None)
    if stopped is not None:
        s.notes.append(f"{'':8} discharge stopped {stopped - offline:.1f} s after the link "
                       f"was lost (maxOfflineDuration {OCPP_MAX_OFFLINE_S} s)")
    events = csms.of("TransactionEvent")
    seqs = [e["seq_no"] for e in events]
    if seqs != list(range(len(seqs))):
        out.append(f"transaction events out of order or lost: seqNo {seqs}")
    kinds = [e["event_type"] for e in events]
    if kinds[:1] != ["Started"] or kinds[-1:] != ["Ended"]:
        out.append(f"transaction events {kinds[:1]}...{kinds[-1:]}: no Started or no Ended")
    replayed = sum(1 for e in events if e.get("offline"))
    s.notes.append(f"{'':8} {len(events)} transaction events, seqNo 0..{len(events) - 1} in "
                   f"order; {replayed} recorded offline and replayed after reconnect")
    if replayed == 0:
        out.append("no transaction event was recorded while offline")
    if not any(e["event_type"] == "Updated" and any(
            v["measurand"] == "Energy.Active.Export.Register"
            for mv in e.get("meter_value", []) for v in mv["sampled_value"]) for e in events):
        out.append("no meter value with Energy.Active.Export.Register")
    return out


# ---- vpp-peak-shaving-18h ---------------------------------------------------------------

PEAK_FROM_S, PEAK_TO_S = 18 * 3600.0, 21 * 3600.0
PEAK_W, PEAK_REVERT_S, PEAK_REFRESH_S = 5_000, 60, 30.0


def hhmm(site_s: float) -> str:
    s = round(site_s) % 86400
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def parse_hhmm(text: str) -> float | None:
    """'HH:MM' or 'HH:MM:SS' -> seconds after midnight (None: not a time of day)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        return None
    h, m, sec = (int(p) for p in (*parts, "0")[:3])
    return h * 3600.0 + m * 60.0 + sec if h < 24 and m < 60 and sec < 60 else None


async def _peak18_vpp(pile: SimulatedPile, s: Script, t: float) -> None:
    """The VPP over SunSpec Modbus: from 18:00 to 21:00 site time it dispatches 5 kW of
    discharge (WSetRvrtTms 60 s, refreshed every 30 s); at 21:00 it releases the pile."""
    vpp = pile.vpp
    if vpp is None or not _charging(pile):
        return
    now = pile.site_s(t)
    if PEAK_FROM_S <= now < PEAK_TO_S:
        if not s.stage.startswith("VPP dispatch"):
            _go(s, f"VPP dispatch {PEAK_W / 1000:.0f} kW at {hhmm(now)}", t)
        if t - s.last_sent >= PEAK_REFRESH_S:
            await vpp.dispatch(PEAK_W, PEAK_REVERT_S)
            s.last_sent = t
    elif now >= PEAK_TO_S and s.stage.startswith("VPP dispatch"):
        await vpp.release()
        _go(s, f"VPP release at {hhmm(now)}", t)


def _peak18_step(pile: SimulatedPile, s: Script, t: float) -> list[Event]:
    m = pile.module_sim
    if _charging(pile):
        s.power.append((t, m.current_a * m.output_voltage_v))
    end = pile.site_end_s
    if end is not None and pile.site_s(t) >= end and s.stage != "end":
        _go(s, "end", t)
        return [StopRequested(t, f"owner departs at {hhmm(end)}")]
    return []


def _peak18_check(pile: SimulatedPile, s: Script) -> list[str]:
    out = _common(pile)
    start = pile.site_s(0.0)
    at = [(pile.site_s(t), i) for t, i in pile.result.current_trace]
    early = [(x, i) for x, i in at if x < PEAK_FROM_S and i < -5.0]
    if early:
        out.append(f"discharging {early[0][1]:.1f} A at {hhmm(early[0][0])}, before 18:00")
    late = [(x, i) for x, i in at if x >= PEAK_TO_S + 5.0 and i < -5.0]
    if late:
        out.append(f"discharging {late[0][1]:.1f} A at {hhmm(late[0][0])}, released at 21:00")
    ends = at[-1][0] if at else start
    if start < PEAK_FROM_S and ends > PEAK_FROM_S + 20.0:
        began = next((x for x, i in at if x >= PEAK_FROM_S and i < -5.0), None)
        if began is None or began - PEAK_FROM_S > 15.0:
            out.append(f"discharge began at {hhmm(began) if began else 'never'}: more than "
                       "15 s after the 18:00 dispatch")
        else:
            s.notes.append(f"{'':8} discharge began {began - PEAK_FROM_S:.1f} s after 18:00")
    steady = sorted(p for t, p in s.power
                    if PEAK_FROM_S + 30.0 <= pile.site_s(t) < PEAK_TO_S)
    if steady:
        median = steady[len(steady) // 2]
        s.notes.append(f"{'':8} DC power while dispatched: median {median / 1000:.2f} kW over "
                       f"{len(steady)} samples")
        if abs(-median - PEAK_W) > 0.05 * PEAK_W and not _held(pile, ""):
            out.append(f"dispatched {PEAK_W} W, discharged {-median:.0f} W (median)")
    if ends >= PEAK_TO_S + 30.0:
        stopped = next((x for x, i in at if x >= PEAK_TO_S and i >= -5.0), None)
        if stopped is not None:
            s.notes.append(f"{'':8} discharge stopped {stopped - PEAK_TO_S:.1f} s after the "
                           "21:00 release")
        if not any(x > PEAK_TO_S and i > 5.0 for x, i in at):
            out.append("no charging after the release")
    if pile.bms.battery.energy_out_kwh > 0:
        out += _ledger_matches_battery(pile)
    return out


_V2G_CAR = VehicleConfig(start_soc_pct=70.0, target_soc_pct=80.0, v2g=True,
                         stop_at_target=False, soc_floor_pct=60.0, energy_window_kwh=30.0)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("v2g-peak-shaving",
             "charge to 80 %, discharge 150 A at the evening peak down to the 60 % floor, "
             "charge back to the 70 % departure SOC", _V2G_CAR, _peak_step, _peak_check),
    Scenario("consent-withdrawn", "discharging at 100 A, the owner withdraws consent",
             replace(_V2G_CAR, start_soc_pct=75.0), _consent_step, _consent_check),
    Scenario("soc-floor", "discharge at 200 A from 62 % until the 60 % floor",
             replace(_V2G_CAR, start_soc_pct=62.0), _floor_step, _floor_check),
    Scenario("direction-changes", "the setpoint flips between -120 A and +120 A every 2 min",
             replace(_V2G_CAR, start_soc_pct=72.0), _flip_step, _flip_check),
    Scenario("charge-only-car", "a GB/T 27930-2015 car that never answers the V2G offer",
             VehicleConfig(start_soc_pct=70.0, target_soc_pct=75.0), _charge_only_step,
             _charge_only_check),
    Scenario("frequency-step",
             f"discharging {DISCHARGE_W / 1000:.0f} kW for the VPP, the grid frequency steps "
             f"{STEP_FROM_HZ:.2f} -> {STEP_TO_HZ:.2f} Hz: the droop (5 %, dead band 36 mHz) "
             "raises the discharge within 1 s",
             replace(_V2G_CAR, start_soc_pct=75.0), _freq_step, _freq_check,
             upstream=UpstreamPolicy(droop=FREQ_DROOP)),
    Scenario("upstream-lost",
             f"the VPP dispatches {LOST_DISPATCH_W / 1000:.0f} kW over SunSpec Modbus TCP, then "
             f"its link drops mid-discharge: the discharge stops within the {LOST_REVERT_S} s "
             "reversion time and charging resumes on the fallback",
             replace(_V2G_CAR, start_soc_pct=75.0), _lost_step, _lost_check,
             ems=EmsSettings(allow_discharge=True), vpp=_lost_vpp),
    Scenario("vpp-peak-shaving-18h",
             f"a V2G car parked at 17:58; the VPP dispatches {PEAK_W / 1000:.0f} kW over SunSpec "
             "Modbus from 18:00 and releases the pile at 21:00; the car charges back and the "
             "owner leaves at 21:20 (--site-time / --site-until move the window)",
             replace(_V2G_CAR, start_soc_pct=80.0, target_soc_pct=80.0, soc_floor_pct=30.0),
             _peak18_step, _peak18_check, ems=EmsSettings(allow_discharge=True),
             vpp=_peak18_vpp, max_sim_s=4 * 3600.0,
             site_start_s=17 * 3600.0 + 58 * 60.0, site_end_s=21 * 3600.0 + 20 * 60.0),
    Scenario("ocpp-offline-replay",
             f"the central system dispatches {OCPP_DISCHARGE_W / 1000:.0f} kW over OCPP 2.1, then "
             f"goes offline for {OCPP_OFFLINE_S:.0f} s: the profile lapses after its "
             f"maxOfflineDuration ({OCPP_MAX_OFFLINE_S} s), transaction events recorded offline "
             "are replayed in order after reconnect",
             replace(_V2G_CAR, start_soc_pct=75.0), _ocpp_step, _ocpp_check,
             vpp=_ocpp_csms, csms=True),
)}
