"""Scenarios of a whole pile (`pile-agent sim --guns N --scenario NAME`): cars arriving
and leaving on N guns that share one pool of module groups, a group faulting, the site's
grid and export limits shared; each with the expectations it must meet.

The pool's layout for N guns: two groups per gun, 125 A / 60 kW each, each wired to its
own gun and the next one (a ring; with two guns every group reaches both).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.events import Event, StopRequested, UpstreamSetpoint
from agent.core.module_pool import Group
from agent.core.ratings import GunRatings
from agent.core.upstream import UpstreamPolicy
from hil.ev_bms import VehicleConfig

if TYPE_CHECKING:
    from hil.pile_sim import SimulatedMultiPile

GROUP_A, GROUP_W = 125.0, 60_000.0
ARRIVAL_GAP_S = 30.0  # the next car plugs in this long after the previous one
REFRESH_S = 30.0  # the EMS refreshes its setpoint (valid twice as long), as a scenario file


@dataclass(frozen=True)
class PlugIn:
    config: VehicleConfig
    plug_at_s: float


def ring_groups(guns: int) -> list[Group]:
    out = []
    for k in range(2 * guns):
        home = k // 2 + 1
        out.append(Group(f"G{k + 1}", GROUP_A, GROUP_W,
                         frozenset({home, home % guns + 1})))
    return out


@dataclass
class PileScenario:
    name: str
    description: str
    vehicle: Callable[[int], PlugIn | None]
    script: Callable[[SimulatedMultiPile, float], dict[int, list[Event]]]
    check: Callable[[SimulatedMultiPile], list[str]]
    end_s: Callable[[int], float]
    grid_limit_w: Callable[[int], float] = lambda _n: math.inf
    export_limit_w: Callable[[int], float] = lambda _n: math.inf
    pile_power_w: Callable[[int], float] = lambda n: 2 * n * GROUP_W
    ratings: Callable[[int], GunRatings] = lambda gun: GunRatings(charger_number=gun)
    groups: Callable[[int], list[Group]] = ring_groups
    upstream: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    observe: Callable[[SimulatedMultiPile, float], None] = lambda _p, _t: None
    linger_s: float = 15.0
    min_guns: int = 2
    lock_step: bool = True  # its script and observer look at every 10 ms step


def _moves(log: list[str]) -> dict[str, list[tuple[float, int]]]:
    """group -> [(t, gun)] from the pool's "group X -> gun Y" lines."""
    out: dict[str, list[tuple[float, int]]] = {}
    for line in log:
        m = re.match(r"\s*([\d.]+) s group (\S+) -> gun (\d+)", line)
        if m:
            out.setdefault(m[2], []).append((float(m[1]), int(m[3])))
    return out


def _common(pile: SimulatedMultiPile, grid_w: float, export_w: float,
            expect_moves: bool = True) -> list[str]:
    r = pile.result
    out = []
    for g in r.per_gun:
        if "charging" not in [s for _t, s in g.states]:
            out.append(f"gun {g.gun} never reached charging")
        if g.outcome != "finished":
            out.append(f"gun {g.gun}: session {g.outcome}: {g.reason}")
        if g.above_pool:
            t, amps, cap = g.above_pool[0]
            out.append(f"gun {g.gun} commanded {amps:.1f} A above its pool capability "
                       f"{cap:.1f} A at {t:.2f} s ({len(g.above_pool)} times)")
    if r.switched_under_load:
        t, group, gun, amps = r.switched_under_load[0]
        out.append(f"group {group} switched on gun {gun} at {amps:.1f} A ({t:.2f} s)")
    if r.joined_two_guns:
        out.append(f"a group read closed to two guns {r.joined_two_guns} times")
    # 2 %: the DC power is measured after the module's own current loop settles, the
    # limit is applied to the commanded voltage (>= the measured one) at each decision.
    if r.peak_import_w > grid_w * 1.02:
        out.append(f"import {r.peak_import_w / 1000:.1f} kW above the {grid_w / 1000:.0f} kW "
                   "grid limit")
    if r.peak_export_w > export_w * 1.02:
        out.append(f"export {r.peak_export_w / 1000:.1f} kW above the {export_w / 1000:.0f} kW "
                   "export limit")
    moved = {gid: m for gid, m in _moves(r.pool_log).items() if len({g for _t, g in m}) > 1}
    if not moved and expect_moves:
        out.append("no group moved from one gun to another")
    elif moved:
        gid, m = sorted(moved.items())[0]
        r.notes.append(f"group {gid} served guns " + ", ".join(
            f"{g} from {t:.1f} s" for t, g in m))
    return out


# ---- pool-share ----------------------------------------------------------------------

def _share_times(n: int) -> tuple[float, float, float, float]:
    """(group fault, fault cleared, gun 1 leaves, everyone leaves) for n guns."""
    fault = ARRIVAL_GAP_S * n + 40.0
    return fault, fault + 20.0, fault + 40.0, fault + 70.0


def _share_vehicle(gun: int) -> PlugIn:
    return PlugIn(VehicleConfig(start_soc_pct=20.0 + 5 * (gun % 3), target_soc_pct=95.0,
                                vin=f"LSIMPILE{gun:09d}"), 0.2 + ARRIVAL_GAP_S * (gun - 1))


def _share_script(pile: SimulatedMultiPile, t: float) -> dict[int, list[Event]]:
    n = len(pile.rigs)
    fault_at, cleared_at, leave_1, leave_all = _share_times(n)
    p: dict[str, Any] = pile.probe
    out: dict[int, list[Event]] = {}
    if "fault_group" not in p and t >= fault_at:
        # The first healthy group serving gun 1 trips.
        group = next(g for g in pile.matrix.groups if g.closed & 1)
        group.fault = "module_fault"
        p["fault_group"] = group.id
        pile.result.notes.append(f"{t:.1f} s group {group.id} (on gun 1) trips")
    if "fault_group" in p and "cleared" not in p and t >= cleared_at:
        p["cleared"] = t
        next(g for g in pile.matrix.groups if g.id == p["fault_group"]).fault = ""
    if "left_1" not in p and t >= leave_1:
        p["left_1"] = t
        out[1] = [StopRequested(t, "owner of gun 1 leaves")]
    if "left_all" not in p and t >= leave_all:
        p["left_all"] = t
        for rig in pile.rigs[1:]:
            out[rig.gun] = [StopRequested(t, "the scenario ends")]
    return out


def _share_observe(pile: SimulatedMultiPile, t: float) -> None:
    p = pile.probe
    if "fault_group" in p and "cleared" not in p and t >= _share_times(len(pile.rigs))[0] + 3:
        amps = abs(pile.rigs[0].module.current_a)
        p["gun1_during_fault_a"] = max(p.get("gun1_during_fault_a", 0.0), amps)


def _share_check(pile: SimulatedMultiPile) -> list[str]:
    n = len(pile.rigs)
    out = _common(pile, _grid(n), math.inf)
    p, r = pile.probe, pile.result
    gid = p.get("fault_group")
    if gid is None:
        out.append("no group was faulted")
    else:
        when = [line for line in r.pool_log if f"group {gid} faulted" in line]
        if not when:
            out.append(f"the pool never took group {gid} out")
        during = p.get("gun1_during_fault_a", 0.0)
        r.notes.append(f"gun 1 carried up to {during:.1f} A on its other groups while "
                       f"{gid} was out")
        if during <= 10.0:
            out.append("gun 1 stopped being served while one of its groups was out")
    after = [m for m in _moves(r.pool_log).values()
             if any(t > p.get("left_1", math.inf) and g != 1 for t, g in m)]
    if n > 1 and not after:
        out.append("gun 1's groups were not given to the others after it left")
    return out


def _grid(n: int) -> float:
    # Less than every car at full power: the grid limit binds while all charge.
    return 75_000.0 * n


# ---- pool-v2g ------------------------------------------------------------------------

V2G_DISCHARGE_W = 80_000.0
V2G_EXPORT_W = 50_000.0
V2G_END_S = 150.0


def _v2g_vehicle(gun: int) -> PlugIn:
    if gun == 1:
        return PlugIn(VehicleConfig(start_soc_pct=75.0, target_soc_pct=80.0, v2g=True,
                                    stop_at_target=False, soc_floor_pct=30.0,
                                    vin="LSIMPILEV2G000001"), 0.2)
    return PlugIn(VehicleConfig(start_soc_pct=30.0, target_soc_pct=95.0,
                                vin=f"LSIMPILE{gun:09d}"), 0.2 + 20.0 * (gun - 1))


def _v2g_script(pile: SimulatedMultiPile, t: float) -> dict[int, list[Event]]:
    p = pile.probe
    out: dict[int, list[Event]] = {}
    if t < V2G_END_S and t - p.get("sent", -math.inf) >= REFRESH_S:
        p["sent"] = t
        out[1] = [UpstreamSetpoint(t, "ems", t + 2 * REFRESH_S, setpoint=-V2G_DISCHARGE_W,
                                   unit="W")]
    if "ended" not in p and t >= V2G_END_S:
        p["ended"] = t
        for rig in pile.rigs:
            out.setdefault(rig.gun, []).append(StopRequested(t, "the scenario ends"))
    return out


def _v2g_check(pile: SimulatedMultiPile) -> list[str]:
    n = len(pile.rigs)
    out = _common(pile, _grid(n), V2G_EXPORT_W)
    gun1 = pile.result.per_gun[0]
    if gun1.discharged_kwh <= 0.1:
        out.append(f"gun 1 discharged only {gun1.discharged_kwh:.3f} kWh")
    for g in pile.result.per_gun[1:]:
        if g.charged_kwh <= 0.1:
            out.append(f"gun {g.gun} charged only {g.charged_kwh:.3f} kWh")
    return out


# ---- station ---------------------------------------------------------------------------

STATION_CHARGE_S = 120.0


def _station_vehicle(gun: int) -> PlugIn:
    return PlugIn(VehicleConfig(start_soc_pct=20.0 + 3 * (gun % 10), target_soc_pct=95.0,
                                vin=f"LSIMSTAT{gun:09d}"), 0.2 + 0.5 * (gun - 1))


def _station_script(pile: SimulatedMultiPile, t: float) -> dict[int, list[Event]]:
    if "ended" in pile.probe or t < STATION_CHARGE_S:
        return {}
    pile.probe["ended"] = t
    return {rig.gun: [StopRequested(t, "the station run ends")] for rig in pile.rigs}


def _station_check(pile: SimulatedMultiPile) -> list[str]:
    r = pile.result
    hours = sum(t1 - t0 for g in r.per_gun for t0, t1 in charging_spans(g.states)) / 3600
    r.notes.append(f"{hours:.3f} gun-hours of energy transfer simulated")
    pile.probe["gun_hours"] = hours
    return _common(pile, _grid(len(pile.rigs)), math.inf, expect_moves=False)


def charging_spans(states: list[tuple[float, str]]) -> list[tuple[float, float]]:
    spans, since = [], None
    for t, s in states:
        if s == "charging":
            since = t
        elif since is not None:
            spans.append((since, t))
            since = None
    return spans


PILE_SCENARIOS: dict[str, PileScenario] = {s.name: s for s in (
    PileScenario(
        "pool-share",
        "cars arrive 30 s apart on N guns sharing 2N groups (125 A / 60 kW) and a grid limit "
        "of 75 kW per gun; a group on gun 1 trips for 20 s; gun 1's car leaves and its "
        "groups go to the others",
        _share_vehicle, _share_script, _share_check,
        end_s=lambda n: _share_times(n)[3], grid_limit_w=_grid, observe=_share_observe),
    PileScenario(
        "pool-v2g",
        f"gun 1 discharges for the EMS ({V2G_DISCHARGE_W / 1000:.0f} kW asked, "
        f"{V2G_EXPORT_W / 1000:.0f} kW export limit) while the other guns charge from the "
        "same pool",
        _v2g_vehicle, _v2g_script, _v2g_check, end_s=lambda _n: V2G_END_S,
        grid_limit_w=_grid, export_limit_w=lambda _n: V2G_EXPORT_W,
        ratings=lambda gun: GunRatings(max_discharge_current_a=200.0,
                                       max_discharge_power_w=100_000.0, charger_number=gun)),
    PileScenario(
        "station",
        f"every gun's car plugs in within seconds and charges for {STATION_CHARGE_S:.0f} s on "
        "the pool under the shared grid limit (the bench's station run)",
        _station_vehicle, _station_script, _station_check,
        end_s=lambda _n: STATION_CHARGE_S, grid_limit_w=_grid, lock_step=False),
)}
