"""`pile-agent run` (the real-time path) against the simulators on wall-clock time:
virtual CAN bus, module and safety bus over Modbus TCP on loopback. A short session."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from agent.ledger.store import Ledger
from agent.runtime.config import PileConfig, parse_config
from agent.runtime.pile_service import PileService
from drivers.sunspec.codec import layout, load_map
from hil.csms_sim import Csms
from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile, free_port
from hil.matrix_sim import GroupSim


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


async def _serve_sessions(config: PileConfig, out: io.StringIO, sessions: int = 1) -> int:
    """The pile's service until every gun has reported `sessions` sessions, then an
    orderly stop; its exit code."""
    service = PileService(config, out=out)
    run = asyncio.create_task(service.run())
    while not (service.reports and all(len(r) >= sessions for r in service.reports.values())):
        if run.done():
            return run.result()
        await asyncio.sleep(0.05)
    service.stop("test: sessions done")
    return await run


def test_run_completes_a_session_in_real_time(tmp_path: Path) -> None:
    ems_seen: list[object] = []
    csms = Csms(password="0123456789abcdef")

    async def body() -> tuple[int, str]:
        ems_port = free_port()
        csms_port = await csms.start()
        pile = LoopbackPile(VehicleConfig(start_soc_pct=79.8, target_soc_pct=80.0))
        devices = await pile.start()
        config = parse_config({
            **devices,
            "ledger": {"path": str(tmp_path / "ledger.sqlite")},
            "ems": {"enabled": True, "port": ems_port},
            "ocpp": {"enabled": True, "url": f"ws://127.0.0.1:{csms_port}/ocpp",
                     "station_id": "RT-1", "password": "0123456789abcdef"},
        })
        ems = asyncio.create_task(_site_ems(ems_port, ems_seen))
        out = io.StringIO()
        try:
            rc = await asyncio.wait_for(_serve_sessions(config, out), 90.0)
            # The session's last commands reached the module before the agent exited.
            assert pile.module._get("output_enable") == 0
            assert pile.module._get("contactor_command") == 0
        finally:
            await pile.close()
            await ems
            await csms.stop()
        return rc, out.getvalue()

    rc, output = asyncio.run(body())
    assert rc == 0, output
    # [ems]: the site EMS read the SunSpec marker and its limit reached the core.
    assert ems_seen == [[0x5375, 0x6E53], False], ems_seen
    assert "notice setpoint_accepted: ems: accepted" in output, output
    # Its share reached the gun as a fresh offer when the car arrived (never refused as
    # stale or too frequent: the car would wait for the EMS offer to lapse).
    assert "setpoint_rejected" not in output, output
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


def test_run_drives_two_guns_sharing_a_module_pool(tmp_path: Path) -> None:
    """`[[gun]]` and `[pile]`: one process, two guns on their own CAN channels, four module
    groups behind the matrix board; both sessions finish on the pool's groups."""

    async def body() -> tuple[int, str, list[tuple[float, str, int, float]]]:
        cars = [VehicleConfig(start_soc_pct=79.8, target_soc_pct=80.0, vin=f"LRTPOOL00000000{i}")
                for i in (1, 2)]
        pile = LoopbackPile(cars, [GroupSim(f"G{k}", 125.0, 60_000.0, frozenset({1, 2}))
                                   for k in range(1, 5)])
        devices = await pile.start()
        config = parse_config({**devices, "ledger": {"path": str(tmp_path / "l.sqlite")}})
        assert config.pile is not None and len(config.guns) == 2
        out = io.StringIO()
        try:
            rc = await asyncio.wait_for(_serve_sessions(config, out), 90.0)
        finally:
            await pile.close()
        assert pile.matrix is not None
        return rc, out.getvalue(), pile.matrix.switched_under_load

    rc, output, under_load = asyncio.run(body())
    assert rc == 0, output
    assert under_load == [], under_load
    for gun in (1, 2):
        assert f"gun {gun}: session finished" in output, output
        assert f"gun {gun}: charging -> stopping" in output, output
    assert "pile: " in output and "-> gun 2" in output, output  # the pool's decisions
