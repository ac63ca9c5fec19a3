"""`pile-agent run`: the agent against the CAN buses and Modbus devices of a real pile.

One process runs every gun of the pile (`[[gun]]`, or one `[gun]`). Time is event-driven:
a gun steps when its session's deadline comes (agent/core/deadline.py) and as soon as
something arrives for it; in between the loop sleeps. CAN frames are read as they arrive
(drivers/gbt27930/rx_notify.py: socketcan's descriptor on the loop, a reader thread for
a bus without one).
Each Modbus bus has its own owner task (so a slow RS-485 line never delays the CAN side)
whose events wake the loop. A pile with a shared module pool (`[pile]`) has the matrix
board's owner too, and its coordinator gives each gun its capability. Until the pile's
I/O board provides CC1 detection, each gun is taken as connected at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import IO, Any

import can

from agent.core.commands import Command, Notice, SessionReport, SetMatrix, StateChanged
from agent.core.events import Event, PoolCapability, VehicleConnected
from agent.core.module_pool import ModulePool
from agent.core.pile import PileCoordinator, gives_less
from agent.core.session import GunSession
from agent.core.thermal_guard import ThermalSupervisor
from agent.core.upstream import setpoint_ratings
from agent.ledger.outbox import Outbox
from agent.ledger.store import Ledger, LedgerError
from agent.runtime.clock import MonotonicClock
from agent.runtime.config import GunSetup, PileConfig
from agent.runtime.ems_view import ems_snapshot
from agent.runtime.gun_runtime import GunRuntime
from agent.runtime.ocpp_bridge import OcppBridge
from drivers.dc_meter.link import MeterBusOwner
from drivers.gbt27930.candump import CandumpWriter
from drivers.gbt27930.codec import assign_extension_pgns
from drivers.gbt27930.link import GbtLink, Role
from drivers.gbt27930.rx_notify import NotifiedBus
from drivers.module_matrix.link import MatrixBusOwner, MatrixEvent
from drivers.ocpp.client import OcppClient, OcppSettings
from drivers.power_module.link import LinkConfig, ModuleLink, RtuTarget, TcpTarget
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner
from drivers.sunspec.codec import layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer

# The module pool re-plans at least this often (and on each matrix read): its word to a gun
# must stay younger than a module status (1 s, MODULE_STATUS_STALE) with room to spare.
POOL_PERIOD_S = 0.1
# The EMS's and the central system's time-based inputs (an EMS heartbeat lost, an OCPP
# request queued) are looked at this often; an EMS write wakes the loop at once.
UPSTREAM_POLL_S = 0.1
# Timers are served on this grid, so guns whose deadlines fall within one millisecond step
# in one wake. Coarser costs periodic messages their grid: a message due inside a slot goes
# out at the slot's end, or earlier with an event of its gun (5 ms slots: CCS p99 55 ms).
WAKE_QUANTUM_S = 0.001
# At exit, queued module commands get this long (one module request timeout, 0.5 s, twice).
DRAIN_S = 1.0


def _printer(out: IO[str], who: str = "") -> tuple[list[SessionReport],
                                                  Callable[[Command], None]]:
    reports: list[SessionReport] = []

    def report(command: Command) -> None:
        match command:
            case StateChanged(t=t, source=src, dest=dest, reason=why):
                print(f"[{t:9.3f} s] {who}{src} -> {dest}: {why}", file=out, flush=True)
            case Notice(t=t, kind=kind, detail=detail):
                print(f"[{t:9.3f} s] {who}notice {kind}: {detail}", file=out, flush=True)
            case SessionReport():
                reports.append(command)
                print(f"{who}session {command.outcome}: {command.reason}; "
                      f"{command.energy_kwh:.2f} kWh", file=out, flush=True)

    return reports, report


async def _start_ems(config: PileConfig, session: GunSession,
                     clock: MonotonicClock) -> SunSpecServer | str | None:
    """The SunSpec server for the site EMS, if configured (an error text if it cannot
    listen)."""
    e = config.ems
    if not e.enabled:
        return None
    base, models = load_map()
    serial = e.serial_number or config.ocpp.station_id or f"gun{config.gun.charger_number}"
    server = SunSpecServer(
        layout(base, models, n_ports=1),
        EmsControls(EmsSettings(allow_discharge=e.allow_discharge,
                                default_validity_s=e.default_validity_s,
                                heartbeat_timeout_s=e.heartbeat_timeout_s,
                                min_interval_s=config.upstream.min_interval_s,
                                ratings=setpoint_ratings(config.gun))),
        lambda: ems_snapshot(session, serial, int(clock.now())), clock.now,
        allowed_writers=e.allowed_writers, unit_id=e.unit_id)
    try:
        await server.start(e.host, e.port)
    except OSError as exc:
        return f"cannot serve the EMS on {e.host}:{e.port}: {exc}"
    return server


def _ocpp_bridge(config: PileConfig, session: GunSession,
                 stack: contextlib.ExitStack) -> OcppBridge | None:
    """The OCPP 2.1 client, its outbox in the ledger's file, and its bridge to the session."""
    o = config.ocpp
    if not o.enabled:
        return None
    outbox = Outbox(config.ledger.path)
    stack.callback(outbox.close)
    client = OcppClient(OcppSettings(
        url=o.url, station_id=o.station_id, password=o.password or None,
        ca_file=o.ca_file or None, cert_file=o.cert_file or None, key_file=o.key_file or None,
        rated_power_w=max(config.gun.max_power_w, config.gun.max_discharge_power_w),
        ratings=setpoint_ratings(config.gun)),
        outbox, time.time)
    return OcppBridge(client, session, time.time, meter_interval_s=o.meter_interval_s)


async def _drain(ocpp: OcppBridge, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while ocpp.client.online and ocpp.client.outbox.counts()[1] \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@dataclass
class _Gun:
    """One gun's drivers, session and runtime, and what its owners have read."""

    setup: GunSetup
    session: GunSession
    runtime: GunRuntime
    module: ModuleBusOwner
    safety: SafetyBusOwner | None
    meter: MeterBusOwner | None
    reports: list[SessionReport]
    wake: asyncio.Event  # the control loop's, shared by every gun
    rx: NotifiedBus
    bell: Doorbell
    inbox: list[Event] = field(default_factory=list)
    plugged: bool = False
    deadline: float = 0.0  # the runtime's next_due after the last step
    last_cap: PoolCapability | None = None

    def put(self, event: Event) -> None:
        """A bus owner's event: queued for the gun, and the control loop woken for it."""
        self.inbox.append(event)
        self.wake.set()

    def tighter(self, cap: PoolCapability) -> bool:
        """The pool gives this gun less than its last word did (or it is the first)."""
        last, self.last_cap = self.last_cap, cap
        return gives_less(cap, last)


@dataclass
class Doorbell:
    """Rung when a CAN frame arrives for a gun, or an EMS write for the pile: the loop acts
    on it at once."""

    wake: asyncio.Event
    rung: bool = False

    def ring(self) -> None:
        self.rung = True
        self.wake.set()


def _target(transport: str, host: str, port: int, serial_port: str, baudrate: int,
            parity: str) -> TcpTarget | RtuTarget:
    return TcpTarget(host, port) if transport == "tcp" \
        else RtuTarget(serial_port, baudrate=baudrate, parity=parity)


def _open_buses(config: PileConfig) -> list[can.BusABC] | str:
    buses: list[can.BusABC] = []
    for g in config.guns:
        try:
            extra: dict[str, Any] = {"port": g.can.port} if g.can.port else {}
            buses.append(can.Bus(interface=g.can.interface, channel=g.can.channel,
                                 bitrate=g.can.bitrate, **extra))
        except (can.CanError, OSError, ValueError, ImportError) as exc:
            for bus in buses:
                bus.shutdown()
            return f"cannot open CAN {g.can.interface}:{g.can.channel}: {exc}"
    return buses


def _gun(config: PileConfig, setup: GunSetup, bus: can.BusABC, ledger: Ledger,
         log: CandumpWriter | None, out: IO[str], wake: asyncio.Event) -> _Gun:
    m, sb, mc = setup.modbus, setup.safety_bus, setup.meter
    owner = ModuleBusOwner(ModuleLink(_target(m.transport, m.host, m.port, m.serial_port,
                                              m.baudrate, m.parity),
                                      LinkConfig(unit_id=m.unit_id,
                                                 request_timeout_s=m.timeout_s)),
                           poll_period_s=m.poll_period_s)
    safety = SafetyBusOwner(_target(sb.transport, sb.host, sb.port, sb.serial_port,
                                    sb.baudrate, sb.parity),
                            io_unit=sb.io_unit, imd_unit=sb.imd_unit,
                            poll_period_s=sb.poll_period_s) if sb.enabled else None
    meter = MeterBusOwner(_target(mc.transport, mc.host, mc.port, mc.serial_port, mc.baudrate,
                                  mc.parity), unit_id=mc.unit_id) if mc.enabled else None
    number = setup.ratings.charger_number
    reports, report = _printer(out, f"gun {number}: " if len(config.guns) > 1 else "")
    session = GunSession(setup.ratings, thermal=ThermalSupervisor(config.thermal)
                         if safety else None, require_safety_io=safety is not None,
                         health=config.health, owner_policies=config.owners,
                         upstream=config.upstream.policy(setup.ratings),
                         pooled=config.pile is not None)
    # Each frame wakes the loop as it arrives (a BCL is decided on at once): socketcan's
    # descriptor on the event loop; a bus without one (virtual) through a reader thread.
    bell = Doorbell(wake)
    rx = NotifiedBus(bus, asyncio.get_running_loop(), bell.ring)
    runtime = GunRuntime(session, GbtLink(rx, Role.CHARGER, log=log), owner, report,
                         module_period_s=None, safety=safety, meter=meter,
                         meter_period_s=mc.poll_period_s, ledger=ledger, gun=number)
    return _Gun(setup, session, runtime, owner, safety, meter, reports, wake, rx, bell)


def _coordinator(config: PileConfig) -> tuple[PileCoordinator, MatrixBusOwner] | None:
    p = config.pile
    if p is None:
        return None
    pool = ModulePool(p.groups, pile_power_w=p.power_w, grid_limit_w=p.grid_limit_w,
                      export_limit_w=p.export_limit_w)
    priorities = {g.ratings.charger_number: g.priority for g in config.guns}
    mx = p.matrix
    owner = MatrixBusOwner(_target(mx.transport, mx.host, mx.port, mx.serial_port,
                                   mx.baudrate, mx.parity), len(p.groups), unit_id=mx.unit_id)
    return PileCoordinator(pool, priorities), owner


async def run_pile(config: PileConfig, can_log: str | None = None,
                   out: IO[str] = sys.stdout) -> int:
    """Every configured gun through one session each; exit 0 when all finished."""
    # Bus failures reach the core as events; pymodbus's own error logging would flood.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if not config.guns:
        config = replace(config, guns=(GunSetup(config.gun, config.can, config.modbus,
                                                config.safety_bus, config.meter),))
    buses = _open_buses(config)
    if isinstance(buses, str):
        print(f"pile-agent run: {buses}", file=sys.stderr)
        return 2
    try:
        ledger = Ledger(config.ledger.path)
        # Before anything else: sessions a killed agent left open, closed from their
        # checkpoints (the energy up to the last one is kept).
        for line in ledger.recover("agent restarted"):
            print(f"ledger: closed a session left open: {line}", file=out)
    except LedgerError as exc:
        print(f"pile-agent run: ledger {config.ledger.path}: {exc}", file=sys.stderr)
        for bus in buses:
            bus.shutdown()
        return 2
    assign_extension_pgns(config.extension_pgns())  # validated with the config
    clock = MonotonicClock()
    with contextlib.ExitStack() as stack:
        for bus in buses:
            stack.callback(bus.shutdown)
        stack.callback(ledger.close)
        # One candump file; each gun's frames under its own channel name, as candump logs
        # several interfaces.
        fh = stack.enter_context(open(can_log, "w")) if can_log else None
        epoch = time.time() - clock.now()
        wake = asyncio.Event()
        guns = [_gun(config, setup, bus, ledger,
                     CandumpWriter(fh, channel=setup.can.channel, epoch=epoch)
                     if fh is not None else None, out, wake)
                for setup, bus in zip(config.guns, buses, strict=True)]
        for g in guns:
            stack.callback(g.rx.close)  # before the buses shut down (the stack unwinds LIFO)
        first = guns[0].session
        ems = await _start_ems(config, first, clock)
        if isinstance(ems, str):
            print(f"pile-agent run: {ems}", file=sys.stderr)
            return 2
        ocpp = _ocpp_bridge(config, first, stack)
        pile = _coordinator(config)
        matrix_inbox: list[MatrixEvent] = []
        tasks = [asyncio.create_task(ocpp.client.run())] if ocpp else []
        if pile is not None:
            tasks.append(asyncio.create_task(pile[1].run(clock, matrix_inbox.append)))
        for g in guns:
            tasks.append(asyncio.create_task(g.module.run(clock, g.put)))
            if g.safety is not None:
                tasks.append(asyncio.create_task(g.safety.run(clock, g.put)))
            if g.meter is not None:
                tasks.append(asyncio.create_task(g.meter.run(
                    clock, g.put, g.setup.meter.poll_period_s)))
        loop = asyncio.get_running_loop()
        # An EMS write is decided on at once (its own bell: the first gun's rings for frames).
        written = Doorbell(wake)
        if ems is not None:
            ems.on_write = written.ring
        try:
            next_pool = next_upstream = clock.now()
            while not all(g.reports for g in guns):
                now = clock.now()
                # Event-driven time: a gun steps at its session's deadline, or as soon as a
                # bus hands it something (a frame, an E-stop read, a module status). The pool
                # re-plans every POOL_PERIOD_S and on each matrix read, and then gives
                # every gun its word.
                pool_due = pile is not None and (now >= next_pool or bool(matrix_inbox))
                caps = _pool_step(pile, matrix_inbox, guns, now, out) if pool_due else {}
                if pool_due:
                    next_pool = now + POOL_PERIOD_S
                upstream_due = (ems is not None or ocpp is not None) \
                    and (now >= next_upstream or written.rung)
                if upstream_due:
                    next_upstream, written.rung = now + UPSTREAM_POLL_S, False
                # The most overdue gun first, so periodic messages keep to their grid when
                # many guns are due at once.
                for g in sorted(guns, key=lambda g: g.deadline):
                    upstream = g is guns[0] and upstream_due
                    # A pool word that gives the gun less is decided on at once; one that
                    # gives as much or more waits for the gun's next step (<= 50 ms).
                    cap = caps.get(g.setup.ratings.charger_number)
                    tighter = cap is not None and g.tighter(cap)
                    if cap is not None and not tighter:
                        g.runtime.feed(cap)
                    if not (tighter or g.inbox or g.bell.rung or upstream or now >= g.deadline):
                        continue
                    if g.bell.rung and not (tighter or g.inbox or upstream or now >= g.deadline):
                        g.bell.rung = False
                        # Only frames: no step unless they completed a message, and no new
                        # deadline unless the session ticked.
                        if g.runtime.on_frames(now):
                            g.deadline = g.runtime.next_due()
                        continue
                    g.bell.rung = False
                    if not g.plugged and (g.safety is None
                                          or g.session.plant.safety_io_at is not None):
                        g.plugged = True  # CC1 detection arrives with the I/O board's next
                        g.runtime.feed(VehicleConnected(now, wall_clock_s=time.time()))
                    events, g.inbox[:] = list(g.inbox), []
                    if upstream and ems is not None:
                        events += ems.events(now)
                    if upstream and ocpp is not None:
                        events += ocpp.events(now)
                    if tighter and cap is not None:
                        events.append(cap)
                    await g.runtime.step(now, events)
                    g.deadline = g.runtime.next_due()
                wake.clear()
                if not (written.rung or any(g.inbox or g.bell.rung for g in guns)):
                    wake_at = min(g.deadline for g in guns)
                    if pile is not None:
                        wake_at = min(wake_at, next_pool)
                    if ems is not None or ocpp is not None:
                        wake_at = min(wake_at, next_upstream)
                    # Deadlines are served on a WAKE_QUANTUM_S grid, so guns whose deadlines
                    # fall in one slot step in one wake (events wake at once). A timer
                    # handle, not wait_for: no Task per sleep.
                    wake_at = math.ceil(wake_at / WAKE_QUANTUM_S - 1e-6) * WAKE_QUANTUM_S
                    timer = loop.call_at(loop.time() + max(wake_at - clock.now(), 0.0),
                                         wake.set)
                    await wake.wait()
                    timer.cancel()
        finally:
            if ocpp is not None:
                ocpp.events(clock.now())  # the Ended event, into the outbox
                await _drain(ocpp, 5.0)  # what is left is replayed at the next start
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if pile is not None:
                await pile[1].close()
            for g in guns:
                # The session's last commands (output off, K1/K2 open) may still be queued:
                # they reach the module before the link closes.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(g.module.drain(clock.now()), DRAIN_S)
                await g.module.close()
                if g.safety is not None:
                    await g.safety.close()
                if g.meter is not None:
                    await g.meter.close()
            if ems is not None:
                await ems.stop()
    return 0 if all(g.reports[-1].outcome == "finished" for g in guns) else 1


def _pool_step(pile: tuple[PileCoordinator, MatrixBusOwner] | None,
               inbox: list[MatrixEvent], guns: list[_Gun], now: float,
               out: IO[str]) -> dict[int, PoolCapability]:
    """The pile's module pool: the matrix board's reads in, its commands out, each gun's
    capability for this step."""
    if pile is None:
        return {}
    coordinator, owner = pile
    events, inbox[:] = list(inbox), []
    for event in events:
        coordinator.handle(event)
    commands, caps = coordinator.step(now, {g.setup.ratings.charger_number: g.session
                                            for g in guns})
    for command in commands:
        if isinstance(command, SetMatrix):
            owner.submit(command)
        elif isinstance(command, Notice):
            print(f"[{command.t:9.3f} s] pile: {command.detail}", file=out, flush=True)
    return caps
