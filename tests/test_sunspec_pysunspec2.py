"""The SunSpec server as the SunSpec Alliance's own client reads it (pysunspec2, not our codec):
every model found at its length and every point decoded; the values pysunspec2 sees are the
gun's (model 1 SN from config, 702 CtrlModes, 714's port type and model-level DC figures);
writes read back; a setpoint beyond the gun is refused; registers only (a coil read is
refused with exception 01)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sunspec2.modbus.client as sunspec_client
from pymodbus.client import AsyncModbusTcpClient

from agent.core.events import ModuleStatus
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.upstream import setpoint_ratings
from agent.runtime.ems_view import ems_snapshot
from drivers.sunspec.codec import layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer

# Lengths from the SunSpec information models (pysunspec2's own model definitions).
LENGTHS = {1: 66, 701: 153, 702: 50, 704: 65, 711: 22, 713: 7, 714: 18 + 25, 715: 7}
RATINGS = GunRatings(max_discharge_current_a=200.0, max_discharge_power_w=100_000.0)
SERIAL = "SZ-0042-1"


def _scan(port: int) -> dict[int, Any]:
    d = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1",
                                                     ipport=port, timeout=2)
    d.connect()
    try:
        d.scan()
        found = {mid: models[0] for mid, models in d.models.items() if isinstance(mid, int)}
        for m in found.values():
            m.read()
        return found
    finally:
        d.disconnect()


def _write_wset(port: int, sunspec_w: int) -> Exception | None:
    d = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1",
                                                     ipport=port, timeout=2)
    d.connect()
    try:
        d.scan()
        m = d.models[704][0]
        m.read()
        m.WSetEna.cvalue = 1
        m.WSet.cvalue = sunspec_w
        try:
            m.write()
        except Exception as exc:  # pysunspec2 raises its own ModbusClientException
            return exc
        return None
    finally:
        d.disconnect()


def _read_wset(port: int) -> tuple[int, int]:
    found = _scan(port)
    return found[704].WSetEna.cvalue, found[704].WSet.cvalue


async def _serving(session: GunSession) -> tuple[SunSpecServer, int]:
    base, models = load_map()
    server = SunSpecServer(
        layout(base, models, n_ports=1),
        EmsControls(EmsSettings(allow_discharge=True, ratings=setpoint_ratings(RATINGS))),
        lambda: ems_snapshot(session, SERIAL, 0), lambda: 0.0,
        allowed_writers=("127.0.0.1",))
    return server, await server.start("127.0.0.1", 0)


def test_pysunspec2_scans_decodes_and_writes() -> None:
    session = GunSession(RATINGS)
    session.handle(ModuleStatus(t=0.0, output_voltage_v=400.0, output_current_a=-100.0,
                                gun_voltage_v=400.0, temperature_c=40.0,
                                contactors_closed=True, contactors_any_closed=True,
                                fault_word=0))

    async def run() -> None:
        server, port = await _serving(session)
        try:
            found = await asyncio.to_thread(_scan, port)
            assert sorted(found) == sorted(LENGTHS), sorted(found)
            for mid, length in LENGTHS.items():
                assert found[mid].model_len == length, (mid, found[mid].model_len)
            assert found[1].SN.cvalue == SERIAL and found[1].Mn.cvalue == "pile-agent"
            modes = found[702].CtrlModes.cvalue
            assert modes & (1 << 1) and not modes & 1, bin(modes)  # FIXED_W, not MAX_W
            assert found[702].WDisChaRteMaxRtg.cvalue == pytest.approx(100_000.0)
            port_group = found[714].Prt[0]
            assert port_group.PrtTyp.cvalue == 5  # BIDIR, not PV (0)
            # SunSpec's sign: + = injection (the gun discharging 100 A at 400 V)
            assert found[714].DCA.cvalue == pytest.approx(100.0)
            assert found[714].DCW.cvalue == pytest.approx(40_000.0)
            assert port_group.DCA.cvalue == pytest.approx(100.0)
            assert await asyncio.to_thread(_write_wset, port, 50_000) is None
            assert await asyncio.to_thread(_read_wset, port) == (1, 50_000)
            refused = await asyncio.to_thread(_write_wset, port, 150_000)  # > 100 kW discharge
            assert refused is not None
            assert await asyncio.to_thread(_read_wset, port) == (1, 50_000)  # unchanged
            client = AsyncModbusTcpClient("127.0.0.1", port=port)
            await client.connect()
            try:
                coils = await client.read_coils(40000, count=16, device_id=1)
                assert coils.isError() and coils.exception_code == 1, coils
            finally:
                client.close()
        finally:
            await server.stop()

    asyncio.run(run())
