"""`pile-agent sim`: the agent against a simulated pile and car, over real transports.

The car (battery + BMS) speaks GB/T 27930 on a python-can `virtual` bus; the power
module is a pymodbus server on loopback TCP. The agent is the same `GunRuntime` that
drives a real pile. Time is simulated and event-driven: it jumps to the next instant
anyone is due (the agent's deadline or bus service, the car's next message); at each,
the car sends what is due, the plant's physics advance over the jump, then the agent
steps if it is due or something arrived. Scripted runs (faults, V2G scenarios, replays)
and `--lock-step` step every 10 ms instead. `--speed` paces simulated time against the
wall; by default it runs flat out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import can

from agent.core.commands import Command, CurrentDecided, Notice, SessionReport, StateChanged
from agent.core.events import Event, StopRequested, VehicleConnected
from agent.core.frequency_watt import FrequencyDroop
from agent.core.health_policy import HealthPolicy
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from agent.core.thermal_guard import ThermalSupervisor
from agent.core.upstream import UpstreamPolicy
from agent.ledger.outbox import Outbox
from agent.ledger.settlement import Summary, settle
from agent.ledger.store import Ledger, LedgerError
from agent.runtime.clock import SimClock
from agent.runtime.ems_view import ems_snapshot
from agent.runtime.gun_runtime import GunRuntime
from agent.runtime.ocpp_bridge import OcppBridge
from agent.runtime.session_traces import FORMATS, TraceFiles, TraceSettings
from drivers.dc_meter.link import MeterBusOwner
from drivers.gbt27930.candump import CandumpWriter
from drivers.gbt27930.link import FrameLog, GbtLink, Role
from drivers.ocpp.client import OcppClient, OcppSettings
from drivers.power_module.link import ModuleLink, TcpTarget
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner
from drivers.sunspec.codec import layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer
from drivers.task_end import within
from hil import car_can_faults, report
from hil.csms_sim import Csms
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleParams, ModuleSim
from hil.replay_bms import RawPayload, ReplayBms, load_recording
from hil.report import RunSummary
from hil.safety_io_sim import SafetyIoSim
from hil.scenario_engine import ScenarioRun, Verdict
from hil.scenario_file import ScenarioFile, plain_session
from hil.site_clock import hhmm
from hil.vpp_sim import ModbusVpp

STEP_S = 0.01  # 10 ms: a fifth of the fastest GB/T period (BCL/CCS 50 ms)
# Fixed epoch for CAN-log timestamps, so two runs of one scenario give identical logs.
LOG_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LINGER_S = 1.0
# A session still running at the time limit is stopped; GB/T 27930's stop sequence (CST,
# <= 5 A, K1/K2 open, BSD: T.STOP_CURRENT_BUDGET is 10 s) ends well inside this.
STOP_GRACE_S = 15.0
PLUG_IN_AT_S = 0.2  # keep stepping after the session ends so the car sees CSD / CST
# A recording with no energy transfer in it (session-a's ends in configuration): charge on
# the simulated car's demand this long, then stop as an operator would.
REPLAY_SYNTHESIZED_CHARGE_S = 10.0
# The normal sequence, in the order states.py declares it.
SESSION_ORDER = tuple(s.value for s in State if s not in (State.IDLE, State.FAULT))


@dataclass(frozen=True)
class SimOptions:
    speed: float = 0.0
    can_log: str | None = None
    start_soc_pct: float = 20.0
    target_soc_pct: float = 80.0
    max_sim_s: float = 3600.0
    json_summary: bool = False
    live: bool = True
    ratings: GunRatings = field(default_factory=GunRatings)
    module: ModuleParams = field(default_factory=ModuleParams)
    replay_bms: str | None = None  # a candump trace: the car answers as the recorded one did
    # A scenario file (hil/scenario_file.py): the gun, the car, the upstream, the steps and
    # the expectations; the flags' car and gun are the base its tables change.
    scenario: ScenarioFile | None = None
    # Write a report of the run here (JUnit XML, an HTML page, the CAN traffic as candump,
    # .asc and .blf; hil/report.py).
    report_dir: str | None = None
    ledger: str = ":memory:"  # the SQLite energy ledger (a file keeps the records)
    # The site's local time of day at the start and at the end (s after midnight), for
    # scenarios on the site clock; None: the scenario's own.
    site_start_s: float | None = None
    site_end_s: float | None = None
    lock_step: bool = False  # step every 10 ms instead of jumping to the next due instant
    trace_output: bool = False  # keep the module's output current every 10 ms (V2G: always)
    health: HealthPolicy | None = None  # the operator's battery-health policy (None: none)


@dataclass
class SimResult:
    outcome: str = "timeout"
    reason: str = ""
    stopped_at_time_limit: bool = False  # the agent stopped the session at --max-sim-s
    ledger_error: str = ""  # the ledger file went away or was replaced during the run
    recovered: list[str] = field(default_factory=list)  # sessions a killed run left open
    energy_kwh: float = 0.0
    sim_duration_s: float = 0.0
    wall_s: float = 0.0
    start_soc_pct: float | None = None
    end_soc_pct: float | None = None
    battery_energy_in_kwh: float = 0.0
    states: list[tuple[float, str]] = field(default_factory=list)
    notices: list[tuple[float, str, str]] = field(default_factory=list)
    max_current_a: float = 0.0
    fault: str | None = None
    fault_injected_at: float | None = None
    safe_at: float | None = None
    fault_verdict: str = ""
    fault_ok: bool = False
    vehicle_data: dict[str, int] = field(default_factory=dict)
    replay: dict[str, Any] | None = None
    scenario: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    scenario_failures: list[str] = field(default_factory=list)
    scenario_script: list[str] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)
    current_trace: list[tuple[float, float]] = field(default_factory=list)
    min_soc_pct: float = 100.0
    ledger_to_vehicle_kwh: float | None = None
    ledger_from_vehicle_kwh: float | None = None
    battery_energy_out_kwh: float = 0.0
    settlement: Summary | None = None  # the run's ledger priced with the file's [tariff]
    health: dict[str, Any] = field(default_factory=dict)
    instants: int = 0  # simulated instants the loop visited
    agent_steps: int = 0  # of which the agent stepped
    can_frames: int = 0  # on the bus, both ways
    modbus_requests: int = 0  # served by the module, I/O board and meter simulators

    @property
    def furthest_state(self) -> str:
        reached = [s for _t, s in self.states if s in SESSION_ORDER]
        return max(reached, key=SESSION_ORDER.index, default="idle")

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("current_trace")
        d["states"] = [f"{t:.2f} {s}" for t, s in self.states]
        d["furthest_state"] = self.furthest_state
        return d


class SimulatedPile:
    """Agent + car + module wired over real transports; use `async with`."""

    def __init__(self, options: SimOptions, out: IO[str] | None = None) -> None:
        self.options = options
        self.out = out
        self.clock = SimClock(options.speed)
        self.result = SimResult()
        self.module_sim = ModuleSim(options.module)
        self.meter_sim = MeterSim(self.module_sim)
        sf = options.scenario
        # A report needs a recording: a plain session gets the plain session's file.
        plan_file = sf or (plain_session() if options.report_dir else None)
        self.plan = ScenarioRun(plan_file) if plan_file is not None else None
        ratings = self.ratings = sf.ratings(options.ratings) if sf else options.ratings
        car = VehicleConfig(start_soc_pct=options.start_soc_pct,
                            target_soc_pct=options.target_soc_pct)
        replay = str(sf.replay_bms) if sf is not None and sf.replay_bms else options.replay_bms
        if replay:
            self.bms: BmsSimulator | ReplayBms = ReplayBms(load_recording(replay))
        else:
            self.bms = BmsSimulator(sf.vehicle(car) if sf else car)
        upstream = None
        if sf is not None and sf.upstream.droop_rated_w is not None:
            upstream = UpstreamPolicy(droop=FrequencyDroop(rated_w=sf.upstream.droop_rated_w))
        self._replay_stopped = False
        self.safety_io = SafetyIoSim(self.module_sim)
        self.session = GunSession(ratings, thermal=ThermalSupervisor(), require_safety_io=True,
                                  upstream=upstream,
                                  health=options.health)
        self.ledger = Ledger(options.ledger)
        # Sessions a killed run left open: closed from their checkpoints before this one.
        self.result.recovered = self.ledger.recover("agent restarted")
        self.agent_hung = False  # fault injection: the agent process stops stepping
        self.injected_events: list[Event] = []
        self._stack = AsyncExitStack()
        self._last_live = -1e9
        self.ems: SunSpecServer | None = None
        self.vpp: ModbusVpp | None = None
        self.csms: Csms | None = None
        self.site_start_s = options.site_start_s if options.site_start_s is not None else (
            sf.site_start_s if sf is not None else None)
        self.site_end_s = options.site_end_s if options.site_end_s is not None else (
            sf.site_end_s if sf is not None else None)
        self._departed = False
        # A fault of the car's CAN side (hil/car_can_faults.py), set by a scenario step.
        self.car_can = ""
        # The wall clock of the run: the fixed epoch, or the site's local time of day (the
        # gun's UTC offset, the one its CTS carries), so a scenario on the site clock has
        # its ledger, settlement and traces at the hours it names.
        self.epoch = LOG_EPOCH if self.site_start_s is None else \
            LOG_EPOCH - ratings.utc_offset_h * 3600.0 + self.site_start_s
        self.csms_port = 0
        self.ocpp: OcppBridge | None = None
        # Scripted runs (scenarios, a replayed car) look at the world every step unless
        # their file says otherwise; a plain session jumps from one due instant to the next.
        self.lock_step = options.lock_step or bool(options.replay_bms) or (
            sf is not None and sf.lock_step)

    async def __aenter__(self) -> SimulatedPile:
        sf = self.options.scenario
        # Bus failures reach the core as events; pymodbus's own error logging is noise here.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        channel = f"pile-sim-{uuid.uuid4().hex[:8]}"
        charger_bus = self._stack.enter_context(
            can.Bus(interface="virtual", channel=channel, bitrate=250_000))
        vehicle_bus = self._stack.enter_context(
            can.Bus(interface="virtual", channel=channel, bitrate=250_000))
        logs: list[FrameLog] = []
        if self.options.can_log:
            fh = self._stack.enter_context(open(self.options.can_log, "w"))  # noqa: SIM115
            logs.append(CandumpWriter(fh, channel="can0", epoch=self.epoch))
        if self.options.report_dir:
            report = Path(self.options.report_dir)
            report.mkdir(parents=True, exist_ok=True)
            files = TraceFiles(TraceSettings(report, formats=FORMATS), "can", "can0",
                               self.epoch)
            self._stack.callback(files.close)
            logs.append(files)
        log = logs[0] if len(logs) == 1 else (FrameTee(logs) if logs else None)
        server, port = await self.module_sim.start_tcp("127.0.0.1", 0)
        self._stack.push_async_callback(server.stop)
        owner = ModuleBusOwner(ModuleLink(TcpTarget("127.0.0.1", port)))
        self._stack.push_async_callback(owner.close)
        io_server, io_port = await self.safety_io.start_tcp("127.0.0.1", 0)
        self._stack.push_async_callback(io_server.stop)
        safety_bus = SafetyBusOwner(TcpTarget("127.0.0.1", io_port))
        self._stack.push_async_callback(safety_bus.close)
        meter_server, meter_port = await self.meter_sim.start_tcp("127.0.0.1", 0)
        self._stack.push_async_callback(meter_server.stop)
        meter = MeterBusOwner(TcpTarget("127.0.0.1", meter_port))
        self._stack.push_async_callback(meter.close)
        self._stack.callback(self.ledger.close)
        self.vehicle_link = GbtLink(vehicle_bus, Role.BMS)
        if sf is not None and sf.upstream.ems:
            await self._serve_ems(EmsSettings(allow_discharge=sf.upstream.ems_allow_discharge))
        if sf is not None and sf.upstream.csms:
            await self._connect_csms()
        self.charger_link = GbtLink(charger_bus, Role.CHARGER, log=log)
        self.runtime = GunRuntime(self.session, self.charger_link, owner, self._on_report,
                                  safety=safety_bus, meter=meter, ledger=self.ledger)
        return self

    async def _serve_ems(self, settings: EmsSettings) -> None:
        """The agent's SunSpec server, and the VPP that dispatches through it."""
        base, models = load_map()
        lay = layout(base, models, n_ports=1)
        self.ems = SunSpecServer(lay, EmsControls(settings),
                                 lambda: ems_snapshot(self.session, "sim", int(self.clock.now())),
                                 self.clock.now)
        port = await self.ems.start("127.0.0.1", 0)
        self._stack.push_async_callback(self.ems.stop)
        self.vpp = ModbusVpp(lay, port=port)
        await self.vpp.connect()
        self._stack.callback(self.vpp.drop)

    async def _connect_csms(self) -> None:
        """A central system on loopback, and the agent's OCPP client connected to it (its
        clock: the simulated wall clock, so profiles and offline durations run at the
        simulation's speed)."""
        self.csms = Csms(heartbeat_s=60)
        self.csms_port = await self.csms.start()
        self._stack.push_async_callback(self._stop_csms)
        outbox = Outbox(self.options.ledger if self.options.ledger != ":memory:"
                        else ":memory:")
        self._stack.callback(outbox.close)
        client = OcppClient(OcppSettings(url=f"ws://127.0.0.1:{self.csms_port}/ocpp",
                                         station_id="SIM-PILE-1", reconnect_s=0.1),
                            outbox, self.sim_wall)
        task = asyncio.create_task(client.run())
        self._stack.push_async_callback(_cancel, task)
        self.ocpp = OcppBridge(client, self.session, self.sim_wall, meter_interval_s=10.0)
        await within(self.csms.booted.wait(), 10.0)

    async def _stop_csms(self) -> None:
        if self.csms is not None:
            await self.csms.stop()

    def site_s(self, t: float) -> float:
        """The site's local time of day at simulated time t (s after midnight)."""
        return (self.site_start_s or 0.0) + t

    def sim_wall(self) -> float:
        return self.epoch + self.clock.now()

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # ---- reporting ---------------------------------------------------------------

    def set_target(self, name: str) -> object:
        """What a scenario step's `set = { "io.door_open" = true }` names."""
        return {"module": self.module_sim, "car": self.bms, "io": self.safety_io,
                "meter": self.meter_sim, "pile": self}[name]

    def charging_began(self) -> float | None:
        return next((ts for ts, s in self.result.states if s == "charging"), None)

    def say(self, line: str) -> None:
        self._say(line)

    def _say(self, line: str) -> None:
        if self.out is not None and self.options.live:
            print(line, file=self.out, flush=True)

    def _on_report(self, command: Command) -> None:
        r, t = self.result, self.clock.now()
        match command:
            case StateChanged(source=src, dest=dest, reason=why):
                r.states.append((t, dest))
                self._say(f"[{t:8.2f} s] {src} -> {dest}: {why}")
            case CurrentDecided(current_a=i, bound_by=bound):
                r.max_current_a = max(r.max_current_a, abs(i))
                if self.plan is not None:
                    self.plan.rec.bound_by.add(t, bound.split("/")[0])
            case Notice(kind=kind, detail=detail):
                r.notices.append((t, kind, detail))
                self._say(f"[{t:8.2f} s] notice {kind}: {detail}")
            case SessionReport():
                r.outcome, r.reason = command.outcome, command.reason
                r.vehicle_data = dict(command.vehicle_data)
                r.energy_kwh, r.sim_duration_s = command.energy_kwh, command.duration_s
                r.start_soc_pct, r.end_soc_pct = command.start_soc_pct, command.end_soc_pct
                r.ledger_to_vehicle_kwh = command.metered_to_vehicle_kwh
                r.ledger_from_vehicle_kwh = command.metered_from_vehicle_kwh
                r.health = dict(command.health)
                r.phases = [(ts, d.value) for ts, d in self.session.data.direction.phases]

    def _live_line(self, t: float) -> None:
        if t - self._last_live < 60.0:
            return
        self._last_live = t
        st, d = self.session.plant.status, self.session.data
        soc = d.bcs.soc_pct if d.bcs else (d.start_soc_pct or 0.0)
        if st is not None:
            self._say(f"[{t:8.2f} s] {self.session.state.value:>18}  SOC {soc:5.1f} %  "
                      f"{st.output_voltage_v:6.1f} V  {st.output_current_a:6.1f} A  "
                      f"{st.output_voltage_v * st.output_current_a / 1000:6.1f} kW  "
                      f"{d.energy_kwh:6.2f} kWh  module {st.temperature_c:4.1f} C")

    # ---- the lock-step loop ----------------------------------------------------

    async def run(self) -> SimResult:
        wall0 = time.monotonic()
        ended_at: float | None = None
        plugged = False
        max_sim_s = self.options.max_sim_s
        plan = self.plan
        if plan is not None and plan.sf.max_sim_s is not None:
            max_sim_s = plan.sf.max_sim_s
        if plan is not None and self.site_start_s is not None and self.site_end_s is not None:
            max_sim_s = (self.site_end_s - self.site_start_s) % 86400 + 600.0
        judged_run = plan is not None and plan.sf.end_when_judged
        t_prev, agent_due = -STEP_S, 0.0
        while True:
            if self.clock.now() >= max_sim_s:
                if self.result.stopped_at_time_limit or judged_run \
                        or self.agent_hung or self.session.state in (
                            State.IDLE, State.FINISHED, State.FAULT):
                    break
                # Out of simulated time with a session running: the agent stops it as a
                # service stops (CST, <= 5 A, K1/K2 open), so its records reach the ledger.
                self.result.stopped_at_time_limit = True
                self.injected_events.append(StopRequested(
                    self.clock.now(), f"agent stopped: the simulation's {max_sim_s:g} s"))
                max_sim_s = self.clock.now() + STOP_GRACE_S
            t = round(self.clock.now(), 6)
            dt, t_prev = t - t_prev, t
            self.result.instants += 1
            spoke = self.vehicle_link.frames_sent
            self._step_vehicle(t)
            self.bms.battery.current_a = 0.0  # the module sets it again if it is loaded
            self.module_sim.step(dt, self.bms.battery)
            self.meter_sim.step(dt)
            self.safety_io.step(dt, self.module_sim.current_a)
            extra, self.injected_events = self.injected_events, []
            if not plugged and t >= PLUG_IN_AT_S - 1e-9:
                # The car arrives once the agent has read the safety bus: before that the
                # core rightly refuses a start (E-stop and temperatures unknown).
                plugged = True
                extra.append(VehicleConnected(t, wall_clock_s=self.epoch + t))
            extra += self._replay_stop(t)
            if plan is not None:
                extra += await plan.act(self, t)
                extra += self._site_departure(t)
            if self.ems is not None:
                extra += self.ems.events(t)
            if self.ocpp is not None:
                extra += self.ocpp.events(t)
            self._observe(t)
            # The agent steps when its deadline comes, or when a frame or an event arrives
            # for it (event-driven time; in lock-step, every step).
            due = self.lock_step or extra or spoke != self.vehicle_link.frames_sent \
                or t >= agent_due - 1e-9
            if not self.agent_hung and due:
                await self.runtime.step(t, extra)
                agent_due = self.runtime.next_due()
                self.result.agent_steps += 1
            self._live_line(t)
            if judged_run:
                if plan is not None and plan.over():
                    break
            elif ended_at is None and self.session.state in (State.FINISHED, State.FAULT):
                ended_at = t
            if not judged_run and ended_at is not None and t - ended_at >= LINGER_S \
                    and (plan is None or not plan.judging(self)):
                break
            await self.clock.advance(self._next_instant(t, agent_due, plugged, ended_at) - t)
        if self.ocpp is not None:
            self.ocpp.events(self.clock.now())  # the Ended event
            await self._drain_outbox()
        self.result.wall_s = time.monotonic() - wall0
        self.result.can_frames = self.vehicle_link.frames_sent + self.charger_link.frames_sent
        self.result.modbus_requests = self.module_sim.requests + self.safety_io.requests \
            + self.meter_sim.requests
        self.result.battery_energy_in_kwh = self.bms.battery.energy_in_kwh
        if isinstance(self.bms, ReplayBms):
            self.result.replay = self.bms.summary()
        if plan is not None:
            self._judge_scenario(plan)
        if self.result.outcome == "timeout":
            self.result.reason = f"no end of session within {max_sim_s} s"
        self._check_ledger()
        if plan is not None and plan.sf.tariff is not None:
            key = self.runtime.session_key()  # this run's session, not the file's others
            self.result.settlement = settle(self.ledger.intervals(key), plan.sf.tariff, 1)
            self.result.verdicts += plan.judge_settlement(self.result.settlement)
            self.result.scenario_failures = [f"{v.name}: {v.detail}" for v in
                                             self.result.verdicts if v.status == "FAIL"]
        return self.result

    def _check_ledger(self) -> None:
        """The records the run reported are in the ledger file it opened (a file removed or
        replaced meanwhile is said, not a silent success)."""
        try:
            self.ledger.check_identity()
        except LedgerError as exc:
            self.result.ledger_error = str(exc)

    def _next_instant(self, t: float, agent_due: float, plugged: bool,
                      ended_at: float | None) -> float:
        """Where simulated time jumps next: the first instant anyone is due (the agent's
        deadline and bus services, the car's next message, the plug-in, the end), or the
        next step in lock-step."""
        if self.lock_step:
            return t + STEP_S
        due = [self.bms.next_due(t, STEP_S)]
        if not self.agent_hung:
            due.append(agent_due)
        if not plugged:
            due.append(PLUG_IN_AT_S)
        if ended_at is not None:
            due.append(ended_at + LINGER_S)
        return min((d for d in due if d > t + 1e-7), default=t + STEP_S)

    async def _drain_outbox(self) -> None:
        """Let the OCPP client deliver what is waiting (real time, at most 10 s)."""
        assert self.ocpp is not None
        outbox = self.ocpp.client.outbox
        for _ in range(500):
            if outbox.counts()[1] == 0 and self.ocpp.client.online:
                return
            await asyncio.sleep(0.02)

    def _observe(self, t: float) -> None:
        r = self.result
        if self.options.trace_output:
            r.current_trace.append((t, self.module_sim.current_a))
        if self.session.state is State.CHARGING:
            r.min_soc_pct = min(r.min_soc_pct, self.bms.battery.soc_pct)
        if self.plan is not None:
            self.plan.observe(self, t)

    def _site_departure(self, t: float) -> list[Event]:
        """On the site clock, the owner leaves at the scenario's end time."""
        end = self.site_end_s
        if end is None or self._departed or self.site_start_s is None:
            return []
        if (self.site_s(t) - end) % 86400 > 43200:
            return []
        self._departed = True
        self._say(f"[{t:8.2f} s] the owner departs at {hhmm(end)}")
        return [StopRequested(t, f"owner departs at {hhmm(end)}")]

    def _judge_scenario(self, plan: ScenarioRun) -> None:
        r = self.result
        if self.options.scenario is not None:
            r.scenario = plan.sf.name
        r.battery_energy_out_kwh = self.bms.battery.energy_out_kwh
        r.verdicts = plan.judge(self)
        r.scenario_failures = [f"{v.name}: {v.detail}" for v in r.verdicts
                               if v.status == "FAIL"]
        r.scenario_script = list(plan.notes)  # with what the expectations measured
        if plan.fault_step is not None:
            r.fault = plan.sf.name
            r.fault_injected_at = plan.fired.get(plan.fault_step)
        judged = [v for v in r.verdicts if v.measure in (
            "safe_state_s", "commanded_at_most_a", "notice_after_s")]
        r.fault_ok = not r.scenario_failures
        r.fault_verdict = "; ".join(f"{v.detail} ({v.source})" if v.source else v.detail
                                    for v in judged or r.verdicts if v.status != "N/A")

    def _replay_stop(self, t: float) -> list[Event]:
        """The recorded session's end: once its energy transfer has been replayed, stop as
        its charger did (or as an operator would, when the trace has none)."""
        bms = self.bms
        if not isinstance(bms, ReplayBms) or self._replay_stopped \
                or self.session.state is not State.CHARGING or not bms.energy_transfer_over:
            return []
        rec = bms.recording
        if "BCL" not in rec.payloads:
            since = next((ts for ts, s in self.result.states if s == "charging"), t)
            if t - since < REPLAY_SYNTHESIZED_CHARGE_S:
                return []
            why = (f"replay: the recording has no energy transfer; stopped after "
                   f"{REPLAY_SYNTHESIZED_CHARGE_S:.0f} s on the simulated demand")
        elif rec.charger_stop is not None:
            reasons = ", ".join(sorted(r.value for r in rec.charger_stop.reasons)) or "none"
            why = f"replay: the recording ends with its charger's CST ({reasons})"
        else:
            why = "replay: the recording's energy transfer is over"
        self._replay_stopped = True
        return [StopRequested(t, why)]

    def _step_vehicle(self, t: float) -> None:
        fault = self.car_can
        if fault == "bus-off":  # the car's controller is off the bus: its timers run on
            self.bms.poll(t)
            return
        for item in self.vehicle_link.poll(t):
            if not hasattr(item, "detail"):
                self.bms.receive(item, t)  # type: ignore[arg-type]
        for message in self.bms.poll(t):
            if isinstance(message, RawPayload):
                self.vehicle_link.send_payload(message.pgn, message.payload, t,
                                               message.priority)
            else:
                car_can_faults.send(self.vehicle_link, message, t, fault)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class FrameTee:
    """Every frame to each of several logs (the --can-log file and the report's traces)."""

    def __init__(self, logs: list[FrameLog]) -> None:
        self.logs = logs

    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None:
        for log in self.logs:
            log.write(t, can_id, data, extended)


async def run_sim(options: SimOptions, out: IO[str] | None = None) -> SimResult:
    async with SimulatedPile(options, out) as pile:
        result = await pile.run()
    if options.report_dir and pile.plan is not None:
        _write_report(Path(options.report_dir), pile, result)
    return result


def _write_report(directory: Path, pile: SimulatedPile, result: SimResult) -> None:
    plan = pile.plan
    assert plan is not None
    files = [p.name for p in sorted(directory.glob("can.*"))]
    summary = RunSummary(plan.sf.name, plan.sf.description, result.outcome, result.reason,
                         plan.rec.end_s, result.wall_s, result.states, plan.notes, files)
    report.write(directory, summary, result.verdicts, plan.rec)


async def run_sim_cli(options: SimOptions, as_fault: bool = False,
                      report_dir: str | None = None) -> int:
    # With --json, stdout carries the JSON alone (it can be piped); live lines go to stderr.
    try:
        result = await run_sim(options, sys.stderr if options.json_summary else sys.stdout)
    except LedgerError as exc:
        print(f"pile-agent sim: --ledger: {exc}", file=sys.stderr)
        return 2
    for line in result.recovered:
        print(f"ledger: closed a session a killed run left open: {line}", file=sys.stderr)
    if result.ledger_error:
        print(f"pile-agent sim: {result.ledger_error}", file=sys.stderr)
        return 1
    summary = result.summary()
    if options.report_dir:
        print(f"report: {Path(options.report_dir) / 'report.html'} (junit.xml, can.log, "
              "can.asc, can.blf beside it)", file=sys.stderr)
    if as_fault:
        verdict = "PASS" if result.fault_ok else "FAIL"
        if options.json_summary:
            print(json.dumps(summary, indent=2))
        else:
            print(f"fault {result.fault}: {verdict}: {result.fault_verdict or 'not injected'}"
                  f"\n  session {result.outcome}: {result.reason}")
        return 0 if result.fault_ok else 1
    if options.json_summary:
        print(json.dumps(summary, indent=2))
    elif result.scenario is not None:
        print(_scenario_text(result))
    elif result.replay is not None:
        rp = result.replay
        print(f"replay of {rp['recording']}: reached {result.furthest_state}; session "
              f"{result.outcome}: {result.reason}\n"
              f"  replayed as recorded: {_counts(rp['replayed'])}\n"
              f"  synthesized (not in the recording): {_counts(rp['synthesized'])}\n"
              f"  announced but never transferred in the recording: "
              f"{_counts(rp['announced_never_sent'])}\n"
              f"  periods: {rp['periods']}; delivered {result.energy_kwh:.2f} kWh, peak "
              f"{result.max_current_a:.1f} A; vehicle data: {_counts(result.vehicle_data)}")
    else:
        soc = (f"{result.start_soc_pct:.1f} % -> {result.end_soc_pct:.1f} %"
               if result.start_soc_pct is not None and result.end_soc_pct is not None else "n/a")
        print(f"session {result.outcome}: {result.reason}\n"
              f"  SOC {soc}, delivered {result.energy_kwh:.2f} kWh "
              f"(battery took {result.battery_energy_in_kwh:.2f} kWh), "
              f"peak {result.max_current_a:.1f} A\n"
              f"  simulated {result.sim_duration_s:.0f} s in {result.wall_s:.1f} s wall "
              f"({result.sim_duration_s / max(result.wall_s, 1e-9):.0f}x real time)")
    if result.scenario is not None:
        return 0 if not result.scenario_failures else 1
    return 0 if result.outcome == "finished" and not result.stopped_at_time_limit else 1


def _scenario_text(result: SimResult) -> str:
    verdict = "PASS" if not result.scenario_failures else "FAIL"
    lines = [f"scenario {result.scenario}: {verdict}",
             *(f"  {n}" for n in result.scenario_script),
             f"  session {result.outcome}: {result.reason}",
             "  phases: " + ", ".join(f"{d} @ {t:.0f} s" for t, d in result.phases),
             f"  ledger: charged {result.ledger_to_vehicle_kwh or 0.0:.3f} kWh, discharged "
             f"{result.ledger_from_vehicle_kwh or 0.0:.3f} kWh (battery gave "
             f"{result.battery_energy_out_kwh:.3f} kWh)",
             "  health: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in result.health.items()),
             *_settlement_lines(result),
             *(f"  {v.status:4} {v.name}: {v.detail}" for v in result.verdicts)]
    return "\n".join(lines)


def _settlement_lines(result: SimResult) -> list[str]:
    s = result.settlement
    if s is None:
        return []
    return ["  settlement (the scenario's [tariff], the ledger's metered intervals):",
            *(f"    {key:30} {kwh:8.3f} kWh" for key, kwh in sorted(s.by_price.items())),
            f"    charging cost      {s.charge_cost_cny:8.2f} CNY",
            f"    discharge revenue  {s.discharge_revenue_cny:8.2f} CNY",
            f"    net to the owner   {s.net_cny:+8.2f} CNY"]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
