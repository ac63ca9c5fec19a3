"""The pile as a long-running service: `pile-agent run` until it is stopped.

The pile owns its gun services (agent/runtime/gun_service.py), the module pool's
coordinator, the upstream links (SunSpec server, OCPP client) and the service's own
lifecycle:

- start-up: the ledger first (sessions a killed agent left open are closed, "agent
  restarted"), then every module's output off and K1/K2 open, and only then the CAN buses
  (no frame goes out before the outputs are safe); then READY=1 to systemd;
- running: each gun loops car after car on its own task; the pool re-plans every
  POOL_PERIOD_S; upstream is polled every UPSTREAM_POLL_S (an EMS write at once); every
  second STATUS= and, while every gun's loop is alive, WATCHDOG=1;
- stop (`stop()`, SIGTERM/SIGINT in `run_pile`): STOPPING=1; every session stops in order
  (CST, ramp to <= 5 A, K1/K2 open); what has not finished in STOP_BUDGET_S ends at once;
  every session is in the ledger, OCPP's Ended events in the outbox (sent if online, in
  what is left of the budget);
  the drivers close. Within EXIT_BUDGET_S in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import IO, Any

import can

from agent.core.commands import (
    Notice,
    SessionReport,
    SetContactors,
    SetMatrix,
    SetModuleOutput,
)
from agent.core.events import ModuleLinkLost
from agent.core.messages import CCS, ChargerMessage
from agent.core.pile import PileCoordinator
from agent.ledger.store import Ledger, LedgerError
from agent.runtime.clock import MonotonicClock
from agent.runtime.config import GunSetup, PileConfig
from agent.runtime.event_log import EventLog, EventsFile
from agent.runtime.gun_service import GunDrivers, GunService
from agent.runtime.gun_telemetry import GunTelemetry
from agent.runtime.http_endpoint import HttpEndpoint, Route, url_host
from agent.runtime.metrics import PileMetrics
from agent.runtime.pile_status import LinkState, pile_snapshot
from agent.runtime.sd_notify import SdNotifier
from agent.runtime.upstream_links import UpstreamLinks
from agent.runtime.wiring import coordinator, gun_drivers, gun_service, open_bus
from agent.version import package_version
from drivers.gbt27930.candump import CandumpWriter
from drivers.gbt27930.codec import assign_extension_pgns
from drivers.module_matrix.link import MatrixBusOwner, MatrixEvent
from drivers.task_end import reap, within

log = logging.getLogger("pile_agent.pile")


# The module pool re-plans at least this often (and on each matrix read): its word to a gun
# must stay younger than a module status (1 s, MODULE_STATUS_STALE) with room to spare.
POOL_PERIOD_S = 0.1
# The service's status (and the watchdog, when every gun is alive) this often; systemd's
# WatchdogSec must be at least twice it (the unit file says 10 s).
STATUS_PERIOD_S = 1.0
# A stop: the budget is 5 s to exit 0. The orderly stop (GB/T 27930: CST, current
# <= 5 A, K1/K2 open, BSD/CSD) gets STOP_BUDGET_S; the rest is for the OCPP Ended events
# and the drivers' last writes.
EXIT_BUDGET_S = 5.0
STOP_BUDGET_S = 3.5
DRAIN_S = 0.3  # each module's queued commands at exit (runs for all guns at once)
# What is left of the exit budget after the sessions stopped goes to the OCPP events (at
# least this much); the rest waits in the outbox for the next start.
OCPP_DRAIN_MIN_S = 0.8
TASK_END_S = 1.5  # a cancelled task's cleanup (the OCPP link's closing handshake: 1 s)


def status_page() -> bytes:
    return resources.files("agent.runtime").joinpath("static/status.html").read_bytes()


def _ccs_observer(telemetry: GunTelemetry, observe: Callable[[float], None]
                  ) -> Callable[[ChargerMessage, float], None]:
    """The CCS period of a gun: the time between two CCS it sent (GB/T 27930: 50 ms)."""
    def on_sent(message: ChargerMessage, t: float) -> None:
        if isinstance(message, CCS):
            if telemetry.last_ccs_t is not None:
                observe(t - telemetry.last_ccs_t)
            telemetry.last_ccs_t = t

    return on_sent


class PileService:
    def __init__(self, config: PileConfig, out: IO[str] = sys.stdout,
                 can_log: str | None = None, notifier: SdNotifier | None = None,
                 wall: Callable[[], float] = time.time, events: EventLog | None = None
                 ) -> None:
        if not config.guns:
            config = replace(config, guns=(GunSetup(config.gun, config.can, config.modbus,
                                                    config.safety_bus, config.meter),))
        self.config = config
        self.out = out
        self.events = events or EventLog(out, wall=wall)
        self.events.gun_prefix = len(config.guns) > 1
        if config.traces.enabled:
            self.events.listeners.append(EventsFile(Path(config.traces.directory)))
        self.can_log = can_log
        self.notifier = notifier or SdNotifier({})
        self.wall = wall
        self.clock = MonotonicClock()
        self.guns: list[GunService] = []
        self.reports: dict[int, list[SessionReport]] = {}
        self.started = asyncio.Event()
        self.started_wall = wall()
        self.upstream: UpstreamLinks | None = None
        self.metrics: PileMetrics | None = None
        self.endpoints: list[HttpEndpoint] = []
        self.stop_reason = ""
        self._stop = asyncio.Event()
        self._hung: set[int] = set()

    def stop(self, reason: str = "agent stopped") -> None:
        if not self.stop_reason:
            self.stop_reason = reason
        self._stop.set()

    def gun(self, number: int) -> GunService:
        return next(g for g in self.guns if g.number == number)

    # ---- the whole life ----------------------------------------------------------------------

    async def run(self) -> int:
        """Until stop(): 0 after an orderly stop, 2 if the pile cannot start."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # bus failures are events
        try:
            ledger = Ledger(self.config.ledger.path)
            # Before anything else: sessions a killed agent left open, closed from their
            # checkpoints (the energy up to the last one is kept).
            for line in ledger.recover("agent restarted"):
                self.events.emit("ledger_recovered", line, level="warning",
                                 text=f"ledger: closed a session left open: {line}")
        except LedgerError as exc:
            print(f"pile-agent run: ledger {self.config.ledger.path}: {exc}", file=sys.stderr)
            return 2
        with contextlib.ExitStack() as stack:
            stack.callback(ledger.close)
            drivers = [gun_drivers(setup) for setup in self.config.guns]
            await self._make_safe(drivers)
            buses: list[can.BusABC] = []
            for setup in self.config.guns:
                bus = open_bus(setup)
                if isinstance(bus, str):
                    print(f"pile-agent run: {bus}", file=sys.stderr)
                    await asyncio.gather(*(d.close() for d in drivers))
                    return 2
                buses.append(bus)
                stack.callback(bus.shutdown)
            assign_extension_pgns(self.config.extension_pgns())  # validated with the config
            fh = stack.enter_context(open(self.can_log, "w")) if self.can_log else None
            epoch = self.wall() - self.clock.now()
            for setup, d, bus in zip(self.config.guns, drivers, buses, strict=True):
                # One candump file; each gun's frames under its own channel name.
                writer = CandumpWriter(fh, channel=setup.can.channel, epoch=epoch) \
                    if fh is not None else None
                service, reports = gun_service(self.config, setup, d, bus, ledger, writer,
                                               self.events, self.clock, self.wall)
                self.guns.append(service)
                self.reports[service.number] = reports
            upstream = UpstreamLinks(self.config, self.guns, self.clock, self.wall, self.events)
            problem = await upstream.start(stack)
            if problem:
                print(f"pile-agent run: {problem}", file=sys.stderr)
                for g in self.guns:
                    await g.close(0.0)
                return 2
            self.upstream = upstream
            self._observe()
            await self._open_endpoints()
            return await self._serve(upstream)

    async def _serve(self, upstream: UpstreamLinks) -> int:
        for g in self.guns:
            g.start()
        tasks = [asyncio.create_task(self._status(), name="status"),
                 *upstream.tasks()]
        pool = coordinator(self.config)
        if pool is not None:
            tasks.append(asyncio.create_task(self._pool(*pool), name="pool"))
        self.notifier.notify("READY=1", "STATUS=" + self._status_line())
        self.events.emit("agent_ready", f"serving {len(self.guns)} gun(s)",
                         text=f"pile-agent: serving {len(self.guns)} gun(s)")
        self.started.set()
        try:
            await self._stop.wait()
            await self._shut_down(upstream)
        finally:
            for task in tasks:
                task.cancel()
            # Each task gets TASK_END_S to end; one that does not is named, not waited for.
            _done, pending = await asyncio.wait(tasks, timeout=TASK_END_S) if tasks \
                else (set(), set())
            for task in pending:
                self.events.emit("shutdown_overran", f"task {task.get_name()} did not end "
                                 f"within {TASK_END_S:g} s of its cancel", level="warning",
                                 text=f"pile-agent: task {task.get_name()} did not end "
                                      f"within {TASK_END_S:g} s of its cancel")
            for endpoint in self.endpoints:
                await endpoint.stop()
            await asyncio.gather(*(g.close(DRAIN_S) for g in self.guns))
            if pool is not None:
                await pool[1].close()
            await upstream.close()
        return 0

    async def _make_safe(self, drivers: list[GunDrivers]) -> None:
        """Every module's output off and K1/K2 open, before any CAN frame: a restart after a
        crash finds the plant as the crash left it."""
        async def one(number: int, d: GunDrivers) -> None:
            d.module.submit(SetModuleOutput(enabled=False, voltage_v=0.0, current_a=0.0))
            d.module.submit(SetContactors(closed=False))
            try:
                events = await within(d.module.service(self.clock.now()), 2.0)
            except TimeoutError:
                events = []
            lost = not events or any(isinstance(e, ModuleLinkLost) for e in events)
            what = f"output off and K1/K2 open " \
                f"{'NOT confirmed (module silent)' if lost else 'written'}"
            self.events.emit("start_up", what, gun=number, level="warning" if lost else "info",
                             text=f"gun {number}: start-up: {what}")

        await asyncio.gather(*(one(s.ratings.charger_number, d)
                               for s, d in zip(self.config.guns, drivers, strict=True)))

    async def _shut_down(self, upstream: UpstreamLinks) -> None:
        reason = self.stop_reason or "agent stopped"
        t0 = self.clock.now()
        self.notifier.notify("STOPPING=1", f"STATUS=stopping: {reason}")
        self.events.emit("agent_stopping", reason, text=f"pile-agent: stopping ({reason})")
        for g in self.guns:
            g.request_stop(reason)
        while not all(g.settled for g in self.guns) \
                and self.clock.now() - t0 < STOP_BUDGET_S:
            await asyncio.sleep(0.02)
        for g in self.guns:
            if not g.settled:
                g.end_now(reason)
        upstream.poll_now()  # the Ended events, into the outbox
        await upstream.drain(max(OCPP_DRAIN_MIN_S, EXIT_BUDGET_S - DRAIN_S - 0.5
                                 - (self.clock.now() - t0)))

    # ---- the pile's own tasks ----------------------------------------------------------------

    async def _pool(self, pile: PileCoordinator, owner: MatrixBusOwner) -> None:
        """The module pool: the matrix board's reads in, its commands out, and each gun's
        word (its capability) every POOL_PERIOD_S and on each read."""
        inbox: list[MatrixEvent] = []
        wake = asyncio.Event()

        def put(event: MatrixEvent) -> None:
            inbox.append(event)
            wake.set()

        reader = asyncio.create_task(owner.run(self.clock, put))
        try:
            while True:
                now = self.clock.now()
                events, inbox[:] = list(inbox), []
                for event in events:
                    pile.handle(event)
                commands, caps = pile.step(now, {g.number: g.session for g in self.guns})
                for command in commands:
                    if isinstance(command, SetMatrix):
                        owner.submit(command)
                    elif isinstance(command, Notice):
                        self.events.emit("notice", command.detail, t=command.t,
                                         kind=command.kind,
                                         text=f"[{command.t:9.3f} s] pile: {command.detail}")
                for g in self.guns:
                    cap = caps.get(g.number)
                    if cap is not None:
                        g.offer_cap(cap)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await within(wake.wait(), POOL_PERIOD_S)
        finally:
            await reap(reader)

    # ---- what operators see -----------------------------------------------------------------

    def links(self) -> LinkState:
        return self.upstream.link_state(self.clock.now()) if self.upstream is not None \
            else LinkState()

    def snapshot(self) -> dict[str, Any]:
        """The pile as `pile-agent status` and the status page show it."""
        return pile_snapshot(self.guns, self.links(), self.clock.now(), self.wall(),
                             self.started_wall, package_version())

    def _observe(self) -> None:
        """The process's histograms, observed as things happen (with [metrics] on)."""
        if not self.config.metrics.enabled:
            return
        metrics = self.metrics = PileMetrics(lambda: self.guns, self.links, self.clock.now)
        for g in self.guns:
            g.step_seconds = metrics.step_seconds.observe
            g.runtime.on_sent = _ccs_observer(g.telemetry, metrics.ccs_period_seconds.observe)

    async def _open_endpoints(self) -> None:
        """The status endpoint and the metrics; one that cannot listen is said and the pile
        goes on (they are for people, the charging does not need them)."""
        wanted: dict[tuple[str, int], dict[str, Route]] = {}
        st, mt = self.config.status, self.config.metrics
        if st.enabled:
            wanted.setdefault((st.host, st.port), {}).update({
                "/status": lambda: ("application/json",
                                    json.dumps(self.snapshot()).encode()),
                "/": lambda: ("text/html; charset=utf-8", status_page()),
            })
        if mt.enabled and self.metrics is not None:
            wanted.setdefault((mt.host, mt.port), {})["/metrics"] = self.metrics.render
        for (host, port), routes in wanted.items():
            endpoint = HttpEndpoint(routes)
            try:
                await endpoint.start(host, port)
            except OSError as exc:
                self.events.emit("endpoint_failed", f"cannot serve {' '.join(sorted(routes))} "
                                 f"on {host}:{port}: {exc}", level="error")
                continue
            self.endpoints.append(endpoint)
            bound = endpoint.address[1] if endpoint.address is not None else port
            self.events.emit("endpoint", f"serving {' '.join(sorted(routes))} on "
                             f"http://{url_host(host)}:{bound}/")

    def _status_line(self) -> str:
        return "; ".join(g.status_line() for g in self.guns)

    async def _status(self) -> None:
        """STATUS= every STATUS_PERIOD_S, and WATCHDOG=1 only while every gun's loop is
        alive: a hung loop leads systemd to restart the service (WatchdogSec)."""
        period = STATUS_PERIOD_S
        if self.notifier.watchdog_s is not None:
            period = min(period, self.notifier.watchdog_s / 2)
        while True:
            now = self.clock.now()
            hung = {g.number for g in self.guns if not g.alive(now)}
            for number in hung - self._hung:
                self.events.emit("hung", f"its control loop has not run for over "
                                 f"{now - self.gun(number).alive_at:.0f} s; the watchdog is no "
                                 "longer fed", gun=number, level="error",
                                 text=f"gun {number}: control loop hung; watchdog withheld")
            self._hung = hung
            wall = self.wall()
            for g in self.guns:
                st = g.session.plant.status
                g.telemetry.sample(wall, st.output_current_a * st.output_voltage_v
                                   if st is not None else 0.0)
            fields = ["STATUS=" + self._status_line()]
            if not hung:
                fields.append("WATCHDOG=1")
            self.notifier.notify(*fields)
            await asyncio.sleep(period)
