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
from typing import IO, Any

import can

from agent.core.commands import Command, CurrentDecided, Notice, SessionReport, StateChanged
from agent.core.events import Event, StopRequested, VehicleConnected
from agent.core.health_policy import HealthPolicy
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from agent.core.thermal_guard import ThermalSupervisor
from agent.ledger.outbox import Outbox
from agent.ledger.store import Ledger, LedgerError
from agent.runtime.clock import SimClock
from agent.runtime.ems_view import ems_snapshot
from agent.runtime.gun_runtime import GunRuntime
from agent.runtime.ocpp_bridge import OcppBridge
from drivers.dc_meter.link import MeterBusOwner
from drivers.gbt27930.candump import CandumpWriter
from drivers.gbt27930.link import GbtLink, Role
from drivers.ocpp.client import OcppClient, OcppSettings
from drivers.power_module.link import ModuleLink, TcpTarget
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner
from drivers.sunspec.codec import layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer
from hil.csms_sim import Csms
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.faults import LIMIT_GRACE_S, SCENARIOS
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleParams, ModuleSim
from hil.replay_bms import RawPayload, ReplayBms, load_recording
from hil.safety_io_sim import SafetyIoSim
from hil.scenarios import SCENARIOS as V2G_SCENARIOS
from hil.scenarios import Script
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
    fault: str | None = None  # a name from hil.faults.SCENARIOS
    fault_after_charging_s: float = 10.0
    replay_bms: str | None = None  # a candump trace: the car answers as the recorded one did
    scenario: str | None = None  # a name from hil.scenarios.SCENARIOS (V2G)
    ledger: str = ":memory:"  # the SQLite energy ledger (a file keeps the records)
    # The site's local time of day at the start and at the end (s after midnight), for
    # scenarios on the site clock; None: the scenario's own.
    site_start_s: float | None = None
    site_end_s: float | None = None
    lock_step: bool = False  # step every 10 ms instead of jumping to the next due instant
    trace_output: bool = False  # keep the module's output current every 10 ms (V2G: always)
    health: HealthPolicy | None = None  # the operator's battery-health policy (None: none)


@dataclass
class TraceRow:
    """One control decision, with the limits in force when it was made."""

    t: float
    state: str
    commanded_a: float
    commanded_v: float
    bound_by: str
    ev_demand_a: float | None
    ev_max_a: float | None
    measured_a: float
    measured_v: float


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
    trace: list[TraceRow] = field(default_factory=list)
    max_current_a: float = 0.0
    fault: str | None = None
    fault_injected_at: float | None = None
    safe_at: float | None = None
    fault_verdict: str = ""
    fault_ok: bool = False
    vehicle_data: dict[str, int] = field(default_factory=dict)
    replay: dict[str, Any] | None = None
    scenario: str | None = None
    scenario_failures: list[str] = field(default_factory=list)
    scenario_script: list[str] = field(default_factory=list)
    phases: list[tuple[float, str]] = field(default_factory=list)
    current_trace: list[tuple[float, float]] = field(default_factory=list)
    min_soc_pct: float = 100.0
    ledger_to_vehicle_kwh: float | None = None
    ledger_from_vehicle_kwh: float | None = None
    battery_energy_out_kwh: float = 0.0
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
        d.pop("trace")
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
        self.v2g = V2G_SCENARIOS[options.scenario] if options.scenario else None
        self.script = Script()
        ratings = self.ratings = self.v2g.ratings if self.v2g else options.ratings
        if options.replay_bms:
            self.bms: BmsSimulator | ReplayBms = ReplayBms(load_recording(options.replay_bms))
        else:
            self.bms = BmsSimulator(self.v2g.vehicle if self.v2g else VehicleConfig(
                start_soc_pct=options.start_soc_pct, target_soc_pct=options.target_soc_pct))
        self._replay_stopped = False
        self.safety_io = SafetyIoSim(self.module_sim)
        self.session = GunSession(ratings, thermal=ThermalSupervisor(), require_safety_io=True,
                                  upstream=self.v2g.upstream if self.v2g else None,
                                  health=options.health)
        self.ledger = Ledger(options.ledger)
        # Sessions a killed run left open: closed from their checkpoints before this one.
        self.result.recovered = self.ledger.recover("agent restarted")
        self.agent_hung = False  # fault injection: the agent process stops stepping
        self.injected_events: list[Event] = []
        self.scenario = SCENARIOS[options.fault] if options.fault else None
        self._worst_a = 0.0
        self._stack = AsyncExitStack()
        self._last_live = -1e9
        self.ems: SunSpecServer | None = None
        self.vpp: ModbusVpp | None = None
        self.csms: Csms | None = None
        v = self.v2g
        self.site_start_s = options.site_start_s if options.site_start_s is not None else (
            v.site_start_s if v is not None else None)
        self.site_end_s = options.site_end_s if options.site_end_s is not None else (
            v.site_end_s if v is not None else None)
        self.csms_port = 0
        self.ocpp: OcppBridge | None = None
        # Scripted runs (faults, V2G scenarios, a replayed car) look at the world every
        # step; a plain session jumps from one due instant to the next.
        self.lock_step = options.lock_step or bool(options.fault or options.scenario
                                                   or options.replay_bms)

    async def __aenter__(self) -> SimulatedPile:
        # Bus failures reach the core as events; pymodbus's own error logging is noise here.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        channel = f"pile-sim-{uuid.uuid4().hex[:8]}"
        charger_bus = self._stack.enter_context(
            can.Bus(interface="virtual", channel=channel, bitrate=250_000))
        vehicle_bus = self._stack.enter_context(
            can.Bus(interface="virtual", channel=channel, bitrate=250_000))
        log = None
        if self.options.can_log:
            fh = self._stack.enter_context(open(self.options.can_log, "w"))  # noqa: SIM115
            log = CandumpWriter(fh, channel="can0", epoch=LOG_EPOCH)
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
        if self.v2g is not None and self.v2g.ems is not None:
            await self._serve_ems(self.v2g.ems)
        if self.v2g is not None and self.v2g.csms:
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
        await asyncio.wait_for(self.csms.booted.wait(), 10.0)

    async def _stop_csms(self) -> None:
        if self.csms is not None:
            await self.csms.stop()

    def site_s(self, t: float) -> float:
        """The site's local time of day at simulated time t (s after midnight)."""
        return (self.site_start_s or 0.0) + t

    def sim_wall(self) -> float:
        return LOG_EPOCH + self.clock.now()

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # ---- reporting ---------------------------------------------------------------

    def _say(self, line: str) -> None:
        if self.out is not None and self.options.live:
            print(line, file=self.out, flush=True)

    def _on_report(self, command: Command) -> None:
        r, t = self.result, self.clock.now()
        match command:
            case StateChanged(source=src, dest=dest, reason=why):
                r.states.append((t, dest))
                self._say(f"[{t:8.2f} s] {src} -> {dest}: {why}")
            case CurrentDecided(current_a=i, voltage_v=v, bound_by=bound):
                d, st = self.session.data, self.session.plant.status
                r.trace.append(TraceRow(
                    t, self.session.state.value, i, v, bound,
                    d.bcl.current_demand_a if d.bcl else None,
                    d.bcp.max_charge_current_a if d.bcp else None,
                    st.output_current_a if st else 0.0, st.output_voltage_v if st else 0.0))
                r.max_current_a = max(r.max_current_a, abs(i))
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
        if self.v2g is not None and self.site_start_s is not None and self.site_end_s is not None:
            max_sim_s = (self.site_end_s - self.site_start_s) % 86400 + 600.0
        t_prev, agent_due = -STEP_S, 0.0
        while True:
            if self.clock.now() >= max_sim_s:
                if self.result.stopped_at_time_limit or self.scenario is not None \
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
            self._maybe_inject(t)
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
                extra.append(VehicleConnected(t, wall_clock_s=LOG_EPOCH + t))
            extra += self._replay_stop(t)
            if self.v2g is not None:
                if self.v2g.vpp is not None:
                    await self.v2g.vpp(self, self.script, t)
                if self.ems is not None:
                    extra += self.ems.events(t)
                if self.ocpp is not None:
                    extra += self.ocpp.events(t)
                extra += self.v2g.step(self, self.script, t)
            if self.v2g is not None or self.options.trace_output:
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
            if self.scenario is not None:
                if self._fault_run_over(t):
                    break
            elif ended_at is None and self.session.state in (State.FINISHED, State.FAULT):
                ended_at = t
            if self.scenario is None and ended_at is not None and t - ended_at >= LINGER_S:
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
        if self.v2g is not None:
            self._judge_scenario()
        if self.result.outcome == "timeout":
            self.result.reason = f"no end of session within {max_sim_s} s"
        self._check_ledger()
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

    def charging_since(self, t: float) -> float:
        return next((ts for ts, s in self.result.states if s == "charging"), t)

    def _observe(self, t: float) -> None:
        r = self.result
        r.current_trace.append((t, self.module_sim.current_a))
        if self.session.state is State.CHARGING:
            r.min_soc_pct = min(r.min_soc_pct, self.bms.battery.soc_pct)

    def _judge_scenario(self) -> None:
        r, v = self.result, self.v2g
        assert v is not None
        r.scenario = v.name
        r.battery_energy_out_kwh = self.bms.battery.energy_out_kwh
        r.scenario_failures = v.check(self, self.script)
        r.scenario_script = list(self.script.notes)  # with what the check measured

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

    # ---- fault injection ----------------------------------------------------------

    def _maybe_inject(self, t: float) -> None:
        sc, r = self.scenario, self.result
        if sc is None or r.fault_injected_at is not None:
            return
        charging_since = next((ts for ts, s in r.states if s == "charging"), None)
        due = (charging_since is not None
               and t >= charging_since + self.options.fault_after_charging_s)
        if due or not sc.during_charging:
            r.fault, r.fault_injected_at = sc.name, t
            sc.inject(self, t)
            self._say(f"[{t:8.2f} s] FAULT INJECTED: {sc.name} ({sc.description})")

    def _fault_run_over(self, t: float) -> bool:
        """Track the safe state after an injection; True once the verdict is in."""
        sc, r = self.scenario, self.result
        if sc is None or r.fault_injected_at is None:
            return False
        since = t - r.fault_injected_at
        if sc.then_stop and since >= 2.0:
            self.bms.request_stop()
        if sc.limit_a is not None:
            return self._judge_limit_holds(since, sc.limit_a(self))
        if sc.expect_notice:
            return self._judge_notice(t, since)
        m = self.module_sim
        in_state = not sc.expect_states or self.session.state.value in sc.expect_states
        safe = in_state and abs(m.current_a) <= 5.0 and m._get("contactor_command") == 0
        if safe and r.safe_at is None:
            r.safe_at = t
        elif not safe:
            r.safe_at = None  # must stay safe, not just pass through
        limit = sc.deadline_s + (0.0 if sc.during_charging else 30.0)
        if r.safe_at is not None and t - r.safe_at >= LINGER_S:
            took = r.safe_at - r.fault_injected_at
            r.fault_ok = took <= limit
            r.fault_verdict = (f"safe state ({self.session.state.value}, <= 5 A, K1/K2 commanded "
                               f"open) {took:.2f} s after injection; deadline {limit:.1f} s "
                               f"({sc.deadline_source})")
            return True
        back_to_idle = bool(r.states) and self.session.state is State.IDLE
        if since > limit + 5.0 or back_to_idle:
            r.fault_ok = False
            r.fault_verdict = (f"NOT safe {since:.1f} s after injection (state "
                               f"{self.session.state.value}, {m.current_a:.1f} A, K1/K2 "
                               f"{'closed' if m.contactors_closed else 'open'}); deadline "
                               f"{limit:.1f} s ({sc.deadline_source})")
            return True
        return False

    def _judge_limit_holds(self, since: float, limit_a: float) -> bool:
        """A fault the agent must ride out: its commanded current (and the module's, within
        the regulation accuracy of IEC 61851-23 101.2.1.2.1) stays within `limit_a` from
        LIMIT_GRACE_S after injection, for the deadline, and the session goes on."""
        r, sc = self.result, self.scenario
        assert sc is not None
        r.fault_ok = True
        if since >= LIMIT_GRACE_S:
            self._worst_a = max(self._worst_a, abs(self.session.act.current_a))
        worst = self._worst_a
        if worst > limit_a + 1e-9 or (since >= LIMIT_GRACE_S + 0.5
                                      and abs(self.module_sim.current_a) > limit_a + 2.5):
            r.fault_ok = False
            r.fault_verdict = (f"current {max(worst, abs(self.module_sim.current_a)):.1f} A "
                               f"above the {limit_a:.1f} A limit ({sc.deadline_source})")
            return True
        if since >= sc.deadline_s:
            r.fault_ok = self.session.state.value in sc.expect_states
            r.fault_verdict = (f"{sc.description}: for {since:.1f} s commanded at most "
                               f"{worst:.1f} A (limit {limit_a:.1f} A); state "
                               f"{self.session.state.value} ({sc.deadline_source})")
            return True
        return False

    def _judge_notice(self, t: float, since: float) -> bool:
        """A fault the agent must say, not stop for: the notice within the deadline, the
        session still in one of the expected states."""
        r, sc = self.result, self.scenario
        assert sc is not None and r.fault_injected_at is not None
        said = [n for n in r.notices if n[1] == sc.expect_notice and n[0] >= r.fault_injected_at]
        if said or since > sc.deadline_s:
            in_state = self.session.state.value in sc.expect_states
            r.fault_ok = bool(said) and in_state and said[0][0] - r.fault_injected_at \
                <= sc.deadline_s
            r.fault_verdict = (f"{sc.expect_notice} said {said[0][0] - r.fault_injected_at:.2f}"
                               f" s after injection ({said[0][2]}); state "
                               f"{self.session.state.value}" if said else
                               f"no {sc.expect_notice} within {sc.deadline_s:g} s") \
                + f"; deadline {sc.deadline_s:g} s ({sc.deadline_source})"
            return True
        return False

    def _step_vehicle(self, t: float) -> None:
        for item in self.vehicle_link.poll(t):
            if not hasattr(item, "detail"):
                self.bms.receive(item, t)  # type: ignore[arg-type]
        for message in self.bms.poll(t):
            if isinstance(message, RawPayload):
                self.vehicle_link.send_payload(message.pgn, message.payload, t,
                                               message.priority)
            else:
                self.vehicle_link.send(message, t)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_sim(options: SimOptions, out: IO[str] | None = None) -> SimResult:
    async with SimulatedPile(options, out) as pile:
        return await pile.run()


async def run_sim_cli(options: SimOptions) -> int:
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
    if options.fault is not None:
        verdict = "PASS" if result.fault_ok else "FAIL"
        if options.json_summary:
            print(json.dumps(summary, indent=2))
        else:
            print(f"fault {options.fault}: {verdict}: {result.fault_verdict or 'not injected'}"
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
             *(f"  FAILED: {f}" for f in result.scenario_failures)]
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
