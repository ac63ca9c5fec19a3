"""`pile-agent sim --guns N --scenario NAME`: one agent runs N guns of one pile, which share
a pool of module groups through a contactor matrix, over real transports.

Per gun: a car (BMS on its own python-can virtual channel), the gun's output unit (power
module register map), its I/O board with IMD and its DC meter, each a pymodbus server on
loopback. Per pile: the matrix board with the groups behind it (hil/matrix_sim.py). The
agent side is the runtime a real pile runs: one `GunRuntime` per gun and the pile's
`PileCoordinator` (agent/core/pile.py), whose capability reaches each gun's arbiter.
Time is simulated and event-driven, as in `hil/sim.py`: each gun steps at its own next
instant (its agent's deadline, its car's next message) and every gun when the pool plans
(each matrix read, 100 ms) and at the scenario's own instants (its steps, its setpoint
refreshes). A file may ask for lock-step (10 ms) instead.

What runs is a pile scenario file (hil/pile_scenario_file.py; the built-ins are under
hil/scenarios/pile/), judged by hil/pile_scenario_run.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import can

from agent.core.commands import Command, CurrentDecided, Notice, SessionReport, StateChanged
from agent.core.events import Event, PoolCapability, VehicleConnected
from agent.core.module_pool import Group, ModulePool
from agent.core.pile import PileCoordinator, gives_less
from agent.core.session import GunSession
from agent.core.states import State
from agent.core.thermal_guard import ThermalSupervisor
from agent.ledger.store import Ledger
from agent.runtime.clock import SimClock
from agent.runtime.gun_runtime import GunRuntime
from drivers.dc_meter.link import MeterBusOwner
from drivers.gbt27930.link import GbtLink, LinkNotice, LinkProblem, Role
from drivers.module_matrix.link import MatrixBusOwner
from drivers.power_module.link import ModuleLink, TcpTarget
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner
from hil.ev_bms import BmsSimulator
from hil.matrix_sim import GroupSim, MatrixSim
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.pile_report import PileRecording, PileReportInput, write_pile_report
from hil.pile_scenario_file import PileScenarioFile, load, named
from hil.pile_scenario_run import PileScenarioRun
from hil.report import RunSummary
from hil.safety_io_sim import SafetyIoSim
from hil.scenario_engine import Verdict

STEP_S = 0.01  # as hil/sim.py: a fifth of the fastest GB/T period (BCL/CCS 50 ms)
MATRIX_POLL_S = 0.1  # drivers/module_matrix/link.py POLL_PERIOD_S
LOG_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z, as hil/sim.py


@dataclass
class GunResult:
    gun: int
    outcome: str = "not plugged"
    reason: str = ""
    energy_kwh: float = 0.0
    start_soc_pct: float | None = None
    end_soc_pct: float | None = None
    states: list[tuple[float, str]] = field(default_factory=list)
    notices: list[tuple[float, str, str]] = field(default_factory=list)
    peak_a: float = 0.0
    # Every decision whose magnitude exceeded the pool capability the gun had been given.
    above_pool: list[tuple[float, float, float]] = field(default_factory=list)
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0


@dataclass
class PileResult:
    scenario: str
    guns: int
    description: str = ""
    sim_s: float = 0.0
    wall_s: float = 0.0
    per_gun: list[GunResult] = field(default_factory=list)
    pool_log: list[str] = field(default_factory=list)
    switched_under_load: list[tuple[float, str, int, float]] = field(default_factory=list)
    joined_two_guns: int = 0
    peak_import_w: float = 0.0
    peak_export_w: float = 0.0
    instants: int = 0  # simulated instants visited
    rig_steps: int = 0  # gun steps (world and agent) made
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"{v.name}: {v.detail}" for v in self.verdicts if v.status == "FAIL"]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "guns": self.guns, "verdict": self.verdict,
            "sim_s": round(self.sim_s, 2), "wall_s": round(self.wall_s, 2),
            "speedup": round(self.sim_s / max(self.wall_s, 1e-9), 1),
            "instants": self.instants, "gun_steps": self.rig_steps,
            "peak_import_kw": round(self.peak_import_w / 1000, 2),
            "peak_export_kw": round(self.peak_export_w / 1000, 2),
            "switched_under_load": self.switched_under_load,
            "joined_two_guns": self.joined_two_guns,
            "pool_log": self.pool_log, "notes": self.notes, "failures": self.failures,
            "verdicts": [{"name": v.name, "measure": v.measure, "status": v.status,
                          "measured": v.measured, "detail": v.detail} for v in self.verdicts],
            "guns_detail": [{
                "gun": g.gun, "outcome": g.outcome, "reason": g.reason,
                "energy_kwh": round(g.energy_kwh, 3), "charged_kwh": round(g.charged_kwh, 3),
                "discharged_kwh": round(g.discharged_kwh, 3),
                "soc": [g.start_soc_pct, g.end_soc_pct], "peak_a": round(g.peak_a, 1),
                "above_pool": len(g.above_pool),
                "states": [f"{t:.2f} {s}" for t, s in g.states]} for g in self.per_gun],
        }

    @property
    def verdict(self) -> str:
        return "PASS" if not self.failures else "FAIL"


class GunRig:
    """One gun: its car and devices (simulated) and its runtime (the agent's)."""

    def __init__(self, gun: int, scenario: PileScenarioFile, guns: int,
                 rec: PileRecording | None = None) -> None:
        self.gun = gun
        self.rec = rec  # the run's series, for its report
        self.vehicle = scenario.vehicle(gun, guns)
        self.bms = BmsSimulator(self.vehicle.config)  # a pile file gives every gun a car
        self.module = ModuleSim()
        self.module.supply = (0.0, 0.0)  # fed only by the groups switched to it
        self.safety = SafetyIoSim(self.module)
        self.meter = MeterSim(self.module)
        self.result = GunResult(gun)
        ratings = scenario.ratings(gun, guns)
        self.session = GunSession(ratings, thermal=ThermalSupervisor(), require_safety_io=True,
                                  upstream=scenario.upstream, pooled=True)
        self.plugged = False
        self.t_prev = -STEP_S
        self.next_t = 0.0  # event-driven time: the rig's next instant
        self.last_cap: PoolCapability | None = None
        self.ended_at: float | None = None
        self.runtime: GunRuntime
        self.vehicle_link: GbtLink | None = None

    async def start(self, stack: AsyncExitStack, ledger: Ledger, now: SimClock,
                    out: IO[str] | None) -> None:
        channel = f"pile-{self.gun}-{uuid.uuid4().hex[:8]}"
        charger_bus = stack.enter_context(can.Bus(interface="virtual", channel=channel))
        vehicle_bus = stack.enter_context(can.Bus(interface="virtual", channel=channel))
        self.vehicle_link = GbtLink(vehicle_bus, Role.BMS)
        owners: list[Any] = []
        for sim in (self.module, self.safety, self.meter):
            server, port = await sim.start_tcp("127.0.0.1", 0)
            stack.push_async_callback(server.stop)
            owners.append(port)
        module = ModuleBusOwner(ModuleLink(TcpTarget("127.0.0.1", owners[0])))
        safety = SafetyBusOwner(TcpTarget("127.0.0.1", owners[1]))
        meter = MeterBusOwner(TcpTarget("127.0.0.1", owners[2]))
        for owner in (module, safety, meter):
            stack.push_async_callback(owner.close)

        def report(command: Command) -> None:
            self._report(command, now.now(), out)

        self.runtime = GunRuntime(self.session, GbtLink(charger_bus, Role.CHARGER), module,
                                  report, safety=safety, meter=meter, ledger=ledger,
                                  gun=self.gun)

    def _report(self, command: Command, t: float, out: IO[str] | None) -> None:
        r = self.result
        match command:
            case StateChanged(dest=dest, reason=why):
                r.states.append((t, dest))
                _say(out, f"[{t:8.2f} s] gun {self.gun}: -> {dest}: {why}")
            case Notice(kind=kind, detail=detail):
                r.notices.append((t, kind, detail))
                _say(out, f"[{t:8.2f} s] gun {self.gun}: notice {kind}: {detail}")
            case CurrentDecided(current_a=amps):
                r.peak_a = max(r.peak_a, abs(amps))
                if self.rec is not None:
                    self.rec.decided(self.gun, t, amps)
                pool = self.session.plant.pool
                if pool is not None and abs(amps) > pool.current_a + 1e-6:
                    r.above_pool.append((t, amps, pool.current_a))
            case SessionReport():
                r.outcome, r.reason, r.energy_kwh = command.outcome, command.reason, \
                    command.energy_kwh
                r.start_soc_pct, r.end_soc_pct = command.start_soc_pct, command.end_soc_pct
                r.charged_kwh, r.discharged_kwh = command.charged_kwh, command.discharged_kwh

    def step_world(self, t: float) -> None:
        """The car speaks and the plant moves on to t (from the rig's last instant)."""
        dt, self.t_prev = t - self.t_prev, t
        if self.vehicle_link is not None:
            for item in self.vehicle_link.poll(t):
                if not isinstance(item, LinkProblem | LinkNotice):
                    self.bms.receive(item, t)  # type: ignore[arg-type]
            for message in self.bms.poll(t):
                self.vehicle_link.send(message, t)
            self.bms.battery.current_a = 0.0
        self.module.step(dt, self.bms.battery)
        self.meter.step(dt)
        self.safety.step(dt, self.module.current_a)

    def due_at(self, t: float) -> float:
        """The rig's next instant: its agent's, its car's or its plug-in."""
        due = [self.runtime.next_due(), self.bms.next_due(t, STEP_S)]
        if not self.plugged:
            due.append(self.vehicle.plug_at_s)
        return min((d for d in due if d > t + 1e-7), default=t + STEP_S)

    @property
    def power_w(self) -> float:
        return self.module.current_a * self.module.output_voltage_v


def _say(out: IO[str] | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)


class SimulatedMultiPile:
    """N guns, one module pool, one agent; use `async with`."""

    def __init__(self, scenario: PileScenarioFile, guns: int,
                 out: IO[str] | None = None) -> None:
        self.scenario = scenario
        self.plan = PileScenarioRun(scenario, guns)
        self.out = out
        self.clock = SimClock(0.0)
        self.rec = PileRecording(guns)
        self.rigs = [GunRig(g, scenario, guns, self.rec) for g in range(1, guns + 1)]
        self.groups = scenario.groups(guns)
        self.matrix = MatrixSim([GroupSim(g.id, g.current_a, g.power_w, g.reach)
                                 for g in self.groups],
                                guns={r.gun: r.module for r in self.rigs})
        self.pool = ModulePool(tuple(self.groups), pile_power_w=scenario.pile_power_w(guns),
                               grid_limit_w=scenario.grid_limit_w(guns),
                               export_limit_w=scenario.export_limit_w(guns))
        self.coordinator = PileCoordinator(self.pool, {})
        self.ledger = Ledger(":memory:")
        self.result = PileResult(scenario.name, guns, scenario.description)
        self._stack = AsyncExitStack()
        self.caps: dict[int, PoolCapability] = {}
        self.lock_step = scenario.lock_step

    async def __aenter__(self) -> SimulatedMultiPile:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._stack.callback(self.ledger.close)
        for rig in self.rigs:
            await rig.start(self._stack, self.ledger, self.clock, self.out)
        server, port = await self.matrix.start_tcp()
        self._stack.push_async_callback(server.stop)
        self.matrix_owner = MatrixBusOwner(TcpTarget("127.0.0.1", port), len(self.groups))
        self._stack.push_async_callback(self.matrix_owner.close)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def session(self, gun: int) -> GunSession:
        return self.rigs[gun - 1].session

    async def run(self) -> PileResult:
        wall0 = time.monotonic()
        plan, r = self.plan, self.result
        next_matrix, matrix_prev = 0.0, -STEP_S
        while self.clock.now() < plan.run_end_s:
            t = round(self.clock.now(), 6)
            extra: dict[int, list[Event]] = {rig.gun: [] for rig in self.rigs}
            for gun, events in plan.script(self, t).items():
                extra[gun] += events
            self.matrix.step(t - matrix_prev)
            matrix_prev = t
            # The pool plans on each matrix read (every 100 ms); in lock-step, every step.
            pool_due = self.lock_step or t >= next_matrix - 1e-9
            if t >= next_matrix - 1e-9:
                next_matrix = t + MATRIX_POLL_S
                for event in await self.matrix_owner.service(t):
                    self.coordinator.handle(event)
            if pool_due:
                commands, self.caps = self.coordinator.step(
                    t, {rig.gun: rig.session for rig in self.rigs})
                for command in commands:
                    self._execute(command, t)
                if self.matrix_owner._pending:
                    for event in await self.matrix_owner.service(t):
                        self.coordinator.handle(event)
            for rig in self.rigs:
                # Event-driven time, per gun: a rig steps at its own next instant, when the
                # pool gives it less, or when the script has something for it (as the real
                # time loop: a word that gives as much or more waits for the next step).
                cap = self.caps.get(rig.gun) if pool_due else None
                tighter = cap is not None and (self.lock_step or gives_less(cap, rig.last_cap))
                if cap is not None:
                    rig.last_cap = cap
                    if not tighter:
                        rig.runtime.feed(cap)
                if not (tighter or extra[rig.gun] or t >= rig.next_t - 1e-9):
                    continue
                if not rig.plugged and t >= rig.vehicle.plug_at_s:
                    rig.plugged = True
                    extra[rig.gun].append(VehicleConnected(t, wall_clock_s=LOG_EPOCH + t))
                rig.step_world(t)
                await rig.runtime.step(t, [*extra[rig.gun], *([cap] if tighter and cap else [])])
                rig.next_t = t + STEP_S if self.lock_step else rig.due_at(t)
                r.rig_steps += 1
            self._observe(t)
            r.instants += 1
            nxt = min([next_matrix, plan.next_due(t), *(rig.next_t for rig in self.rigs)])
            await self.clock.advance((t + STEP_S if self.lock_step else nxt) - t)
        r.sim_s, r.wall_s = self.clock.now(), time.monotonic() - wall0
        self.rec.close()
        r.per_gun = [rig.result for rig in self.rigs]
        r.switched_under_load = list(self.matrix.switched_under_load)
        r.joined_two_guns = len(self.matrix.joined_two_guns)
        r.verdicts = plan.judge(self)
        return r

    def _execute(self, command: Command, t: float) -> None:
        match command:
            case Notice(kind=kind, detail=detail):
                self.result.pool_log.append(detail)
                _say(self.out, f"[{t:8.2f} s] pile: {kind}: {detail}")
            case _:
                self.matrix_owner.submit(command)  # type: ignore[arg-type]

    def _observe(self, t: float) -> None:
        r = self.result
        imported = sum(max(rig.power_w, 0.0) for rig in self.rigs)
        exported = sum(max(-rig.power_w, 0.0) for rig in self.rigs)
        r.peak_import_w = max(r.peak_import_w, imported)
        r.peak_export_w = max(r.peak_export_w, exported)
        self.plan.observe(self, t)
        self.rec.observe(t, [rig.module.current_a for rig in self.rigs],
                         [rig.last_cap.current_a if rig.last_cap else None for rig in self.rigs],
                         imported, exported)

    def state(self, gun: int) -> State:
        return self.session(gun).state


async def run_pile_sim(scenario: str | PileScenarioFile, guns: int,
                       out: IO[str] | None = None) -> PileResult:
    """A pile scenario (a built-in's name, a file's path, or a loaded file) on N guns."""
    async with SimulatedMultiPile(_scenario(scenario), guns, out) as pile:
        return await pile.run()


def _scenario(scenario: str | PileScenarioFile) -> PileScenarioFile:
    if isinstance(scenario, PileScenarioFile):
        return scenario
    return load(scenario) if scenario.endswith(".toml") else named(scenario)


async def run_pile_sim_cli(scenario: str | PileScenarioFile, guns: int, json_summary: bool,
                           live: bool = True, report_dir: str | None = None) -> int:
    # With --json, stdout carries the JSON alone; live lines go to stderr.
    out = (sys.stderr if json_summary else sys.stdout) if live else None
    async with SimulatedMultiPile(_scenario(scenario), guns, out) as pile:
        result = await pile.run()
    if report_dir is not None:
        paths = write_report(Path(report_dir), pile)
        print(f"report: {', '.join(str(p) for p in paths)}",
              file=sys.stderr if json_summary else sys.stdout)
    if json_summary:
        print(json.dumps(result.summary(), indent=2))
    else:
        print(pile_text(result))
    return 0 if not result.failures else 1


def write_report(directory: Path, pile: SimulatedMultiPile) -> list[Path]:
    """`--report DIR` for a pile run: JUnit XML (a testcase per verdict: the invariants and
    each expectation per gun) and the page with the pile's plots."""
    r, plan, sf = pile.result, pile.plan, pile.scenario
    marks = sorted((plan.at[s.name], s.name, "fault" if "group_fault" in s.do else "step")
                   for s in sf.steps if s.name in plan.fired)
    steps = [f"{t:.1f} s: {name}" for t, name, _kind in marks]
    summary = RunSummary(f"{r.scenario}-{r.guns}-guns", r.description, r.verdict,
                         "; ".join(r.failures) or "every verdict holds", r.sim_s, r.wall_s,
                         (), [*steps, *r.notes], (), lead="the pile:")
    what = PileReportInput(summary, r.verdicts, marks, [g.states for g in r.per_gun],
                           sf.grid_limit_w(r.guns), sf.export_limit_w(r.guns))
    return write_pile_report(directory, pile.rec, what)


def pile_text(r: PileResult) -> str:
    lines = [f"scenario {r.scenario} on {r.guns} guns: {r.verdict}",
             f"  simulated {r.sim_s:.0f} s in {r.wall_s:.1f} s wall "
             f"({r.sim_s / max(r.wall_s, 1e-9):.0f}x); peak import {r.peak_import_w / 1000:.1f}"
             f" kW, peak export {r.peak_export_w / 1000:.1f} kW",
             *(f"  {n}" for n in r.notes),
             *(f"  {v.status:4}  {v.name}: {v.measured}" for v in r.verdicts),
             f"  matrix: {len(r.pool_log)} pool decisions, {len(r.switched_under_load)} "
             f"switched above 5 A, {r.joined_two_guns} reads of a group on two guns"]
    for g in r.per_gun:
        lines.append(f"  gun {g.gun}: session {g.outcome}: {g.reason}; charged "
                     f"{g.charged_kwh:.2f} kWh, discharged {g.discharged_kwh:.2f} kWh, peak "
                     f"{g.peak_a:.1f} A")
    lines += [f"  FAILED: {f}" for f in r.failures]
    return "\n".join(lines)


__all__ = ["Group", "PileResult", "SimulatedMultiPile", "run_pile_sim", "run_pile_sim_cli"]
