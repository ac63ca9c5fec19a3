"""What an operator sees (issue 22), against the service running the loopback pile: the
Prometheus endpoint's figures against the simulators' own (parsed with prometheus_client's
own text parser), a fault's counter, the status endpoint and `pile-agent status`, and the
JSON log of a session with a refused profile, a lost link and a fault (a raw-websocket
central system written from OCPP-J, tests/test_ocpp_frames.py)."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from agent.core.states import State
from agent.runtime.event_log import EventLog, route_python_logging
from agent.runtime.pile_service import PileService
from agent.status_cli import run_status
from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile
from tests.served_service import served, until
from tests.test_ocpp_frames import RawCsms

LONG = VehicleConfig(start_soc_pct=40.0, target_soc_pct=90.0)
SHORT = VehicleConfig(start_soc_pct=79.5, target_soc_pct=80.0)
KWH_J = 3.6e6


async def _get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5.0) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
    return await asyncio.to_thread(fetch)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _one(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
         **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def _with_service(tmp_path: Path, cars: list[VehicleConfig],
                        body: Callable[[PileService, LoopbackPile, str], Awaitable[Any]],
                        extra: dict[str, Any] | None = None,
                        events: EventLog | None = None) -> Any:
    """The service with its status and metrics on one free port of 127.0.0.1."""
    async with served(tmp_path, cars, {"status": {"port": 0},
                                       "metrics": {"enabled": True, "port": 0},
                                       **(extra or {})}, events) as (service, pile):
        # Both on port 0 of 127.0.0.1: one endpoint serves /status, / and /metrics.
        assert len(service.endpoints) == 1
        address = service.endpoints[0].address
        assert address is not None
        return await body(service, pile, f"http://127.0.0.1:{address[1]}")


def test_metrics_agree_with_the_simulators_and_count_a_fault(tmp_path: Path) -> None:
    async def body(service: PileService, pile: LoopbackPile, base: str) -> None:
        gun = service.gun(1)
        module, meter = pile.module, pile.guns[0].meter
        await until(lambda: gun.session.state is State.CHARGING
                     and gun.session.act.current_a > 100.0, 40.0, "charging")
        # The output settled on its command (the module's loop is first order).
        await until(lambda: abs(module.current_a - gun.session.act.current_a) < 0.3, 20.0,
                     "a steady current")
        await asyncio.sleep(0.3)
        status, text = await _get(base + "/metrics")
        sim_a = module.current_a
        assert status == 200
        m = _samples(text)
        assert _one(m, "pile_agent_gun_state", gun="1", pile_agent_gun_state="charging") == 1
        assert _one(m, "pile_agent_gun_direction", gun="1") == 1
        assert abs(_one(m, "pile_agent_gun_current_amperes", gun="1", kind="measured")
                   - sim_a) <= 1.0, (sim_a, text)
        assert _one(m, "pile_agent_gun_bound_limit_info", gun="1",
                    limit=gun.telemetry.bound_by) == 1
        assert _one(m, "pile_agent_gun_can_frames_received_total", gun="1") > 50
        assert m[("pile_agent_control_step_seconds_count", ())] > 50
        assert m[("pile_agent_ccs_period_seconds_count", ())] > 20
        # Requests per kind of device, summed over the devices of a kind (the pool's
        # output units are several "module ..." devices: one key kept only one of them).
        modbus: dict[str, float] = {}
        for (name, labels), v in m.items():
            if name == "pile_agent_modbus_request_seconds_count":
                kind = dict(labels)["device"].split()[0]
                modbus[kind] = modbus.get(kind, 0.0) + v
        assert {"module", "safety", "meter"} <= modbus.keys() and modbus["module"] > 20, m
        # The car ends its session: then the meter's counter stands still and is read.
        await until(lambda: gun.session.state is State.FINISHED, 60.0, "the session's end")
        await asyncio.sleep(1.5)
        m = _samples((await _get(base + "/metrics"))[1])
        energy = _one(m, "pile_agent_gun_meter_energy_to_vehicle_joules_total", gun="1")
        assert meter.to_vehicle_kwh > 0.05
        assert energy == pytest.approx(meter.to_vehicle_kwh * KWH_J, rel=0.005)
        assert _one(m, "pile_agent_gun_sessions_total", gun="1", outcome="finished") == 1
        # A fault: the E-stop pressed during the next car's session.
        faults = sum(v for (name, _l), v in m.items() if name == "pile_agent_gun_faults_total")
        assert faults == 0
        pile.safety.estop_pressed = True
        await until(lambda: gun.session.state is State.FAULT, 20.0, "the E-stop's fault")
        m = _samples((await _get(base + "/metrics"))[1])
        assert _one(m, "pile_agent_gun_faults_total", gun="1", reason="emergency_stop") == 1
        assert _one(m, "pile_agent_gun_state", gun="1", pile_agent_gun_state="fault") == 1

    asyncio.run(_with_service(tmp_path, [SHORT], body))


def test_the_status_endpoint_and_pile_agent_status(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    async def body(service: PileService, pile: LoopbackPile, _metrics: str) -> None:
        gun = service.gun(1)
        await until(lambda: gun.session.state is State.CHARGING
                     and gun.session.act.current_a > 50.0, 40.0, "charging")
        address = service.endpoints[0].address
        assert address is not None
        base = f"http://127.0.0.1:{address[1]}"
        await until(lambda: abs(pile.module.current_a - gun.session.act.current_a) < 0.3,
                     20.0, "a steady current")
        await asyncio.sleep(2.2)  # the status task's 1 s samples of power
        code, body_text = await _get(base + "/status")
        doc = json.loads(body_text)
        g = doc["guns"][0]
        assert code == 200 and g["gun"] == 1 and g["state"] == "charging"
        assert g["status"] == "Occupied" and g["direction"] == "charge"
        assert abs(g["current_a"] - pile.module.current_a) <= 1.0
        assert g["power_w"] > 10_000 and g["soc_pct"] is not None
        assert g["session"] and g["session"].startswith("gun1-")
        assert len(g["power_history"]) >= 2
        code, page = await _get(base + "/")
        assert code == 200 and "<canvas" in page
        assert (await _get(base + "/nothing"))[0] == 404
        # `pile-agent status` against the running agent, through its config file.
        toml = tmp_path / "pile.toml"
        toml.write_text(f'[ledger]\npath = "{tmp_path / "x.sqlite"}"\n'
                        f'[status]\nport = {address[1]}\n')
        rc = await asyncio.to_thread(run_status, str(toml), False)
        out = capsys.readouterr().out
        assert rc == 0 and "gun 1: Occupied, charging" in out and "kW (charge)" in out
        rc = await asyncio.to_thread(run_status, str(toml), True)
        assert rc == 0 and json.loads(capsys.readouterr().out)["guns"][0]["gun"] == 1

    asyncio.run(_with_service(tmp_path, [LONG], body))


def test_pile_agent_status_says_when_no_agent_answers(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    toml = tmp_path / "pile.toml"
    toml.write_text(f'[ledger]\npath = "{tmp_path / "x.sqlite"}"\n[status]\nport = 9\n')
    assert run_status(str(toml), False) == 1
    assert "is `pile-agent run --config" in capsys.readouterr().err
    toml.write_text('[status]\nport = 70000\n')
    assert run_status(str(toml), False) == 2


def test_the_json_log_has_a_refused_profile_a_lost_link_and_a_fault(tmp_path: Path) -> None:
    out = io.StringIO()
    events = EventLog(out, json_lines=True, journal=False)
    bridge = route_python_logging(events)
    csms = RawCsms()

    async def main() -> None:
        async with websockets.serve(csms.handler, "127.0.0.1", 0,
                                    subprotocols=["ocpp2.1"]) as server:  # type: ignore[list-item]
            port = server.sockets[0].getsockname()[1]

            async def body(service: PileService, pile: LoopbackPile, _m: str) -> None:
                await asyncio.wait_for(csms.connected.wait(), 20.0)
                await until(lambda: service.gun(1).session.state is State.CHARGING, 40.0,
                             "charging")
                # A TxDefaultProfile above the stack levels the station has: Rejected.
                await csms.ws.send(json.dumps([2, "p1", "SetChargingProfile", {
                    "evseId": 1, "chargingProfile": {
                        "id": 7, "stackLevel": 99, "chargingProfilePurpose": "TxDefaultProfile",
                        "chargingProfileKind": "Relative", "chargingSchedule": [{
                            "id": 1, "chargingRateUnit": "A",
                            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}]}}]))
                answer = await asyncio.wait_for(csms.frames.get(), 5.0)
                assert answer[2]["status"] == "Rejected", answer
                await csms.ws.close()  # the link drops
                await until(lambda: '"link_lost"' in out.getvalue(), 10.0, "link_lost")
                pile.safety.estop_pressed = True
                await until(lambda: service.gun(1).session.state is State.FAULT, 20.0,
                             "the fault")
                await asyncio.sleep(0.2)

            await _with_service(tmp_path, [LONG], body, extra={"ocpp": {
                "enabled": True, "url": f"ws://127.0.0.1:{port}/ocpp", "station_id": "LOG",
                "password": "log-test-password",
                "retry_wait_min_s": 30.0}}, events=events)

    try:
        asyncio.run(main())
    finally:
        import logging
        logging.getLogger("pile_agent").removeHandler(bridge)
    records = [json.loads(line) for line in out.getvalue().splitlines()]  # every line JSON
    assert all({"time", "level", "event", "reason"} <= r.keys() for r in records)
    refused = [r for r in records if r["event"] == "refused" and "profile" in r["reason"]]
    lost = [r for r in records if r["event"] == "link_lost"]
    faults = [r for r in records if r["event"] == "fault"]
    assert len(refused) == 1, records
    assert len(lost) >= 1 and lost[0]["logger"] == "pile_agent.ocpp"
    assert len(faults) == 1 and faults[0]["gun"] == 1 and faults[0]["session"]
    assert "emergency stop" in faults[0]["reason"] and faults[0]["level"] == "warning"
    states = [r for r in records if r["event"] == "state"]
    assert states and all(r["session"] == faults[0]["session"] for r in states
                          if r["dest"] != "idle")


def test_each_session_s_can_traffic_in_its_own_files(tmp_path: Path) -> None:
    directory = tmp_path / "traces"

    async def body(service: PileService, pile: LoopbackPile, _m: str) -> None:
        await until(lambda: len(service.reports[1]) == 1, 60.0, "the session's end")

    asyncio.run(_with_service(tmp_path, [SHORT], body, extra={"traces": {
        "enabled": True, "directory": str(directory), "formats": ["candump", "asc", "blf"]}}))
    from agent.ledger.store import Ledger
    ledger = Ledger(tmp_path / "ledger.sqlite", read_only=True)
    keys = [str(r["session_key"]) for r in ledger.sessions()]
    ledger.close()
    assert len(keys) == 1
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted([*(f"{keys[0]}{suffix}" for suffix in (".asc", ".blf", ".log")),
                            "events.jsonl"]), names
    from drivers.gbt27930.candump import read_candump
    from tests.independent_gbt_decoder import decode_log
    log = directory / f"{keys[0]}.log"
    frames = list(read_candump(log))
    names_seen = {name for name, _f in decode_log(log.read_text().splitlines())}
    assert {"CHM", "BRM", "BCP", "BCL", "CCS", "BST", "CST"} <= names_seen
    import can
    for suffix, reader in ((".blf", can.BLFReader), (".asc", can.ASCReader)):
        read = list(reader(str(directory / f"{keys[0]}{suffix}")))
        assert len(read) == len(frames), suffix
        assert [m.arbitration_id for m in read] == [ident for _t, ident, _d in frames]
        assert any(m.is_rx for m in read) and any(not m.is_rx for m in read)


def test_old_and_excess_traces_are_pruned(tmp_path: Path) -> None:
    import os

    from agent.runtime.session_traces import TraceSettings, prune
    now = 1_800_000_000.0
    files = {"old.log": (now - 40 * 86_400, 10), "a.log": (now - 3_000, 600_000),
             "b.log": (now - 2_000, 600_000), "c.log": (now - 1_000, 600_000)}
    for name, (mtime, size) in files.items():
        p = tmp_path / name
        p.write_bytes(b"x" * size)
        os.utime(p, (mtime, mtime))
    gone = prune(TraceSettings(tmp_path, keep_days=30, keep_mb=1.5), now)
    assert sorted(p.name for p in gone) == ["a.log", "old.log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.log", "c.log"]
