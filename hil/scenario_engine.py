"""The engine that runs a scenario file (hil/scenario_file.py) inside `pile-agent sim`.

Each simulated instant the pile calls `act` (the next step fires when its condition holds;
setpoints and VPP dispatches are refreshed while they stand), then `observe` (the plant's
current, voltage, SOC and temperature are recorded, and the judgements that must be made as
they happen, such as the safe state after a fault, are made). At the end `judge` measures
each expectation from what was recorded, with its figure: PASS, FAIL or N/A (the run did
not cover its window).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.events import Event, StopRequested, UpstreamLimit, UpstreamSetpoint
from agent.core.states import State
from agent.ledger.settlement import Summary
from hil.scenario_file import Expectation, ScenarioFile, Step
from hil.series import EventSeries, HeldSeries
from hil.site_clock import hhmm, parse_hhmm

if TYPE_CHECKING:
    from hil.sim import SimulatedPile

SAFE_A = 5.0  # GB 44263-2024 §8.2.1 / IEC 61851-23 CC.3.4: "<= 5 A" is the safe current
# A limit the module reports takes effect with the next status read and the decision after
# it: one module poll (100 ms) and one step.
LIMIT_GRACE_S = 0.5
# The module's current loop settles within IEC 61851-23 101.2.1.2.1's accuracy (+-2.5 A).
REGULATION_A = 2.5
POWER_WINDOW_BEFORE_S, POWER_AFTER_FROM_S, POWER_AFTER_TO_S = 10.0, 20.0, 29.0


@dataclass
class Verdict:
    name: str
    measure: str
    status: str  # PASS, FAIL, N/A
    measured: str  # the figure, as text
    detail: str = ""
    source: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


@dataclass
class _Online:
    """A judgement made while the run goes (a fault's safe state, a held limit, a notice)."""

    exp: Expectation
    verdict: Verdict | None = None
    safe_at: float | None = None
    worst_a: float = 0.0


@dataclass
class Recording:
    """What the run looked like: compact series for the expectations and the report."""

    current_a: HeldSeries = field(default_factory=lambda: HeldSeries(0.02))
    voltage_v: HeldSeries = field(default_factory=lambda: HeldSeries(0.2))
    commanded_a: HeldSeries = field(default_factory=lambda: HeldSeries(0.05))
    soc_pct: HeldSeries = field(default_factory=lambda: HeldSeries(0.05))
    module_c: HeldSeries = field(default_factory=lambda: HeldSeries(0.2))
    setpoint: EventSeries = field(default_factory=EventSeries)
    bound_by: EventSeries = field(default_factory=EventSeries)
    marks: list[tuple[float, str]] = field(default_factory=list)  # steps and faults
    end_s: float = 0.0

    def close(self, t: float) -> None:
        self.end_s = t
        for s in (self.current_a, self.voltage_v, self.commanded_a, self.soc_pct,
                  self.module_c):
            s.close()

    def samples(self) -> list[tuple[float, float, float]]:
        """(t, A, V) at each stored current sample, the voltage as held then."""
        out, vs = [], list(self.voltage_v.points())
        k, v = 0, vs[0][1] if vs else 0.0
        for t, i in self.current_a.points():
            while k < len(vs) and vs[k][0] <= t:
                v = vs[k][1]
                k += 1
            out.append((t, i, v))
        return out


class ScenarioRun:
    def __init__(self, sf: ScenarioFile) -> None:
        self.sf = sf
        self.next_step = 0
        self.fired: dict[str, float] = {}
        self.notes: list[str] = []
        self.rec = Recording()
        self.setpoint: tuple[str, float] | None = None  # ("A" | "W", value)
        self.setpoint_sent_at = -math.inf
        self.vpp_dispatch: tuple[float, int, float] | None = None  # (W, revert s, refresh s)
        self.vpp_last_write: float | None = None
        self.vpp_read: float | None = None
        self.vpp_read_at: float | None = None
        self.online = [_Online(e) for e in sf.expectations
                       if e.measure in ("safe_state_s", "commanded_at_most_a",
                                        "notice_after_s")]
        self.fault_step: str | None = next(
            (s.name for s in sf.steps if any(k in s.do for k in
                                             ("set", "car_silent", "meter_reset"))), None)
        self._power_buffer: deque[tuple[float, float]] = deque()
        self._power_after: dict[str, list[tuple[float, float]]] = {}
        self._power_steps = {e.get("from") for e in sf.expectations
                             if e.measure in ("power_change_w", "time_to_90pct_s")}
        self._power_before: dict[str, list[tuple[float, float]]] = {}

    # ---- acting ---------------------------------------------------------------------

    async def act(self, pile: SimulatedPile, t: float) -> list[Event]:
        out: list[Event] = []
        while self.next_step < len(self.sf.steps):
            step = self.sf.steps[self.next_step]
            if not self._due(pile, step, t):
                break
            self.next_step += 1
            self.fired[step.name] = t
            self.rec.marks.append((t, step.name))
            self._say(pile, t, step.name)
            out += await self._do(pile, step, t)
        out += self._refresh_setpoint(pile, t)
        await self._refresh_vpp(pile, t)
        return out

    def _say(self, pile: SimulatedPile, t: float, text: str) -> None:
        site = f" ({hhmm(pile.site_s(t))})" if pile.site_start_s is not None else ""
        self.notes.append(f"{t:8.1f} s{site}  {text}")
        pile.say(f"[{t:8.2f} s] step: {text}")

    def _previous_at(self) -> float:
        return max(self.fired.values(), default=0.0)

    def _due(self, pile: SimulatedPile, step: Step, t: float) -> bool:
        w, r = step.when, pile.result
        since = self._previous_at()
        if t - since < w.get("after_s", 0.0) - 1e-9 or t < w.get("at_s", 0.0) - 1e-9:
            return False
        if "at_site_time" in w:
            at = parse_hhmm(w["at_site_time"]) or 0.0
            if pile.site_start_s is None or (pile.site_s(t) - at) % 86400 > 43200:
                return False
        if "charging_for_s" in w:
            began = pile.charging_began()
            if began is None or t - began < w["charging_for_s"] - 1e-9:
                return False
        soc = pile.bms.battery.soc_pct
        if soc < w.get("soc_at_least", -math.inf) or soc > w.get("soc_at_most", math.inf):
            return False
        if "notice" in w and not any(
                kind == w["notice"] and w.get("notice_text", "") in detail and ts >= since
                for ts, kind, detail in r.notices):
            return False
        if w.get("transaction_started"):
            csms = pile.csms
            if csms is None or not any(e["event_type"] == "Started"
                                       for e in csms.of("TransactionEvent")):
                return False
        return True

    async def _do(self, pile: SimulatedPile, step: Step, t: float) -> list[Event]:
        d, out = step.do, list[Event]()
        if "setpoint_a" in d:
            self.setpoint, self.setpoint_sent_at = ("A", d["setpoint_a"]), -math.inf
        if "setpoint_w" in d:
            self.setpoint, self.setpoint_sent_at = ("W", d["setpoint_w"]), -math.inf
        if d.get("release_setpoint"):
            self.setpoint = None
        if "car" in d:
            pile.bms.config = dataclasses.replace(pile.bms.config, **d["car"])
        if "consent" in d:
            pile.bms.consent = d["consent"]
        for key, value in d.get("set", {}).items():
            target, attr = key.split(".")
            obj = pile.set_target(target)
            if not hasattr(obj, attr):
                raise AttributeError(f"{self.sf.path}:{step.line}: step {step.name!r}: "
                                     f"set {key!r}: the {target} simulator has no {attr!r}")
            setattr(obj, attr, value)
        if d.get("car_silent"):
            pile.bms.silence(t)
        if d.get("car_stop"):
            pile.bms.request_stop()
        if d.get("meter_reset"):
            pile.meter_sim.to_vehicle_kwh = pile.meter_sim.from_vehicle_kwh = 0.0
        if "grid_frequency_hz" in d:
            pile.module_sim.grid_frequency_hz = d["grid_frequency_hz"]
        if "vpp_dispatch_w" in d:
            self.vpp_dispatch = (d["vpp_dispatch_w"], d.get("vpp_revert_s", 60),
                                 d.get("vpp_refresh_s", 30.0))
            await self._refresh_vpp(pile, t, force=True)
        if d.get("vpp_release") and pile.vpp is not None:
            self.vpp_dispatch = None
            await pile.vpp.release()
            self.vpp_last_write = t
        if d.get("vpp_drop") and pile.vpp is not None:
            self.vpp_dispatch = None
            pile.vpp.drop()
        if d.get("vpp_read") and pile.vpp is not None:
            self.vpp_read, self.vpp_read_at = await pile.vpp.read_power_w(), t
            self.notes.append(f"{'':8} VPP reads W = {self.vpp_read} W (SunSpec: + = injection)")
        if "csms_profile" in d:
            await self._send_profile(pile, d["csms_profile"])
        if d.get("csms_offline") and pile.csms is not None:
            await pile.csms.stop()
        if d.get("csms_online") and pile.csms is not None:
            await pile.csms.start(pile.csms_port)
        if "stop" in d:
            out.append(StopRequested(t, d["stop"]))
        return out

    def _refresh_setpoint(self, pile: SimulatedPile, t: float) -> list[Event]:
        """The EMS re-sends its setpoint every refresh, valid for twice that, while the
        session charges (as a dispatch platform does)."""
        refresh = self.sf.upstream.setpoint_refresh_s
        if self.setpoint is None or pile.session.state is not State.CHARGING \
                or t - self.setpoint_sent_at < refresh:
            return []
        self.setpoint_sent_at = t
        unit, value = self.setpoint
        self.rec.setpoint.add(t, f"{value:g} {unit}")
        if unit == "A":
            return [UpstreamLimit(t, "ems", value, t + 2 * refresh)]
        return [UpstreamSetpoint(t, "ems", t + 2 * refresh, setpoint=value, unit="W")]

    async def _refresh_vpp(self, pile: SimulatedPile, t: float, force: bool = False) -> None:
        if self.vpp_dispatch is None or pile.vpp is None \
                or pile.session.state is not State.CHARGING:
            return
        w, revert, refresh = self.vpp_dispatch
        if force or self.vpp_last_write is None or t - self.vpp_last_write >= refresh:
            await pile.vpp.dispatch(int(w), revert)
            self.vpp_last_write = t
            self.rec.setpoint.add(t, f"VPP {w:g} W")

    async def _send_profile(self, pile: SimulatedPile, request: dict[str, Any]) -> None:
        """SetChargingProfile as the file writes it (OCPP-J keys); transactionId "current"
        is the transaction the central system saw start."""
        csms = pile.csms
        if csms is None or not csms.stations:
            self.notes.append(f"{'':8} SetChargingProfile: no station connected")
            return
        started = [e for e in csms.of("TransactionEvent") if e["event_type"] == "Started"]
        tx = started[-1]["transaction_info"]["transaction_id"] if started else None
        side = next(iter(csms.stations.values()))
        answer = await side.call("SetChargingProfile", _with_transaction(request, tx))
        self.notes.append(f"{'':8} SetChargingProfile: {answer.status}")
        self.rec.setpoint.add(pile.clock.now(), "OCPP profile")

    # ---- observing --------------------------------------------------------------------

    def observe(self, pile: SimulatedPile, t: float) -> None:
        m, rec = pile.module_sim, self.rec
        rec.current_a.add(t, m.current_a)
        rec.voltage_v.add(t, m.output_voltage_v)
        rec.commanded_a.add(t, pile.session.act.current_a)
        rec.soc_pct.add(t, pile.bms.battery.soc_pct)
        rec.module_c.add(t, m.temperature_c)
        if self._power_steps:
            self._observe_power(t, m.current_a * m.output_voltage_v)
        for o in self.online:
            if o.verdict is None:
                self._judge_online(pile, o, t)

    def _observe_power(self, t: float, p: float) -> None:
        buf = self._power_buffer
        buf.append((t, p))
        while buf and buf[0][0] < t - POWER_WINDOW_BEFORE_S:
            buf.popleft()
        for name in self._power_steps:
            at = self.fired.get(name)
            if at is None:
                continue
            if name not in self._power_before:
                self._power_before[name] = [s for s in buf if s[0] < at]
            if t <= at + POWER_AFTER_TO_S:
                self._power_after.setdefault(name, []).append((t, p))

    def over(self) -> bool:
        """The run is over when the file says so and every online judgement is in."""
        return self.sf.end_when_judged and bool(self.online) \
            and all(o.verdict is not None for o in self.online)

    def judging(self, pile: SimulatedPile) -> bool:
        """An online judgement has started (its anchor came) and is not in yet: the run
        goes on until it is (each gives its verdict by its deadline plus 5 s)."""
        now = pile.clock.now()
        return any(o.verdict is None and (at := self._anchor(pile, o.exp.get("from")))
                   is not None and at <= now for o in self.online)

    def _judge_online(self, pile: SimulatedPile, o: _Online, t: float) -> None:
        e = o.exp
        at = self._anchor(pile, e.get("from"))
        if at is None or t < at:
            return
        since = t - at
        deadline = float(e.get("at_most") if not isinstance(e.get("at_most"), list)
                         else e.get("hold_s", 0.0))
        if e.measure == "safe_state_s":
            self._judge_safe(pile, o, t, since, deadline)
        elif e.measure == "commanded_at_most_a":
            self._judge_held_limit(pile, o, since)
        else:
            self._judge_notice(pile, o, at, since, deadline)

    def _judge_safe(self, pile: SimulatedPile, o: _Online, t: float, since: float,
                    deadline: float) -> None:
        m, state = pile.module_sim, pile.session.state.value
        states = o.exp.get("states", ["fault"])
        in_state = not states or state in states
        safe = in_state and abs(m.current_a) <= SAFE_A and m._get("contactor_command") == 0
        if safe and o.safe_at is None:
            o.safe_at = t
        elif not safe:
            o.safe_at = None  # it must stay safe, not just pass through
        hold = o.exp.get("hold_s", 1.0)
        e, at = o.exp, t - since
        if o.safe_at is not None and t - o.safe_at >= hold:
            took = o.safe_at - at
            o.verdict = self._verdict(e, took <= deadline, f"{took:.2f}",
                                      f"safe state ({state}, <= 5 A, K1/K2 commanded open) "
                                      f"{took:.2f} s after {e.get('from')}; deadline "
                                      f"{deadline:g} s")
        elif since > deadline + 5.0 or (pile.result.states and
                                        pile.session.state is State.IDLE):
            o.verdict = self._verdict(
                e, False, "not safe", f"NOT safe {since:.1f} s after {e.get('from')} (state "
                f"{state}, {m.current_a:.1f} A, K1/K2 "
                f"{'closed' if m.contactors_closed else 'open'}); deadline {deadline:g} s")

    def _limit(self, pile: SimulatedPile, spec: Any) -> float:
        """A number, or the least of references such as "gun.max_current_a"."""
        if not isinstance(spec, list):
            return float(spec)
        values = []
        for ref in spec:
            if isinstance(ref, int | float):
                values.append(float(ref))
                continue
            owner, attr = str(ref).split(".")
            obj = pile.ratings if owner == "gun" else pile.bms.config
            values.append(float(getattr(obj, attr)))
        return min(values)

    def _judge_held_limit(self, pile: SimulatedPile, o: _Online, since: float) -> None:
        """A fault the agent must ride out: its commanded current (and the module's, within
        the regulation accuracy) stays within the limit from LIMIT_GRACE_S after `from`,
        for hold_s, and the session stays in `states`."""
        e = o.exp
        limit = self._limit(pile, e.get("at_most"))
        if since >= LIMIT_GRACE_S:
            o.worst_a = max(o.worst_a, abs(pile.session.act.current_a))
        module_a = abs(pile.module_sim.current_a)
        if o.worst_a > limit + 1e-9 or (since >= LIMIT_GRACE_S + 0.5
                                        and module_a > limit + REGULATION_A):
            worst = max(o.worst_a, module_a)
            o.verdict = self._verdict(e, False, f"{worst:.1f}",
                                      f"current {worst:.1f} A above the {limit:.1f} A limit")
        elif since >= e.get("hold_s", 5.0):
            states = e.get("states", [])
            state = pile.session.state.value
            ok = not states or state in states
            o.verdict = self._verdict(e, ok, f"{o.worst_a:.1f}",
                                      f"for {since:.1f} s commanded at most {o.worst_a:.1f} A "
                                      f"(limit {limit:.1f} A); state {state}")

    def _judge_notice(self, pile: SimulatedPile, o: _Online, at: float, since: float,
                      deadline: float) -> None:
        e = o.exp
        said = [n for n in pile.result.notices if n[1] == e.get("notice") and n[0] >= at
                and e.get("notice_text", "") in n[2]]
        if not said and since <= deadline:
            return
        states = e.get("states", [])
        state = pile.session.state.value
        if said:
            took = said[0][0] - at
            o.verdict = self._verdict(e, took <= deadline and (not states or state in states),
                                      f"{took:.2f}", f"{e.get('notice')} said {took:.2f} s "
                                      f"after {e.get('from')} ({said[0][2]}); state {state}")
        else:
            o.verdict = self._verdict(e, False, "never",
                                      f"no {e.get('notice')} within {deadline:g} s")

    def _verdict(self, e: Expectation, ok: bool | None, measured: str, detail: str) -> Verdict:
        status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
        return Verdict(e.name, e.measure, status, measured, detail, e.get("source", ""))

    # ---- anchors and windows ------------------------------------------------------------

    def _anchor(self, pile: SimulatedPile, name: str | None, end: float | None = None) -> \
            float | None:
        """Simulated time of a window's anchor: a step (when it fired), a site time, the
        start, the end, the VPP's last write; None: not (yet) there."""
        if name is None or name == "start":
            return 0.0
        if name == "end":
            return end
        if name == "vpp_last_write":
            return self.vpp_last_write
        if name in self.fired:
            return self.fired[name]
        at = parse_hhmm(name)
        if at is not None and pile.site_start_s is not None:
            offset = at - pile.site_start_s
            return offset + 86400 if offset < -43200 else offset  # across midnight
        return None

    # ---- judging ------------------------------------------------------------------------

    def judge(self, pile: SimulatedPile) -> list[Verdict]:
        self.rec.close(pile.clock.now())
        out = []
        for e in self.sf.expectations:
            online = next((o for o in self.online if o.exp is e), None)
            if online is not None:
                out.append(online.verdict or self._verdict(
                    e, False, "never judged", f"{e.get('from')} never happened or the run "
                    "ended before the judgement"))
                continue
            if e.measure not in ("net_to_owner_cny", "discharge_revenue_cny"):
                out.append(self._judge_after(pile, e))
        return out

    def judge_settlement(self, summary: Summary) -> list[Verdict]:
        """The expectations on what the run's ledger settles to (after the ledger closed
        the session); the rest were judged by `judge`."""
        out = []
        for e in self.sf.expectations:
            if e.measure not in ("net_to_owner_cny", "discharge_revenue_cny"):
                continue
            value = summary.net_cny if e.measure == "net_to_owner_cny" \
                else summary.discharge_revenue_cny
            ok, wanted = compare(e, value)
            out.append(self._verdict(e, ok, f"{value:.2f}", f"{e.measure.replace('_', ' ')}:"
                                     f" {value:.2f}, expected {wanted}"))
        return out

    def _judge_after(self, pile: SimulatedPile, e: Expectation) -> Verdict:
        try:
            value, detail = self._measure(pile, e)
        except _NotCovered as exc:
            return self._verdict(e, None, "n/a", str(exc))
        except _Missing as exc:
            return self._verdict(e, False, "missing", str(exc))
        ok, wanted = compare(e, value)
        shown = show(value)
        return self._verdict(e, ok, shown, f"{detail or e.measure}: {shown}, expected {wanted}")

    def _window(self, pile: SimulatedPile, e: Expectation) -> tuple[float, float]:
        end = self.rec.end_s
        start_name, stop_name = e.get("from"), e.get("to")
        start = self._anchor(pile, start_name, end)
        if start is None:
            raise _Missing(f"{start_name} never happened")
        start += e.get("from_offset_s", 0.0)
        stop = self._anchor(pile, stop_name, end) if stop_name else end
        stop = end if stop is None else stop + e.get("to_offset_s", 0.0)
        if parse_hhmm(start_name or "") is not None and not 0.0 <= start <= end:
            raise _NotCovered(f"the run ({self._span(pile)}) does not reach {start_name}")
        if stop_name and parse_hhmm(stop_name) is not None and stop <= 0.0:
            raise _NotCovered(f"the run ({self._span(pile)}) starts after {stop_name}")
        return start, min(stop, end)

    def _span(self, pile: SimulatedPile) -> str:
        return f"{hhmm(pile.site_s(0.0))}-{hhmm(pile.site_s(self.rec.end_s))}"

    def _measure(self, pile: SimulatedPile, e: Expectation) -> tuple[Any, str]:
        r, m = pile.result, e.measure
        if m == "outcome":
            return r.outcome, f"session ({r.reason})"
        if m == "state_reached":
            return r.furthest_state, "furthest state"
        phases = [d for _t, d in r.phases]
        if m == "phases":
            return phases, "energy-transfer phases"
        if m == "phase_count":
            return len(phases), "energy-transfer phases"
        if m == "last_phase":
            return (phases[-1] if phases else "none"), "last phase"
        if m == "final_soc_pct":
            return pile.bms.battery.soc_pct, "final SOC, %"
        if m == "min_soc_pct":
            return r.min_soc_pct, "lowest SOC while charging, %"
        if m == "ledger_vs_battery_pct":
            battery, ledger = pile.bms.battery.energy_out_kwh, r.ledger_from_vehicle_kwh
            if ledger is None or battery <= 0:
                raise _Missing(f"no discharge metered (ledger {ledger}, battery "
                               f"{battery:.3f} kWh)")
            return abs(ledger - battery) / battery * 100.0, \
                f"ledger discharged {ledger:.3f} kWh, battery gave {battery:.3f} kWh, off by (%)"
        if m == "v2g_negotiated":
            return pile.session.data.v2g_negotiated, "V2G negotiated"
        if m == "vpp_read_w":
            if self.vpp_read is None:
                raise _Missing("the VPP never read 701 W")
            return self.vpp_read, "the VPP read 701 W, W"
        if m == "notice_count":
            start, stop = self._window(pile, e)
            n = sum(1 for ts, kind, detail in r.notices if kind == e.get("notice")
                    and e.get("notice_text", "") in detail and start <= ts <= stop)
            return n, f"{e.get('notice')} notices"
        if m.startswith("tx_"):
            return self._transactions(pile, m)
        if m in ("power_change_w", "time_to_90pct_s"):
            return self._power_response(e)
        return self._from_samples(pile, e)

    def _from_samples(self, pile: SimulatedPile, e: Expectation) -> tuple[Any, str]:
        start, stop = self._window(pile, e)
        pts = [(t, i, v) for t, i, v in self.rec.samples() if t <= stop]
        held = [p for p in pts if p[0] >= start]
        before = [p for p in pts if p[0] < start]
        if before:  # the value held when the window opened
            held.insert(0, (start, before[-1][1], before[-1][2]))
        if not held or stop < start:
            raise _NotCovered("the run has no samples in the window")
        m, where = e.measure, f"({start:.1f}-{stop:.1f} s)"
        if m == "max_discharge_a":
            return max(max(-i for _t, i, _v in held), 0.0), f"most discharge {where}, A"
        if m == "max_charge_a":
            return max(max(i for _t, i, _v in held), 0.0), f"most charge {where}, A"
        if m == "max_current_a":
            return max(abs(i) for _t, i, _v in held), f"largest |current| {where}, A"
        if m == "discharge_began_s":
            began = next((t for t, i, _v in held if i < -SAFE_A), None)
            if began is None:
                raise _Missing(f"no discharge above 5 A after {e.get('from')}")
            return began - start, f"discharge began after {e.get('from')}, s"
        if m == "discharge_stopped_s":
            stopped = next((t for t, i, _v in held if i >= -SAFE_A), None)
            if stopped is None:
                raise _Missing(f"still discharging at the end of the window {where}")
            return stopped - start, f"discharge stopped after {e.get('from')}, s"
        if m == "median_power_w":
            return _median_held(held, stop), f"median DC power {where}, W"
        if m == "jumps_across_zero":
            return _jumps(held), "sign changes that skipped <= 5 A"
        raise _Missing(f"measure {m} has no samples")

    def _power_response(self, e: Expectation) -> tuple[Any, str]:
        name = e.get("from")
        at = self.fired.get(name)
        before, after = self._power_before.get(name, []), self._power_after.get(name, [])
        if at is None or not before or not after:
            raise _Missing(f"{name} never happened (or nothing was sampled around it)")
        later = [p for t, p in after if at + POWER_AFTER_FROM_S <= t < at + POWER_AFTER_TO_S]
        if not later:
            raise _Missing(f"the run ended before {POWER_AFTER_TO_S:g} s after {name}")
        p0 = sum(p for _t, p in before) / len(before)
        p1 = sum(later) / len(later)
        if e.measure == "power_change_w":
            self.notes.append(f"{'':8} power {p0 / 1000:.2f} kW -> {p1 / 1000:.2f} kW after "
                              f"{name}")
            return p1 - p0, f"power {p0 / 1000:.2f} -> {p1 / 1000:.2f} kW, change (W)"
        reached = next((t for t, p in after if abs(p - p1) <= 0.1 * abs(p1 - p0)), None)
        took = (reached - at) if reached is not None else math.inf
        self.notes.append(f"{'':8} power within 10 % of its new level {took:.2f} s after {name}")
        return took, "to 90 % of the change, s"

    def _transactions(self, pile: SimulatedPile, m: str) -> tuple[Any, str]:
        csms = pile.csms
        assert csms is not None
        events = csms.of("TransactionEvent")
        if m == "tx_seq_in_order":
            seqs = [e["seq_no"] for e in events]
            return seqs == list(range(len(seqs))), f"seqNo {seqs[:3]}...{seqs[-3:]} in order"
        if m == "tx_started_and_ended":
            kinds = [e["event_type"] for e in events]
            return kinds[:1] == ["Started"] and kinds[-1:] == ["Ended"], \
                f"first {kinds[:1]}, last {kinds[-1:]}"
        if m == "tx_offline_events":
            return sum(1 for e in events if e.get("offline")), \
                f"of {len(events)} transaction events, replayed after reconnect:"
        return any(e["event_type"] == "Updated" and any(
            v["measurand"] == "Energy.Active.Export.Register"
            for mv in e.get("meter_value", []) for v in mv["sampled_value"])
            for e in events), "Energy.Active.Export.Register reported"


def _with_transaction(data: Any, tx: str | None) -> Any:
    if isinstance(data, dict):
        return {k: (tx if k == "transactionId" and v == "current" else
                    _with_transaction(v, tx)) for k, v in data.items()}
    if isinstance(data, list):
        return [_with_transaction(v, tx) for v in data]
    return data


class _NotCovered(Exception):
    """The run did not cover the expectation's window: N/A."""


class _Missing(Exception):
    """What the expectation measures never happened: FAIL."""


def _median_held(held: list[tuple[float, float, float]], stop: float) -> float:
    """The time-weighted median of the DC power over the window."""
    spans = []
    for k, (t, i, v) in enumerate(held):
        nxt = held[k + 1][0] if k + 1 < len(held) else stop
        spans.append((i * v, max(nxt - t, 0.0)))
    spans.sort()
    total, acc = sum(d for _p, d in spans), 0.0
    for p, d in spans:
        acc += d
        if acc >= total / 2:
            return p
    return spans[-1][0] if spans else 0.0


def _jumps(held: list[tuple[float, float, float]]) -> int:
    prev, low_seen, n = 0.0, True, 0
    for _t, i, _v in held:
        if abs(i) <= SAFE_A:
            low_seen = True
            continue
        if prev * i < 0 and not low_seen:
            n += 1
        prev, low_seen = i, False
    return n


def compare(e: Expectation, value: Any) -> tuple[bool, str]:
    wanted, ok = [], True
    if "equals" in e.spec:
        ok &= value == e.get("equals")
        wanted.append(f"= {show(e.get('equals'))}")
    if "starts_with" in e.spec:
        head = list(e.get("starts_with"))
        ok &= isinstance(value, list) and value[:len(head)] == head
        wanted.append(f"starting {head}")
    if "at_least" in e.spec:
        ok &= value >= e.get("at_least")
        wanted.append(f">= {show(e.get('at_least'))}")
    if "at_most" in e.spec:
        ok &= value <= e.get("at_most")
        wanted.append(f"<= {show(e.get('at_most'))}")
    if "near" in e.spec:
        near, tol = e.get("near"), e.get("tolerance_pct")
        ok &= abs(value - near) <= abs(near) * tol / 100.0
        wanted.append(f"{show(near)} +- {tol:g} %")
    return bool(ok), " and ".join(wanted)


def show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)
