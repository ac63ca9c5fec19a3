"""pile.toml -> the objects of a running pile: each gun's drivers, session and runtime,
and the pile's module pool. Builds; runs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can

from agent.core.commands import Command, Notice, SessionReport, StateChanged
from agent.core.module_pool import ModulePool
from agent.core.pile import PileCoordinator
from agent.core.session import GunSession
from agent.core.thermal_guard import ThermalSupervisor
from agent.ledger.store import Ledger
from agent.runtime.clock import Clock
from agent.runtime.config import GunSetup, PileConfig
from agent.runtime.event_log import REFUSALS, EventLog
from agent.runtime.gun_runtime import GunRuntime
from agent.runtime.gun_service import Doorbell, GunDrivers, GunService
from agent.runtime.gun_telemetry import GunTelemetry
from agent.runtime.session_traces import SessionTraces, TraceSettings, TraceTee
from drivers.dc_meter.link import MeterBusOwner
from drivers.gbt27930.candump import CandumpWriter
from drivers.gbt27930.link import GbtLink, Role
from drivers.gbt27930.rx_notify import NotifiedBus
from drivers.module_matrix.link import MatrixBusOwner
from drivers.power_module.link import LinkConfig, ModuleLink, RtuTarget, TcpTarget
from drivers.power_module.owner import ModuleBusOwner
from drivers.safety_io.link import SafetyBusOwner


def reporter(events: EventLog, gun: int, session_id: Callable[[], str | None],
             telemetry: GunTelemetry, fault_code: Callable[[], str]
             ) -> tuple[list[SessionReport], Callable[[Command], None]]:
    """The session's state changes, notices and reports as event records (the journal,
    under systemd) and into the gun's telemetry; the reports kept."""
    reports: list[SessionReport] = []
    who = events.who(gun)

    def report(command: Command) -> None:
        telemetry.on_command(command, fault_code())
        match command:
            case StateChanged(t=t, source=src, dest=dest, reason=why):
                events.emit("fault" if dest == "fault" else "state", why, t=t, gun=gun,
                            session=session_id(), level="warning" if dest == "fault"
                            else "info", text=f"[{t:9.3f} s] {who}{src} -> {dest}: {why}",
                            source=src, dest=dest)
            case Notice(t=t, kind=kind, detail=detail):
                events.emit("refused" if kind in REFUSALS else "notice", detail, t=t,
                            gun=gun, session=session_id(), kind=kind,
                            text=f"[{t:9.3f} s] {who}notice {kind}: {detail}")
            case SessionReport():
                reports.append(command)
                events.emit("session", command.reason, gun=gun, session=session_id(),
                            text=f"{who}session {command.outcome}: {command.reason}; "
                                 f"{command.energy_kwh:.2f} kWh",
                            outcome=command.outcome, energy_kwh=round(command.energy_kwh, 4),
                            discharged_kwh=round(command.discharged_kwh, 4))

    return reports, report


def target(transport: str, host: str, port: int, serial_port: str, baudrate: int,
           parity: str) -> TcpTarget | RtuTarget:
    return TcpTarget(host, port) if transport == "tcp" \
        else RtuTarget(serial_port, baudrate=baudrate, parity=parity)


def open_bus(setup: GunSetup) -> can.BusABC | str:
    """The gun's CAN bus, or why it cannot be opened."""
    c = setup.can
    try:
        extra: dict[str, Any] = {"port": c.port} if c.port else {}
        return can.Bus(interface=c.interface, channel=c.channel, bitrate=c.bitrate, **extra)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        return f"cannot open CAN {c.interface}:{c.channel}: {exc}"


def gun_drivers(setup: GunSetup) -> GunDrivers:
    m, sb, mc = setup.modbus, setup.safety_bus, setup.meter
    module = ModuleBusOwner(ModuleLink(target(m.transport, m.host, m.port, m.serial_port,
                                              m.baudrate, m.parity),
                                       LinkConfig(unit_id=m.unit_id,
                                                  request_timeout_s=m.timeout_s)),
                            poll_period_s=m.poll_period_s)
    safety = SafetyBusOwner(target(sb.transport, sb.host, sb.port, sb.serial_port,
                                   sb.baudrate, sb.parity),
                            io_unit=sb.io_unit, imd_unit=sb.imd_unit,
                            poll_period_s=sb.poll_period_s) if sb.enabled else None
    meter = MeterBusOwner(target(mc.transport, mc.host, mc.port, mc.serial_port, mc.baudrate,
                                 mc.parity), unit_id=mc.unit_id) if mc.enabled else None
    return GunDrivers(module, safety, meter, mc.poll_period_s)


def gun_service(config: PileConfig, setup: GunSetup, drivers: GunDrivers, bus: can.BusABC,
                ledger: Ledger, log: CandumpWriter | None, events: EventLog, clock: Clock,
                wall: Callable[[], float]) -> tuple[GunService, list[SessionReport]]:
    number = setup.ratings.charger_number
    runtime_box: list[GunRuntime] = []
    telemetry = GunTelemetry()
    tr = config.traces
    traces = SessionTraces(TraceSettings(Path(tr.directory), tr.formats, tr.keep_days,
                                         tr.keep_mb), setup.can.channel,
                           epoch=wall() - clock.now(), wall=wall) if tr.enabled else None

    def session_id() -> str | None:
        return runtime_box[0].session_id() if runtime_box else None
    session = GunSession(setup.ratings, thermal=ThermalSupervisor(config.thermal)
                         if drivers.safety else None,
                         require_safety_io=drivers.safety is not None,
                         health=config.health, owner_policies=config.owners,
                         upstream=config.upstream.policy(setup.ratings),
                         pooled=config.pile is not None)
    reports, report = reporter(events, number, session_id, telemetry,
                               lambda: session.data.fault_code)
    if traces is not None:
        on_command = report

        def report(command: Command) -> None:
            on_command(command)
            if isinstance(command, StateChanged) and command.dest == "idle":
                traces.close()  # the car is gone: its files closed, the directory pruned
    # Each frame wakes the gun's loop as it arrives (a BCL is decided on at once):
    # socketcan's descriptor on the event loop; a bus without one through a reader thread.
    bell = Doorbell(asyncio.Event())
    rx = NotifiedBus(bus, asyncio.get_running_loop(), bell.ring)
    tee = TraceTee(log, traces, session_id) if log is not None or traces is not None else None
    runtime = GunRuntime(session, GbtLink(rx, Role.CHARGER, log=tee), drivers.module, report,
                         module_period_s=None, safety=drivers.safety, meter=drivers.meter,
                         meter_period_s=drivers.meter_period_s, ledger=ledger, gun=number)
    runtime_box.append(runtime)
    service = GunService(number, session, runtime, drivers, clock, wall, bell,
                         in_service=setup.in_service, priority=setup.priority,
                         telemetry=telemetry)
    if traces is not None:
        def on_close() -> None:
            rx.close()
            traces.close()

        service.on_close = on_close
    else:
        service.on_close = rx.close
    return service, reports


def coordinator(config: PileConfig) -> tuple[PileCoordinator, MatrixBusOwner] | None:
    p = config.pile
    if p is None:
        return None
    pool = ModulePool(p.groups, pile_power_w=p.power_w, grid_limit_w=p.grid_limit_w,
                      export_limit_w=p.export_limit_w)
    priorities = {g.ratings.charger_number: g.priority for g in config.guns}
    mx = p.matrix
    owner = MatrixBusOwner(target(mx.transport, mx.host, mx.port, mx.serial_port,
                                  mx.baudrate, mx.parity), len(p.groups), unit_id=mx.unit_id)
    return PileCoordinator(pool, priorities), owner
