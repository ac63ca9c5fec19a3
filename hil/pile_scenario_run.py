"""One run of a pile scenario file: its steps fired at their times, what its expectations
need watched as the run goes, and the verdicts at the end (the pile's invariants first).

Every step time is known when the run starts (a number or an expression in n), so each
expectation's window is too; the run watches the module current only inside the windows
that ask for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.events import Event, StopRequested, UpstreamSetpoint
from hil import gun_expr
from hil.pile_scenario_file import MEASURES, SITE_LIMIT_MARGIN, PileScenarioFile, select
from hil.scenario_engine import Verdict, compare, show
from hil.scenario_file import Expectation

if TYPE_CHECKING:
    from hil.matrix_sim import GroupSim
    from hil.pile_sim import SimulatedMultiPile

SETPOINT_VALID_FACTOR = 2.0  # a refreshed setpoint is valid twice its refresh period
_MOVE = re.compile(r"\s*([\d.]+) s group (\S+) -> gun (\d+)")


@dataclass
class _Refresher:
    guns: list[int]
    value: float
    unit: str
    every_s: float
    until_s: float
    due_s: float


@dataclass
class _Window:
    """The largest |current| of one gun between two instants."""

    gun: int
    start: float
    stop: float
    peak_a: float = 0.0
    seen: bool = False


@dataclass
class PileScenarioRun:
    sf: PileScenarioFile
    n: int
    at: dict[str, float] = field(init=False)
    end_s: float = field(init=False)
    fired: set[str] = field(default_factory=set)
    refreshers: list[_Refresher] = field(default_factory=list)
    faulted: list[str] = field(default_factory=list)  # group ids, in the order tripped
    windows: dict[tuple[int, int], _Window] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.at = {s.name: self.sf.step_at(s, self.n) for s in self.sf.steps}
        self.end_s = self.sf.end_s(self.n)
        for i, e in enumerate(self.sf.expectations):
            if e.measure == "max_current_a":
                start, stop = self.window(e)
                for g in select(e.get("gun"), self.n):
                    self.windows[(i, g)] = _Window(g, start, stop)

    # ---- times -----------------------------------------------------------------------------

    @property
    def run_end_s(self) -> float:
        return self.end_s + self.sf.linger_s

    def anchor(self, name: str | None, default: float) -> float:
        if name is None:
            return default
        return {"start": 0.0, "end": self.run_end_s}.get(name, self.at.get(name, default))

    def window(self, e: Expectation) -> tuple[float, float]:
        start = self.anchor(e.get("from"), 0.0) + e.get("from_offset_s", 0.0)
        stop = self.anchor(e.get("to"), self.run_end_s) + e.get("to_offset_s", 0.0)
        return start, stop

    def next_due(self, t: float) -> float:
        """The run's next instant after t: a step, or a setpoint refresh."""
        due = [a for name, a in self.at.items() if name not in self.fired and a > t]
        due += [r.due_s for r in self.refreshers if t < r.due_s < r.until_s]
        return min(due, default=math.inf)

    # ---- acting ----------------------------------------------------------------------------

    def script(self, pile: SimulatedMultiPile, t: float) -> dict[int, list[Event]]:
        out: dict[int, list[Event]] = {}
        for step in self.sf.steps:
            if step.name in self.fired or t < self.at[step.name] - 1e-9:
                continue
            self.fired.add(step.name)
            self._fire(pile, step.do, step.targets(self.n), step.name, t, out)
        for r in self.refreshers:
            if r.due_s - 1e-9 <= t < r.until_s:
                r.due_s = t + r.every_s
                for gun in r.guns:
                    out.setdefault(gun, []).append(UpstreamSetpoint(
                        t, "ems", t + SETPOINT_VALID_FACTOR * r.every_s, setpoint=r.value,
                        unit=r.unit))
        return out

    def _fire(self, pile: SimulatedMultiPile, do: dict[str, Any], guns: list[int],
              name: str, t: float, out: dict[int, list[Event]]) -> None:
        if "stop" in do:
            for gun in guns:
                out.setdefault(gun, []).append(StopRequested(t, do["stop"]))
        elif "setpoint_w" in do or "setpoint_a" in do:
            unit = "W" if "setpoint_w" in do else "A"
            value = gun_expr.evaluate(do.get("setpoint_w", do.get("setpoint_a", 0.0)), n=self.n)
            until = gun_expr.evaluate(do["until_s"], n=self.n) if "until_s" in do else math.inf
            self.refreshers.append(_Refresher(guns, value, unit, do.get("refresh_s", 30.0),
                                              until, t))
        elif "group_fault" in do:
            group = self._group(pile, do.get("group"), guns)
            if group is None:
                pile.result.notes.append(f"{t:.1f} s {name}: no healthy group on gun "
                                         f"{guns} to trip")
                return
            group.fault = do["group_fault"]
            self.faulted.append(group.id)
            pile.result.notes.append(f"{t:.1f} s {name}: group {group.id} trips "
                                     f"({do['group_fault']})")
        elif "group_clear" in do:
            gid = do.get("group") or (self.faulted[-1] if self.faulted else None)
            for g in pile.matrix.groups:
                if g.id == gid:
                    g.fault = ""
                    pile.result.notes.append(f"{t:.1f} s {name}: group {gid} recovers")

    def _group(self, pile: SimulatedMultiPile, gid: str | None,
               guns: list[int]) -> GroupSim | None:
        for g in pile.matrix.groups:
            if gid is not None and g.id == gid:
                return g
            if gid is None and not g.fault and any(g.closed & (1 << (x - 1)) for x in guns):
                return g
        return None

    # ---- watching --------------------------------------------------------------------------

    def observe(self, pile: SimulatedMultiPile, t: float) -> None:
        for w in self.windows.values():
            if w.start <= t <= w.stop:
                w.seen = True
                w.peak_a = max(w.peak_a, abs(pile.rigs[w.gun - 1].module.current_a))

    # ---- judging ---------------------------------------------------------------------------

    def judge(self, pile: SimulatedMultiPile) -> list[Verdict]:
        out = [self._one(pile, e, None) for e in self.invariants() if e.get("gun") is None]
        out += [self._one(pile, e, g) for e in self.invariants() if e.get("gun") is not None
                for g in select(e.get("gun"), self.n)]
        for i, e in enumerate(self.sf.expectations):
            if not MEASURES[e.measure][0]:
                out.append(self._one(pile, e, None, i))
                continue
            guns = select(e.get("gun"), self.n)
            if not guns:
                out.append(Verdict(e.name, e.measure, "N/A", "-",
                                   f"the pile has no gun {e.get('gun')}", e.get("source", "")))
            for g in guns:
                out.append(self._one(pile, e, g, i))
        return out

    def invariants(self) -> list[Expectation]:
        """What every pile run must keep, whatever its file says."""
        out = [
            Expectation("no gun commanded above what its groups give", "above_pool",
                        {"gun": "each", "equals": 0,
                         "source": "the module pool's capability (agent/core/module_pool.py)"},
                        0),
            Expectation("no group switched while it carried > 5 A", "switched_under_load",
                        {"equals": 0, "source": "GB/T 18487.1-2023 Annex E: contactors "
                                                "open at <= 5 A"}, 0),
            Expectation("no group closed to two guns at once", "joined_two_guns",
                        {"equals": 0, "source": "a group's output belongs to one gun "
                                                "(the matrix's interlock)"}, 0),
        ]
        for measure, limit, what in (("peak_import_w", "grid_limit_w", "grid"),
                                     ("peak_export_w", "export_limit_w", "export")):
            watts = self.sf.pile_value(limit, self.n)
            if math.isfinite(watts):
                out.append(Expectation(
                    f"{what} within the site's {watts / 1000:g} kW", measure,
                    {"at_most": watts * SITE_LIMIT_MARGIN,
                     "source": f"[pile] {limit}, + 2 % for the current loop's settling"}, 0))
        return out

    def _one(self, pile: SimulatedMultiPile, e: Expectation, gun: int | None,
             index: int = -1) -> Verdict:
        name = e.name if gun is None or isinstance(e.get("gun"), int) \
            else f"{e.name} (gun {gun})"
        try:
            value, detail = self._measure(pile, e, gun, index)
        except _NotReached as exc:
            return Verdict(name, e.measure, "N/A", "-", str(exc), e.get("source", ""))
        ok, wanted = compare(e, value)
        text = f"{show(value)} (expected {wanted})" + (f"; {detail}" if detail else "")
        return Verdict(name, e.measure, "PASS" if ok else "FAIL", show(value), text,
                       e.get("source", ""))

    def _measure(self, pile: SimulatedMultiPile, e: Expectation, gun: int | None,
                 index: int) -> tuple[Any, str]:
        r = pile.result
        m = e.measure
        g = pile.rigs[gun - 1].result if gun is not None else None
        if g is not None:
            if m == "outcome":
                return g.outcome, g.reason
            if m == "energised":
                return "charging" in [s for _t, s in g.states], ""
            if m in ("charged_kwh", "discharged_kwh"):
                return round(getattr(g, m), 3), ""
            if m == "above_pool":
                first = (f"first {g.above_pool[0][1]:.1f} A above {g.above_pool[0][2]:.1f} A "
                         f"at {g.above_pool[0][0]:.2f} s") if g.above_pool else ""
                return len(g.above_pool), first
            if m == "max_current_a":
                w = self.windows[(index, g.gun)]
                if not w.seen:
                    raise _NotReached(f"the run never reached {w.start:.1f}-{w.stop:.1f} s")
                return round(w.peak_a, 1), f"{w.start:.1f}-{w.stop:.1f} s"
            if m == "groups_given_away":
                since = self.anchor(e.get("from"), 0.0) + e.get("from_offset_s", 0.0)
                given = groups_given_away(r.pool_log, g.gun, since)
                return len(given), ", ".join(given)
        moves = _moves(r.pool_log)
        if m == "groups_moved":
            moved = {gid: ms for gid, ms in moves.items() if len({x for _t, x in ms}) > 1}
            served = [f"{gid} served guns " + ", ".join(f"{x} from {t:.1f} s" for t, x in ms)
                      for gid, ms in sorted(moved.items())]
            return len(moved), served[0] if served else ""
        if m == "faulted_group_taken_out":
            if not self.faulted:
                raise _NotReached("no group_fault step fired")
            out = [gid for gid in self.faulted
                   if any(f"group {gid} faulted" in line for line in r.pool_log)]
            return len(out) == len(self.faulted), ", ".join(self.faulted)
        if m in ("peak_import_w", "peak_export_w"):
            return round(getattr(r, m), 1), ""
        if m == "switched_under_load":
            switched = [f"group {gid} on gun {x} at {amps:.1f} A ({t:.2f} s)"
                        for t, gid, x, amps in r.switched_under_load]
            return len(switched), switched[0] if switched else ""
        if m == "joined_two_guns":
            return r.joined_two_guns, ""
        if m == "gun_hours":
            return round(gun_hours([rig.result.states for rig in pile.rigs]), 4), ""
        raise AssertionError(m)


class _NotReached(Exception):
    """The run did not reach what the expectation looks at: N/A, never a pass."""


def _moves(log: Sequence[str]) -> dict[str, list[tuple[float, int]]]:
    """group -> [(t, gun)] from the pool's "group X -> gun Y" lines."""
    out: dict[str, list[tuple[float, int]]] = {}
    for line in log:
        m = _MOVE.match(line)
        if m:
            out.setdefault(m[2], []).append((float(m[1]), int(m[3])))
    return out


def groups_given_away(log: Sequence[str], gun: int, since: float) -> list[str]:
    """Groups that were switched to `gun` by `since` and to another gun after it."""
    out = []
    for gid, moves in sorted(_moves(log).items()):
        served = any(x == gun and t <= since for t, x in moves)
        if served and any(x != gun and t > since for t, x in moves):
            out.append(gid)
    return out


def charging_spans(states: Sequence[tuple[float, str]]) -> list[tuple[float, float]]:
    spans, since = [], None
    for t, s in states:
        if s == "charging":
            since = t
        elif since is not None:
            spans.append((since, t))
            since = None
    return spans


def gun_hours(per_gun_states: Sequence[Sequence[tuple[float, str]]]) -> float:
    return sum(t1 - t0 for states in per_gun_states for t0, t1 in charging_spans(states)) / 3600
