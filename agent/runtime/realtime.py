"""`pile-agent run`: the agent against the CAN bus and Modbus devices of a real pile.

The control step runs every 10 ms of wall time; the module bus has its own owner task
(so a slow RS-485 line never delays the CAN side) whose events are fed to the next
step. Until the pile's I/O board provides CC1 detection, the gun is taken as
connected at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import IO

import can

from agent.core.commands import Command, Notice, SessionReport, StateChanged
from agent.core.events import Event, VehicleConnected
from agent.core.session import GunSession
from agent.core.thermal_guard import ThermalSupervisor
from agent.ledger.outbox import Outbox
from agent.ledger.store import Ledger, LedgerError
from agent.runtime.clock import MonotonicClock
from agent.runtime.config import PileConfig
from agent.runtime.ems_view import ems_snapshot
from agent.runtime.gun_runtime import GunRuntime
from agent.runtime.ocpp_bridge import OcppBridge
from drivers.dc_meter.link import MeterBusOwner
from drivers.gbt27930.candump import CandumpWriter
from drivers.gbt27930.codec import assign_extension_pgns
from drivers.gbt27930.link import GbtLink, Role
from drivers.ocpp.client import OcppClient, OcppSettings
from drivers.power_module.link import LinkConfig, ModuleLink, RtuTarget, TcpTarget
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner
from drivers.sunspec.codec import layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer

CONTROL_PERIOD_S = 0.01  # a fifth of the fastest GB/T 27930 period (BCL/CCS 50 ms)


def _printer(out: IO[str]) -> tuple[list[SessionReport], Callable[[Command], None]]:
    reports: list[SessionReport] = []

    def report(command: Command) -> None:
        match command:
            case StateChanged(t=t, source=src, dest=dest, reason=why):
                print(f"[{t:9.3f} s] {src} -> {dest}: {why}", file=out, flush=True)
            case Notice(t=t, kind=kind, detail=detail):
                print(f"[{t:9.3f} s] notice {kind}: {detail}", file=out, flush=True)
            case SessionReport():
                reports.append(command)
                print(f"session {command.outcome}: {command.reason}; "
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
    serial = f"{config.gun.charger_number}"
    server = SunSpecServer(
        layout(base, models, n_ports=1),
        EmsControls(EmsSettings(allow_discharge=e.allow_discharge,
                                default_validity_s=e.default_validity_s,
                                heartbeat_timeout_s=e.heartbeat_timeout_s,
                                min_interval_s=config.upstream.min_interval_s)),
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
        rated_power_w=max(config.gun.max_power_w, config.gun.max_discharge_power_w)),
        outbox, time.time)
    return OcppBridge(client, session, time.time, meter_interval_s=o.meter_interval_s)


async def _drain(ocpp: OcppBridge, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while ocpp.client.online and ocpp.client.outbox.counts()[1] \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def run_pile(config: PileConfig, can_log: str | None = None,
                   out: IO[str] = sys.stdout) -> int:
    # Bus failures reach the core as events; pymodbus's own error logging would flood.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        bus = can.Bus(interface=config.can.interface, channel=config.can.channel,
                      bitrate=config.can.bitrate)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        print(f"pile-agent run: cannot open CAN {config.can.interface}:{config.can.channel}: "
              f"{exc}", file=sys.stderr)
        return 2
    m = config.modbus
    target: TcpTarget | RtuTarget = (
        TcpTarget(m.host, m.port) if m.transport == "tcp"
        else RtuTarget(m.serial_port, baudrate=m.baudrate, parity=m.parity))
    owner = ModuleBusOwner(ModuleLink(target, LinkConfig(unit_id=m.unit_id,
                                                         request_timeout_s=m.timeout_s)),
                           poll_period_s=m.poll_period_s)
    sb = config.safety_bus
    safety = None
    if sb.enabled:
        bus_target: TcpTarget | RtuTarget = (
            TcpTarget(sb.host, sb.port) if sb.transport == "tcp"
            else RtuTarget(sb.serial_port, baudrate=sb.baudrate, parity=sb.parity))
        safety = SafetyBusOwner(bus_target, io_unit=sb.io_unit, imd_unit=sb.imd_unit)
    mc = config.meter
    meter = None
    if mc.enabled:
        meter = MeterBusOwner(TcpTarget(mc.host, mc.port) if mc.transport == "tcp"
                              else RtuTarget(mc.serial_port, baudrate=mc.baudrate,
                                             parity=mc.parity), unit_id=mc.unit_id)
    try:
        ledger = Ledger(config.ledger.path)
    except LedgerError as exc:
        print(f"pile-agent run: ledger {config.ledger.path}: {exc}", file=sys.stderr)
        bus.shutdown()
        return 2
    assign_extension_pgns(config.extension_pgns())  # validated with the config
    reports, report = _printer(out)
    clock = MonotonicClock()
    inbox: list[Event] = []
    with contextlib.ExitStack() as stack:
        stack.callback(bus.shutdown)
        stack.callback(ledger.close)
        log = None
        if can_log:
            log = CandumpWriter(stack.enter_context(open(can_log, "w")), channel="can0",
                                epoch=time.time() - clock.now())
        thermal = ThermalSupervisor(config.thermal) if safety else None
        session = GunSession(config.gun, thermal=thermal, require_safety_io=safety is not None,
                             health=config.health, owner_policies=config.owners,
                             upstream=config.upstream.policy(config.gun))
        runtime = GunRuntime(session, GbtLink(bus, Role.CHARGER, log=log), owner,
                             report, module_period_s=None, safety=safety, meter=meter,
                             meter_period_s=mc.poll_period_s, ledger=ledger,
                             gun=config.gun.charger_number)
        ems = await _start_ems(config, session, clock)
        if isinstance(ems, str):
            print(f"pile-agent run: {ems}", file=sys.stderr)
            return 2
        ocpp = _ocpp_bridge(config, session, stack)
        ocpp_task = asyncio.create_task(ocpp.client.run()) if ocpp else None
        owner_task = asyncio.create_task(owner.run(clock, inbox.append))
        safety_task = asyncio.create_task(safety.run(clock, inbox.append)) if safety else None
        meter_task = asyncio.create_task(meter.run(clock, inbox.append, mc.poll_period_s)) \
            if meter else None
        try:
            plugged = False
            while not reports:
                if not plugged and (safety is None or session.plant.safety_io_at is not None):
                    plugged = True  # CC1 detection arrives with the I/O board's next revision
                    runtime.feed(VehicleConnected(clock.now(), wall_clock_s=time.time()))
                events, inbox[:] = list(inbox), []
                if ems is not None:
                    events += ems.events(clock.now())
                if ocpp is not None:
                    events += ocpp.events(clock.now())
                await runtime.step(clock.now(), events)
                await clock.sleep(CONTROL_PERIOD_S - (clock.now() % CONTROL_PERIOD_S))
        finally:
            if ocpp is not None:
                ocpp.events(clock.now())  # the Ended event, into the outbox
                await _drain(ocpp, 5.0)  # what is left is replayed at the next start
            for task in (owner_task, safety_task, meter_task, ocpp_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await owner.close()
            if ems is not None:
                await ems.stop()
            if safety is not None:
                await safety.close()
            if meter is not None:
                await meter.close()
    return 0 if reports[-1].outcome == "finished" else 1
