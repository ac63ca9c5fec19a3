"""The realistic one-edit bugs an audit found the whole suite let through (issue 25), each
with a test written from the standard's or the documentation's numbers, not from the code
under test. Each is also a mutant in tests/mutation_check.py (`audit:*`)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from agent.core.commands import LedgerInterval, Notice, SessionReport
from agent.core.direction import Direction
from agent.core.gbt_profile import view_of
from agent.core.health_policy import HealthPolicy, soc_window_limit
from agent.core.messages import BDP, BDS, CDP
from agent.core.session_data import SessionData
from agent.core.vehicle_view import Cells, DischargeLimits, VehicleView
from agent.ledger.outbox import Outbox
from agent.ledger.store import Ledger
from drivers.gbt27930.codec import decode, encode
from drivers.ocpp.profiles import ProfileStore, Rejection, parse_profile
from drivers.sunspec.codec import ILLEGAL_DATA_VALUE, decode_write
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from tests.test_sunspec_server import LAYOUT, serving

# docs/V2G.md: little-endian; currents 0.1 A with a -400 A offset, + = discharge (§4.5's
# sign for the extension); powers 0.1 kW; voltages 0.1 V; SOC 0.1 %; energy 0.1 kWh.
# CDP 150 A, 60 kW, 250 V, version 1: 0xAA, (150 + 400) / 0.1 = 5500 = 0x157C, 600 =
# 0x0258, 2500 = 0x09C4, 0x01.
V2G_VECTORS = [
    (CDP(True, 150.0, 60_000.0, 250.0), 0x3100, "aa 7c 15 58 02 c4 09 01"),
    (BDS(True, 120.0, 10.0, 30.0), 0x3300, "aa 50 14 64 00 2c 01 ff"),
    (BDP(True, 150.0, 60_000.0, 300.0, 20.0, 15.0), 0x3200, "aa 7c 15 58 02 b8 0b c8 00 96 00"),
]


@pytest.mark.parametrize(("message", "pgn", "hexbytes"), V2G_VECTORS)
def test_v2g_messages_are_the_documented_bytes(message: object, pgn: int,
                                               hexbytes: str) -> None:
    """A decoder that takes magnitudes would round-trip a CDP encoded with CML's charge sign;
    a car reading the sign as documented would see the wrong direction. Fixed bytes catch it."""
    assert encode(message) == (pgn, bytes.fromhex(hexbytes))  # type: ignore[arg-type]
    assert decode(pgn, bytes.fromhex(hexbytes)) == message


def _v2g_data(charging_started_at: float | None) -> SessionData:
    d = SessionData()
    d.bdp = BDP(True, 150.0, 60_000.0, 300.0, 20.0, 15.0)
    d.v2g_negotiated = True
    d.charging_started_at = charging_started_at
    return d


def test_without_a_live_bds_the_parameters_consent_ends_with_energy_transfer() -> None:
    """docs/V2G.md: discharge needs a live BDS once energy transfer has begun; the BDP's
    answer stands only before (a car whose status never arrives is not discharged)."""
    assert view_of(_v2g_data(None), 10.0).consent
    assert not view_of(_v2g_data(5.0), 10.0).consent


def test_an_unknown_soc_allows_no_discharge() -> None:
    """ISO 15118-20 makes SOC optional: without one, the SOC floor cannot be shown to hold."""
    view = VehicleView(charge=None, discharge=DischargeLimits(150.0, 60_000.0, 300.0, 20.0,
                                                              None),
                       consent=True, soc_pct=None, demand_a=-50.0, demand_v=400.0,
                       battery_voltage_v=400.0, alarm=False, paused=False, cells=Cells(),
                       capacity_ah=None, nominal_energy_kwh=None)
    assert soc_window_limit(HealthPolicy(), view, Direction.DISCHARGE)[0] == 0.0
    # The other side: a known SOC above the floor allows it.
    known = dataclasses.replace(view, soc_pct=60.0)
    assert soc_window_limit(HealthPolicy(), known, Direction.DISCHARGE)[0] > 0.0


def test_loopback_writes_only_when_allowed() -> None:
    """allowed_writers without 127.0.0.1: a write from 127.0.0.1 is refused (exception 01)."""
    async def run() -> None:
        async with serving(EmsSettings(allow_discharge=True),
                           writers=("127.0.0.2",)) as (_server, port, _clock):
            client = AsyncModbusTcpClient("127.0.0.1", port=port)
            await client.connect()
            try:
                r = await client.write_registers(LAYOUT.address_of("WSetEna"), [1],
                                                 device_id=1)
                assert r.isError() and r.exception_code == 1, r
            finally:
                client.close()

    asyncio.run(run())


def test_one_write_of_wsetena_to_wset_cannot_carry_a_discharge_past_the_gate() -> None:
    """mbpoll and real EMSs write WSetEna, WSetMod and WSet in one FC16: the discharge gate
    must look at every point of it, not the first."""
    c = EmsControls(EmsSettings(allow_discharge=False))
    words = [1, 1, 0, 20_000]  # WSetEna 1, WSetMod 1 (W), WSet +20 kW (SunSpec: injection)
    written = decode_write(LAYOUT, LAYOUT.address_of("WSetEna"), words)
    assert not isinstance(written, int) and len(written) == 3, written
    assert c.on_write(0.0, written) == ILLEGAL_DATA_VALUE
    assert c.wset_w == 0.0 and not c.wset_enabled


def test_a_charging_only_profile_forbids_discharge() -> None:
    """OCPP 2.1 ChargingOnly: charging up to the limit, no discharge whatever else is live."""
    raw = {"id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
           "charging_profile_kind": "Relative",
           "charging_schedule": [{"id": 1, "charging_rate_unit": "W",
                                  "charging_schedule_period": [
                                      {"start_period": 0, "operation_mode": "ChargingOnly",
                                       "limit": 40_000.0}]}]}
    profile = parse_profile(raw, 1000.0, None)
    assert not isinstance(profile, Rejection)
    store = ProfileStore()
    store.set(profile)
    [offer] = [o for o in store.offers(1001.0) if o.source == "ocpp:tx"]
    assert offer.discharge_limit == 0.0 and offer.setpoint is None, offer


def test_the_ledger_and_the_outbox_sync_every_commit(tmp_path: Path) -> None:
    """SIGKILL keeps the page cache, so a kill test passes with synchronous=OFF too: the
    durability claim rests on these pragmas (a power cut loses a reported commit without
    them), so they are asserted on the connections the agent uses."""
    path = tmp_path / "l.sqlite"
    ledger, outbox = Ledger(path), Outbox(path)
    for db in (ledger._db, outbox._db):
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as other:  # WAL is the file's own mode
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_record_is_reported_only_after_it_is_written() -> None:
    """The runtime's order: durable first, then reported (a crash between the two must not
    report energy that is not on disk)."""
    from agent.core.ratings import GunRatings
    from agent.core.session import GunSession
    from agent.runtime.gun_runtime import GunRuntime

    order: list[str] = []

    class Ledger_:
        def write_interval(self, *args: object) -> None:
            order.append("write interval")

        def write_session(self, *args: object) -> None:
            order.append("write session")

    def report(command: object) -> None:
        if isinstance(command, LedgerInterval | SessionReport):
            order.append("report " + type(command).__name__)
        elif isinstance(command, Notice):
            order.append("notice")

    runtime = GunRuntime(GunSession(GunRatings()), vehicle=None, module=None,  # type: ignore[arg-type]
                         report=report, ledger=Ledger_())  # type: ignore[arg-type]
    runtime._execute(LedgerInterval(1, 0.0, 900.0, "charge", 1.0, 0.0, 1.0, 0.0,
                                    "quarter hour"))
    runtime._execute(SessionReport(t=1.0, outcome="finished", reason="", energy_kwh=1.0,
                                   duration_s=1.0, start_soc_pct=None, end_soc_pct=None))
    assert order == ["write interval", "report LedgerInterval", "write session",
                     "report SessionReport"], order
