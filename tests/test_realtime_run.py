"""`pile-agent run` (the real-time path) against the simulators on wall-clock time:
virtual CAN bus, module and safety bus over Modbus TCP on loopback. A short session."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
import uuid
from pathlib import Path

import can
from pymodbus.client import AsyncModbusTcpClient

from agent.ledger.store import Ledger
from agent.runtime.config import parse_config
from agent.runtime.realtime import run_pile
from drivers.gbt27930.link import GbtLink, LinkNotice, LinkProblem, Role
from drivers.sunspec.codec import layout, load_map
from hil.csms_sim import Csms
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.safety_io_sim import SafetyIoSim


async def _world(channel: str, bms: BmsSimulator, module: ModuleSim, safety: SafetyIoSim,
                 meter: MeterSim, stop: asyncio.Event) -> None:
    """The car and the pile's physics, stepped every 10 ms of wall time."""
    with can.Bus(interface="virtual", channel=channel) as bus:
        link = GbtLink(bus, Role.BMS)
        t0, last = time.monotonic(), time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            t, dt = now - t0, max(now - last, 1e-3)
            last = now
            for item in link.poll(t):
                if not isinstance(item, LinkProblem | LinkNotice):
                    bms.receive(item, t)  # type: ignore[arg-type]
            for message in bms.poll(t):
                link.send(message, t)
            bms.battery.current_a = 0.0
            module.step(dt, bms.battery)
            safety.step(dt, module.current_a)
            meter.step(dt)
            await asyncio.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _site_ems(port: int, seen: list[object]) -> None:
    """The site EMS: waits for the pile's SunSpec server, reads the map's marker and writes
    a 100 kW charge limit (702 WChaRteMax, W_SF 1)."""
    lay = layout(*load_map(), n_ports=1)
    for _ in range(200):
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        if await client.connect():
            break
        await asyncio.sleep(0.05)
    else:
        seen.append("never connected")
        return
    seen.append((await client.read_holding_registers(lay.base, count=2)).registers)
    rq = await client.write_register(lay.address_of("WChaRteMax"), 10_000)
    seen.append(rq.isError())
    client.close()


def test_run_completes_a_session_in_real_time(tmp_path: Path) -> None:
    ems_seen: list[object] = []
    csms = Csms(password="0123456789abcdef")

    async def body() -> tuple[int, str]:
        channel = f"rt-{uuid.uuid4().hex[:8]}"
        ems_port = _free_port()
        csms_port = await csms.start()
        bms = BmsSimulator(VehicleConfig(start_soc_pct=79.8, target_soc_pct=80.0))
        module = ModuleSim()
        safety = SafetyIoSim(module)
        module_server, module_port = await module.start_tcp()
        safety_server, safety_port = await safety.start_tcp()
        meter = MeterSim(module)
        meter_server, meter_port = await meter.start_tcp("127.0.0.1", 0)
        config = parse_config({
            "can": {"interface": "virtual", "channel": channel},
            "modbus": {"transport": "tcp", "host": "127.0.0.1", "port": module_port},
            "safety_bus": {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                           "port": safety_port},
            "meter": {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                      "port": meter_port},
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "ems": {"enabled": True, "port": ems_port},
            "ocpp": {"enabled": True, "url": f"ws://127.0.0.1:{csms_port}/ocpp",
                     "station_id": "RT-1", "password": "0123456789abcdef"},
        })
        stop = asyncio.Event()
        world = asyncio.create_task(_world(channel, bms, module, safety, meter, stop))
        ems = asyncio.create_task(_site_ems(ems_port, ems_seen))
        out = io.StringIO()
        try:
            rc = await asyncio.wait_for(run_pile(config, out=out), 90.0)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await world
            await ems
            await csms.stop()
            await module_server.stop()
            await safety_server.stop()
            await meter_server.stop()
        return rc, out.getvalue()

    rc, output = asyncio.run(body())
    assert rc == 0, output
    # [ems]: the site EMS read the SunSpec marker and its limit reached the core.
    assert ems_seen == [[0x5375, 0x6E53], False], ems_seen
    assert "notice setpoint_accepted: ems: accepted" in output, output
    # [ocpp]: booted with basic auth; the transaction went Started .. Ended, numbered.
    assert csms.of("BootNotification") and not csms.refused
    events = csms.of("TransactionEvent")
    assert events and events[0]["event_type"] == "Started", events
    assert events[-1]["event_type"] == "Ended", events
    assert [e["seq_no"] for e in events] == list(range(len(events)))
    for state in ("insulation_check", "precharge", "charging", "stopping", "finished"):
        assert f"-> {state}" in output, output
    # The session is on disk, with the meter's energy (config [ledger], [meter]).
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        sessions = ledger.sessions()
    finally:
        ledger.close()
    assert len(sessions) == 1 and sessions[0]["outcome"] == "finished", sessions
    assert sessions[0]["to_vehicle_kwh"] is not None and float(sessions[0]["to_vehicle_kwh"]) > 0, \
        sessions
