"""A station-day at the energy level: `pile-agent station-day`.

Operators and VPPs simulate a day of a whole station (22 piles, 36 guns on one grid
connection) before they dispatch it. Over the real transports the agent's own traffic
caps a simulation at about 83x real time per gun (docs/PERFORMANCE.md), so such a day
would take most of a day. This model keeps what decides the energy and leaves out the
protocols:

- kept, the agent's own code: the module pool (agent/core/module_pool.py: which group
  feeds which gun, moves only at <= 5 A and on the contactor's feedback, the grid and
  export limits shared among the guns) and each gun's limit arbiter
  (agent/core/arbiter.py) with its candidates built as the session builds them, the
  battery-health and SOC-window candidates included (agent/core/health_policy.py);
- kept, the simulators' car and plant: its battery (hil/ev_battery.py) and CC-CV demand
  (hil/ev_bms.py); each gun's output unit heating and derating its capability as the
  module simulator's does (hil/module_sim.py `heated`, `derate_factor`);
- left out: CAN and Modbus messages; the session's sequence (a plug-in reaches energy
  transfer `setup_s` later, a stop takes `stop_s`); the module's current loop (the
  decided current flows for the whole step); watchdogs, and every fault but a module
  group's.

The station's piles are one pool whose groups reach only the guns of their pile, so the
pool's own rules keep each pile's groups in it and share the site's one grid connection
among all guns. Time steps by `step_s` while anyone is plugged in and jumps to the next
arrival otherwise. `tests/test_station_day.py` checks the model against the protocol-level
station (`pile-agent sim --scenario station`).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from agent.core.arbiter import CurrentLimits, decide_current, wanted_current
from agent.core.direction import Direction
from agent.core.health_policy import (
    EnergyUse,
    HealthPolicy,
    discharge_health_limit,
    soc_window_limit,
)
from agent.core.module_pool import Capability, Group, GunNeed, ModulePool
from agent.core.pile import ONE_GROUP_W
from agent.core.ratings import GunRatings
from agent.core.vehicle_view import Cells, ChargeLimits, DischargeLimits, VehicleView
from agent.ledger.settlement import Tariff
from hil.ev_bms import BmsSimulator
from hil.module_sim import ModuleParams, derate_factor, heated
from hil.pool_layout import GROUP_A, GROUP_W
from hil.site_clock import hhmm
from hil.station_cars import HOUR_S, Car, Dispatch, draw_cars

MODULE = ModuleParams()  # each gun's output unit, as hil/pile_sim.py's
# The day's judge states its own figures (never the agent's constants): a matrix contactor
# opens only at <= 5 A (GB/T 18487.1-2023 Annex E), and the grid and export limits are the
# ones this day was given, not what the pool holds.
SWITCH_LIMIT_A = 5.0
MAX_WAIT_S = 900.0  # a car that finds every gun of its kind busy waits this long, then leaves
BUCKET_S = 900.0  # the station's power profile in quarter hours, as settlement meters do
# For a 36-gun station: 1.6 MW of import (a 1,600 kVA transformer: less than the piles'
# 4.3 MW of modules, as at most sites) and 0.8 MW of export; scaled with the guns.
GRID_W_PER_GUN = 1_600_000.0 / 36
EXPORT_W_PER_GUN = 800_000.0 / 36


@dataclass(frozen=True)
class DayOptions:
    guns: int = 36
    seed: int = 1
    hours: float = 24.0
    step_s: float = 1.0
    # Plug-in to energy transfer and stop to unplugged: real GB/T sessions spend most of
    # the former in the insulation check (up to 25 s: T.INSULATION_CHECK_BUDGET, GB/T
    # 18487.1-2015 B.4.3).
    setup_s: float = 30.0
    stop_s: float = 5.0
    v2g_share: float = 0.25
    dispatch: Dispatch = field(default_factory=Dispatch)
    health: HealthPolicy = field(default_factory=lambda: HealthPolicy(soc_floor_pct=30.0))
    grid_limit_w: float | None = None  # None: GRID_W_PER_GUN x guns
    export_limit_w: float | None = None
    tariff: Tariff = field(default_factory=Tariff)  # to price the day's import and export


def piles_of(guns: int) -> list[int]:
    """Guns per pile: mostly two-gun piles and some single ones, as a 36-gun station of
    22 piles has 14 of two guns and 8 of one."""
    piles = min(max(round(guns * 22 / 36), math.ceil(guns / 2)), guns)
    doubles = guns - piles
    return [2] * doubles + [1] * (piles - doubles)


def station_groups(guns_per_pile: list[int]) -> list[Group]:
    """Two groups per gun; every group of a pile reaches every gun of that pile."""
    out, first = [], 1
    for p, n in enumerate(guns_per_pile):
        reach = frozenset(range(first, first + n))
        out += [Group(f"P{p + 1}G{k + 1}", GROUP_A, GROUP_W, reach) for k in range(2 * n)]
        first += n
    return out


@dataclass
class _Gun:
    number: int
    ratings: GunRatings
    v2g: bool
    car: Car | None = None
    bms: BmsSimulator | None = None
    phase: str = "idle"  # idle, setup, transfer, stopping
    until: float = 0.0  # end of setup or stop
    current_a: float = 0.0
    direction: Direction = Direction.CHARGE
    peak_v: float = 0.0  # the discharge phase's highest voltage (the session's I2 rule)
    last_decision_t: float | None = None
    output_c: float = ModuleParams().ambient_c  # the gun's output unit (its stack's heat)


@dataclass
class DayResult:
    options: DayOptions
    wall_s: float = 0.0
    sim_s: float = 0.0
    steps: int = 0
    gun_steps: int = 0
    cars: Counter[str] = field(default_factory=Counter)
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    bound: Counter[str] = field(default_factory=Counter)  # gun-steps by the binding limit
    import_kw: list[float] = field(default_factory=list)  # mean per quarter hour
    export_kw: list[float] = field(default_factory=list)
    busy_guns: list[float] = field(default_factory=list)  # mean guns transferring, per 15 min
    bound_per_quarter: list[dict[str, int]] = field(default_factory=list)  # gun-steps by limit
    peak_import_kw: float = 0.0
    peak_export_kw: float = 0.0
    grid_limit_kw: float = 0.0
    export_limit_kw: float = 0.0
    above_grid_steps: int = 0
    above_export_steps: int = 0
    above_gun_rating_steps: int = 0
    switched_under_load: list[str] = field(default_factory=list)
    pool_moves: int = 0
    group_faults: list[str] = field(default_factory=list)
    v2g_departures: list[dict[str, float]] = field(default_factory=list)
    transfer_gun_h: float = 0.0
    plugged_gun_h: float = 0.0
    peak_current_a: dict[int, float] = field(default_factory=dict)  # per gun, magnitude

    def summary(self) -> dict[str, Any]:
        o = self.options
        gun_h = o.guns * self.sim_s / HOUR_S
        total = sum(self.bound.values()) or 1
        return {
            "model": "energy level: the agent's module pool and limit arbiter, the "
                     "simulators' car; no protocol messages (hil/station_day.py)",
            "guns": o.guns, "piles": len(piles_of(o.guns)), "seed": o.seed,
            "sim_h": round(self.sim_s / HOUR_S, 3), "step_s": o.step_s,
            "wall_s": round(self.wall_s, 2),
            "gun_hours": round(gun_h, 1),
            "gun_hours_per_wall_s": round(gun_h / self.wall_s, 2) if self.wall_s else None,
            "plugged_gun_hours": round(self.plugged_gun_h, 1),
            "transfer_gun_hours": round(self.transfer_gun_h, 1),
            "steps": self.steps, "gun_steps": self.gun_steps,
            "cars": dict(sorted(self.cars.items())),
            "charged_kwh": round(self.charged_kwh, 1),
            "discharged_kwh": round(self.discharged_kwh, 1),
            "grid_limit_kw": round(self.grid_limit_kw, 1),
            "export_limit_kw": round(self.export_limit_kw, 1),
            "peak_import_kw": round(self.peak_import_kw, 1),
            "peak_export_kw": round(self.peak_export_kw, 1),
            "above_grid_steps": self.above_grid_steps,
            "above_export_steps": self.above_export_steps,
            "above_gun_rating_steps": self.above_gun_rating_steps,
            "switched_under_load": self.switched_under_load,
            "pool_moves": self.pool_moves,
            "group_faults": self.group_faults,
            "bound_by_share": {k: round(v / total, 4) for k, v in self.bound.most_common()},
            "settlement_cny": self.settlement(o.tariff),
            "v2g_departures": self.v2g_departures,
            "import_kw_per_quarter_hour": [round(x, 1) for x in self.import_kw],
            "export_kw_per_quarter_hour": [round(x, 1) for x in self.export_kw],
        }


    def settlement(self, t: Tariff) -> dict[str, float]:
        """The day's import and export priced per quarter hour at the tariff's bands
        (simulated time counts from local midnight)."""
        hours = [(k * BUCKET_S / HOUR_S) % 24 for k in range(len(self.import_kw))]
        q = BUCKET_S / HOUR_S  # kW over a quarter hour -> kWh
        cost = sum(kw * q * t.price_at(t.charge, h)
                   for kw, h in zip(self.import_kw, hours, strict=True))
        paid = sum(kw * q * t.price_at(t.discharge, h)
                   for kw, h in zip(self.export_kw, hours, strict=True))
        return {"charging_cost": round(cost, 2), "discharge_paid": round(paid, 2),
                "net": round(paid - cost, 2)}


def _fault_schedule(groups: list[Group], seed: int, day_s: float
                    ) -> list[tuple[float, float, str]]:
    """Two module groups fault during the day, each for 30-120 min (from, until, group)."""
    rng = random.Random(seed + 7919)
    out = []
    for _ in range(2):
        start = rng.uniform(0.3, 0.8) * day_s
        out.append((start, start + rng.uniform(1800.0, 7200.0), rng.choice(groups).id))
    return out


class StationDay:
    def __init__(self, options: DayOptions, cars: list[Car] | None = None,
                 groups: list[Group] | None = None,
                 faults: list[tuple[float, float, str]] | None = None,
                 ratings: dict[int, GunRatings] | None = None) -> None:
        """cars, groups, faults: the day's draw when None. ratings: per gun (a gun that
        may discharge is a V2G gun); None: every (1 / v2g_share)-th gun is."""
        o = self.options = options
        self.day_s = o.hours * HOUR_S
        self.groups = groups if groups is not None else station_groups(piles_of(o.guns))
        grid = o.grid_limit_w if o.grid_limit_w is not None else GRID_W_PER_GUN * o.guns
        export = o.export_limit_w if o.export_limit_w is not None \
            else EXPORT_W_PER_GUN * o.guns
        self.pool = ModulePool(tuple(self.groups), grid_limit_w=grid, export_limit_w=export)
        self.grid_limit_w, self.export_limit_w = grid, export
        # The V2G guns spread over the station: every (1 / v2g_share)-th gun.
        n_v2g = round(o.guns * o.v2g_share)
        v2g_guns = {1 + (k * o.guns) // n_v2g for k in range(n_v2g)} if n_v2g else set()
        ratings = ratings or {n: GunRatings(
            charger_number=n, max_current_a=250.0, max_power_w=150_000.0,
            max_discharge_current_a=150.0 if n in v2g_guns else 0.0,
            max_discharge_power_w=60_000.0 if n in v2g_guns else 0.0)
            for n in range(1, o.guns + 1)}
        self.guns = [_Gun(n, ratings[n], ratings[n].max_discharge_current_a > 0)
                     for n in range(1, o.guns + 1)]
        self.cars = cars if cars is not None else draw_cars(o.guns, o.seed, self.day_s,
                                                            o.v2g_share)
        self.faults = faults if faults is not None \
            else _fault_schedule(self.groups, o.seed, self.day_s)
        self.matrix: dict[str, int | None] = {g.id: None for g in self.groups}
        self.result = DayResult(o, grid_limit_kw=grid / 1000, export_limit_kw=export / 1000)
        self._queue: list[Car] = []
        self._next_car = 0
        self._bucket = [0.0, 0.0, 0.0]  # import W.s, export W.s, transferring gun-s
        self._bucket_bound: Counter[str] = Counter()
        self._export_share_w = 0.0  # this step's dispatch per discharging gun

    # ---- the day --------------------------------------------------------------------

    def run(self, progress: Callable[[float, float], None] | None = None) -> DayResult:
        """The day; `progress(simulated s, day s)` about twice a wall second if given."""
        o, r = self.options, self.result
        wall0 = shown = time.perf_counter()
        t = 0.0
        while t < self.day_s:
            if progress is not None and r.steps % 256 == 0 \
                    and time.perf_counter() - shown >= 0.5:
                shown = time.perf_counter()
                progress(t, self.day_s)
            self._step(t, o.step_s)
            r.steps += 1
            t_next = t + o.step_s
            if all(g.phase == "idle" for g in self.guns) and not self._queue \
                    and not self.pool.moves:
                # Nobody plugged in: jump to the next arrival (or fault) on the step grid.
                upcoming = [c.arrive_s for c in self.cars[self._next_car:self._next_car + 1]]
                upcoming += [a for a, _b, _g in self.faults if a > t]
                nxt = min(upcoming, default=self.day_s)
                t_next = max(t_next, math.floor(nxt / o.step_s) * o.step_s)
                self._flush_bucket(min(t_next, self.day_s))
            t = t_next
        self._flush_bucket(self.day_s, final=True)
        r.sim_s = self.day_s
        r.wall_s = time.perf_counter() - wall0
        return r

    def _step(self, t: float, dt: float) -> None:
        o, r = self.options, self.result
        self._arrivals(t)
        for g in self.guns:
            self._advance_phase(g, t)
        dispatched = sum(1 for g in self.guns if g.phase == "transfer" and self._dispatched(g, t))
        self._export_share_w = o.dispatch.export_w / max(dispatched, 1)
        plans = {g.number: self._limits(g, t) for g in self.guns if g.phase == "transfer"}
        needs = [self._need(g, plans.get(g.number)) for g in self.guns]
        faults = {gid: "module group fault (scheduled)" for a, b, gid in self.faults
                  if a <= t < b}
        commands, caps = self.pool.step(t, needs, dict(self.matrix), faults)
        currents = {g.number: g.current_a for g in self.guns}
        for c in commands:
            # A faulted group's own output has tripped: it leaves its gun at once.
            if not c.closed and self.matrix.get(c.group) == c.gun \
                    and c.group not in self.pool.faulted \
                    and abs(currents[c.gun]) > SWITCH_LIMIT_A:
                r.switched_under_load.append(f"{t:.0f} s {c.group} off gun {c.gun} at "
                                             f"{currents[c.gun]:.1f} A")
            # The contactor follows within the step: its feedback reads so at the next one.
            if c.closed:
                self.matrix[c.group] = c.gun
            elif self.matrix.get(c.group) == c.gun:
                self.matrix[c.group] = None
        for line in self.pool.log:
            if "->" in line:
                r.pool_moves += 1
            elif "faulted" in line:
                r.group_faults.append(line)
        self.pool.log.clear()
        supply = dict.fromkeys((g.number for g in self.guns), 0.0)  # W of groups closed to it
        for grp in self.groups:
            gun = self.matrix[grp.id]
            if gun is not None and grp.id not in self.pool.faulted:
                supply[gun] += grp.power_w
        import_w = export_w = 0.0
        for g in self.guns:
            plan = plans.get(g.number)
            if plan is None:
                g.current_a = 0.0
                g.output_c = heated(MODULE, g.output_c, 0.0, g.phase == "setup", dt)
                continue
            p = self._transfer(g, t, dt, plan, caps.get(g.number, Capability(0.0, 0.0)),
                               supply[g.number])
            import_w += max(p, 0.0)
            export_w += max(-p, 0.0)
        r.peak_import_kw = max(r.peak_import_kw, import_w / 1000)
        r.peak_export_kw = max(r.peak_export_kw, export_w / 1000)
        # 1 W of slack for float sums; the pool's shares add up to the limit exactly.
        r.above_grid_steps += import_w > self.grid_limit_w + 1.0
        r.above_export_steps += export_w > self.export_limit_w + 1.0
        self._add_power(t, dt, import_w, export_w)

    # ---- cars come and go -----------------------------------------------------------

    def _arrivals(self, t: float) -> None:
        r = self.result
        while self._next_car < len(self.cars) and self.cars[self._next_car].arrive_s <= t:
            self._queue.append(self.cars[self._next_car])
            self._next_car += 1
            r.cars["arrived"] += 1
        waiting = []
        for car in self._queue:
            # A V2G car needs a V2G gun; a charge-only car takes any, a plain one first.
            free = [g for g in self.guns if g.phase == "idle" and (g.v2g or not car.v2g)]
            gun = min(free, key=lambda g: (g.v2g != car.v2g, g.number), default=None)
            if gun is not None:
                gun.car, gun.bms = car, BmsSimulator(car.vehicle)
                gun.phase, gun.until = "setup", t + self.options.setup_s
                gun.current_a, gun.direction, gun.last_decision_t = 0.0, Direction.CHARGE, None
                r.cars["served"] += 1
            elif t - car.arrive_s > MAX_WAIT_S:
                r.cars["turned_away"] += 1
            else:
                waiting.append(car)
        self._queue = waiting

    def _advance_phase(self, g: _Gun, t: float) -> None:
        if g.phase == "setup" and t >= g.until:
            g.phase = "transfer"
            assert g.bms is not None
            g.bms.battery.contactors_closed = True
        elif g.phase == "transfer":
            assert g.car is not None and g.bms is not None
            soc, c = g.bms.battery.soc_pct, g.car.vehicle
            if t >= g.car.leave_s or (not g.car.v2g and soc >= c.target_soc_pct):
                g.phase, g.until, g.current_a = "stopping", t + self.options.stop_s, 0.0
                g.bms.battery.contactors_closed = False
        elif g.phase == "stopping" and t >= g.until:
            self._departure(g)

    def _departure(self, g: _Gun) -> None:
        assert g.car is not None and g.bms is not None
        r, car, soc = self.result, g.car, g.bms.battery.soc_pct
        r.cars["at_target" if soc >= car.vehicle.target_soc_pct - 0.5 else "below_target"] += 1
        if car.v2g:
            r.v2g_departures.append({
                "gun": g.number, "left_h": round(car.leave_s / HOUR_S, 2),
                "soc_pct": round(soc, 1), "target_pct": round(car.vehicle.target_soc_pct, 1),
                "discharged_kwh": round(g.bms.battery.energy_out_kwh, 2)})
        g.car, g.bms, g.phase, g.current_a = None, None, "idle", 0.0

    # ---- one gun's decision, as its session makes it --------------------------------

    def _dispatched(self, g: _Gun, t: float) -> bool:
        d = self.options.dispatch
        return g.car is not None and g.car.v2g and d.from_s <= t < d.until_s \
            and g.car.leave_s >= d.until_s

    def _limits(self, g: _Gun, t: float) -> CurrentLimits:
        """The arbiter's candidates before the pool's word (agent/core/transfer_control.py
        builds them the same way from the vehicle view)."""
        assert g.car is not None and g.bms is not None
        bms, b, c, r = g.bms, g.bms.battery, g.car.vehicle, g.ratings
        wanted = Direction.DISCHARGE if self._dispatched(g, t) else Direction.CHARGE
        direction_a = math.inf
        if wanted is not g.direction:
            # A direction change passes through zero (GB/T 18487.1-2023 E.5.1): this step
            # at 0 A, the next in the new direction.
            if g.current_a == 0.0:
                g.direction, g.peak_v = wanted, 0.0
            else:
                direction_a = 0.0
        demand_a, _mode = bms.demand_a()
        max_v = min(c.max_total_voltage_v, r.max_voltage_v)
        view = VehicleView(
            charge=ChargeLimits(c.max_charge_current_a, max_v),
            discharge=DischargeLimits(c.max_discharge_current_a, c.max_discharge_power_w,
                                      bms.min_discharge_voltage_v, c.soc_floor_pct,
                                      bms.remaining_window_kwh()) if c.v2g else None,
            consent=c.v2g and bms.consent, soc_pct=b.soc_pct, demand_a=demand_a,
            demand_v=max_v, battery_voltage_v=b.terminal_voltage_v(), alarm=False,
            paused=False, cells=Cells(), capacity_ah=c.battery.capacity_ah,
            nominal_energy_kwh=c.battery.capacity_ah * b.open_circuit_voltage_v / 1000,
            vin=c.vin)
        if g.direction is Direction.CHARGE:
            return CurrentLimits(
                state_a=math.inf, ev_demand_a=max(demand_a, 0.0),
                ev_max_a=c.max_charge_current_a, charger_max_a=r.max_current_a,
                module_capability_a=math.inf, power_limit_w=r.max_power_w,
                # The commanded (CV ceiling) voltage bounds the real one (invariant I2).
                voltage_v=max_v,
                soc_window_a=soc_window_limit(self.options.health, view, Direction.CHARGE)[0]
                if c.v2g else math.inf,
                direction_a=direction_a)
        assert view.discharge is not None
        g.peak_v = max(g.peak_v, b.open_circuit_voltage_v)
        floor_v = max(bms.min_discharge_voltage_v, r.min_input_voltage_v)
        voltage_v = max(g.peak_v, floor_v)
        used = EnergyUse(b.energy_out_kwh, abs(b.energy_in_kwh) + 2 * b.energy_out_kwh)
        return CurrentLimits(
            state_a=math.inf, ev_demand_a=-math.inf, ev_max_a=c.max_discharge_current_a,
            charger_max_a=r.max_discharge_current_a, module_capability_a=math.inf,
            power_limit_w=r.max_discharge_power_w, voltage_v=voltage_v,
            upstream_a=self._export_share_w / voltage_v, ev_power_w=c.max_discharge_power_w,
            ev_voltage_a=0.0 if b.terminal_voltage_v() <= bms.min_discharge_voltage_v
            else math.inf,
            soc_window_a=soc_window_limit(self.options.health, view, Direction.DISCHARGE)[0],
            energy_window_a=0.0 if bms.remaining_window_kwh() <= 0.0 else math.inf,
            health_a=discharge_health_limit(self.options.health, view, used)[0],
            consent_a=math.inf if view.consent else 0.0, direction_a=direction_a)

    def _need(self, g: _Gun, limits: CurrentLimits | None) -> GunNeed:
        """As agent/core/pile.need_of asks for a session."""
        measured = abs(g.current_a)
        if g.phase == "setup":
            return GunNeed(g.number, ONE_GROUP_W, measured_a=measured)
        if limits is None:
            return GunNeed(g.number, 0.0, measured_a=measured)
        discharging = g.direction is Direction.DISCHARGE
        rating = g.ratings.max_discharge_power_w if discharging else g.ratings.max_power_w
        watts = min(wanted_current(limits) * abs(limits.voltage_v), rating)
        return GunNeed(g.number, max(watts, ONE_GROUP_W), discharging=discharging,
                       measured_a=measured)

    def _transfer(self, g: _Gun, t: float, dt: float, limits: CurrentLimits,
                  cap: Capability, supply_w: float) -> float:
        """The arbiter decides; the current flows for the step. Returns the gun's power (W,
        + = into the vehicle)."""
        r = self.result
        assert g.bms is not None
        # The output unit gives what its groups give, derated by its heat (as the module
        # simulator reports its capability); the pool's word is the pool candidate.
        f = derate_factor(MODULE, g.output_c)
        limits = replace(limits, pool_a=cap.current_a, pool_power_w=cap.power_w,
                         module_capability_a=cap.current_a * f,
                         power_limit_w=min(limits.power_limit_w, supply_w * f))
        elapsed = 0.0 if g.last_decision_t is None else t - g.last_decision_t
        decision = decide_current(limits, g.current_a, elapsed, g.ratings.ramp_up_a_per_s)
        g.last_decision_t = t
        g.current_a = decision.current_a
        r.bound[decision.bound_by.value] += 1
        self._bucket_bound[decision.bound_by.value] += 1
        r.gun_steps += 1
        rating = g.ratings.max_current_a if g.current_a >= 0 else \
            g.ratings.max_discharge_current_a
        r.above_gun_rating_steps += abs(g.current_a) > rating + 1e-9
        if abs(g.current_a) > r.peak_current_a.get(g.number, 0.0):
            r.peak_current_a[g.number] = abs(g.current_a)
        g.output_c = heated(MODULE, g.output_c, g.current_a, True, dt)
        b = g.bms.battery
        before = b.energy_in_kwh
        b.accept_current(g.current_a, dt)
        kwh = b.energy_in_kwh - before
        if kwh >= 0:
            r.charged_kwh += kwh
        else:
            r.discharged_kwh -= kwh
        r.transfer_gun_h += dt / HOUR_S
        return kwh * 3.6e6 / dt

    # ---- the station's power profile ------------------------------------------------

    def _add_power(self, t: float, dt: float, import_w: float, export_w: float) -> None:
        self._flush_bucket(t)
        self._bucket[0] += import_w * dt
        self._bucket[1] += export_w * dt
        self._bucket[2] += sum(1 for g in self.guns if g.phase == "transfer") * dt
        self.result.plugged_gun_h += sum(1 for g in self.guns if g.phase != "idle") \
            * dt / HOUR_S

    def _flush_bucket(self, t: float, final: bool = False) -> None:
        r = self.result
        while len(r.import_kw) < int(t // BUCKET_S) or (final and len(r.import_kw) * BUCKET_S
                                                        < t):
            r.import_kw.append(self._bucket[0] / BUCKET_S / 1000)
            r.export_kw.append(self._bucket[1] / BUCKET_S / 1000)
            r.busy_guns.append(self._bucket[2] / BUCKET_S)
            r.bound_per_quarter.append(dict(self._bucket_bound))
            self._bucket = [0.0, 0.0, 0.0]
            self._bucket_bound = Counter()


def day_text(s: dict[str, Any]) -> str:
    cars = s["cars"]
    lines = [
        f"station-day ({s['model']})",
        f"{s['guns']} guns on {s['piles']} piles, {s['sim_h']} h in {s['wall_s']} s: "
        f"{s['gun_hours_per_wall_s']} gun-hours per wall second",
        f"cars: {cars.get('arrived', 0)} arrived, {cars.get('served', 0)} served, "
        f"{cars.get('turned_away', 0)} turned away, {cars.get('at_target', 0)} left at "
        f"target, {cars.get('below_target', 0)} below",
        f"energy: {s['charged_kwh']} kWh charged, {s['discharged_kwh']} kWh discharged",
        f"grid: peak import {s['peak_import_kw']} kW (limit {s['grid_limit_kw']}), peak "
        f"export {s['peak_export_kw']} kW (limit {s['export_limit_kw']})",
        f"pool: {s['pool_moves']} group moves, {len(s['group_faults'])} group faults",
        "bound by: " + ", ".join(f"{k} {v:.1%}" for k, v in s["bound_by_share"].items()),
        f"settlement: {s['settlement_cny']['charging_cost']} CNY for charging, "
        f"{s['settlement_cny']['discharge_paid']} CNY paid for discharge",
    ]
    return "\n".join(lines)


def terminal_progress(what: str) -> Callable[[float, float], None] | None:
    """A line on stderr that counts the simulated day, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(t: float, total: float) -> None:
        print(f"\r{what}: {hhmm(t)} of {hhmm(total) if total < 86400 else '24:00:00'} "
              f"({100 * t / total:.0f} %)", end="", file=sys.stderr, flush=True)

    return show


def run_station_day_cli(options: DayOptions, json_out: bool, out: IO[str] | None = None,
                        report_dir: str | None = None) -> int:
    progress = terminal_progress("station-day")
    result = StationDay(options).run(progress)
    if progress is not None:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    s = result.summary()
    print(json.dumps(s) if json_out else day_text(s), file=out or sys.stdout)
    if report_dir:
        from hil.day_report import write_day_report

        written = write_day_report(Path(report_dir), result)
        print(f"report: {written[-1]} (junit.xml beside it)", file=sys.stderr)
    bad = s["above_grid_steps"] or s["above_export_steps"] or s["above_gun_rating_steps"] \
        or s["switched_under_load"]
    return 1 if bad else 0

