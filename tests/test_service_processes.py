"""`pile-agent run` as the separate process it is in the field, against simulated hardware
on loopback: the served pile (`pile-agent hil serve`, or hil/served_pile.py in this
process where the test must reach into the hardware), the hil central system and a site
EMS over SunSpec Modbus TCP.

- Four guns, car after car for two minutes (the soak): >= 3 sessions on each, V2G cars
  discharging for the EMS's pile-level WSet, one transaction per session on the right
  EVSE, the EMS reading every gun's 714 port between and during sessions.
- SIGTERM during a discharge: <= 5 A within 1 s, exit 0 within 5 s, the session in the
  ledger as stopped by the agent.
- kill -9 and restart: the output off before the first CAN frame of the new process, the
  open session closed ("agent restarted"), the outbox replayed with an Ended event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
import time
from pathlib import Path
from typing import Any

from agent.ledger.store import Ledger
from agent.runtime.config import load_config
from drivers.gbt27930.link import LinkNotice, LinkProblem
from hil.csms_sim import Csms
from hil.loopback_pile import free_port
from hil.served_pile import CarPlan, ServedPile
from hil.soak import PASSWORD, SiteEms, pile_toml, process, soak


def _pile_toml(tmp: Path, guns: int = 2, ems_port: int = 0, ocpp_port: int = 0) -> Path:
    """pile_toml of hil/soak.py, with the EMS or OCPP left out where not wanted."""
    path = pile_toml(tmp, guns, ems_port or free_port(), ocpp_port or free_port())
    text = path.read_text()
    if not ems_port:
        text = text.replace("[ems]\nenabled = true", "[ems]\nenabled = false")
    if not ocpp_port:
        text = text.replace("[ocpp]\nenabled = true", "[ocpp]\nenabled = false")
    path.write_text(text)
    return path


def _ledger_sessions(tmp: Path) -> list[dict[str, Any]]:
    ledger = Ledger(tmp / "ledger.sqlite", read_only=True)
    try:
        return ledger.sessions()
    finally:
        ledger.close()


def test_four_guns_serve_car_after_car_for_two_minutes(tmp_path: Path) -> None:
    """The soak (`pile-agent bench --soak 2 --soak-guns 4`): the served pile and the agent
    as processes of their own, the hil central system and a site EMS in this one. Every
    gun serves >= 3 cars, V2G cars discharge for the EMS's pile-level WSet, each session
    is one transaction on its gun's EVSE and one ledger record, none of either lost or
    duplicated, and the EMS reads every port, idle and energising, all along."""
    r = asyncio.run(soak(2.0, guns=4, workdir=tmp_path))
    output = (tmp_path / "run.log").read_text()[-3000:]
    assert r["agent_exit_code"] == 0 and r["agent_alive_through_the_window"], (r, output)
    assert r["stop_s"] <= 5.0, r
    ledger, ocpp = r["ledger"], r["ocpp"]
    for gun in ("1", "2", "3", "4"):
        assert ledger["sessions_per_gun"].get(gun, 0) >= 3, (ledger, output)
        assert ocpp["transactions_per_evse"].get(gun, 0) >= 3, ocpp
        assert {"Available", "Occupied"} <= set(ocpp["connector_statuses"][gun]), ocpp
        assert r["ems_port_states_seen"][gun] == [0, 1], r["ems_port_states_seen"]
    assert ledger["intervals_lost"] == 0 and ledger["intervals_duplicated"] == 0, ledger
    assert ocpp["events_lost"] == 0 and ocpp["events_duplicated"] == 0, ocpp
    assert ocpp["transactions_not_started_and_ended"] == 0, ocpp
    assert ocpp["transactions_on_two_evses"] == 0, ocpp
    assert ocpp["transactions"] == ledger["sessions"], (ocpp, ledger)
    assert ocpp["boot_notifications"] == 1, ocpp  # not on a reconnect
    assert ledger["discharged_kwh"] > 0, ledger  # the V2G cars followed the EMS
    assert r["ems_failed_reads"] == 0 and r["ems_reads"] > 0, r
    assert r["ccs_period_ms"]["n"] > 0 and r["rss_mb_end"] > 0, r
    assert r["rss_mb_half_way"] > 0 and r["rss_growth_mb_per_h_second_half"] is not None, r


async def _until(test: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _one_car(seed: int, v2g: bool) -> CarPlan:
    """One long car (5 kWh asked), whose owner does not come back during the test."""
    return CarPlan(seed=seed, v2g_share=1.0 if v2g else 0.0, kwh=(5.0, 5.0), stay_s=3600.0,
                   cars=1)


def test_sigterm_during_a_discharge(tmp_path: Path) -> None:
    ems_port = free_port()
    cfg = _pile_toml(tmp_path, 1, ems_port)
    config = load_config(cfg)

    async def body() -> tuple[float, float, int | None]:
        pile = ServedPile(config, _one_car(2, v2g=True))
        await pile.start()
        stop, ems_stop = asyncio.Event(), asyncio.Event()
        world = asyncio.create_task(pile.run(stop))
        module = pile.guns[0].module
        try:
            with process(["run", "--config", str(cfg)], tmp_path, "run.log") as agent:
                site = SiteEms(ems_port, 1, discharge_w=30_000.0)
                ems = asyncio.create_task(site.run(ems_stop))
                await _until(lambda: module.current_a < -20.0, 90.0, "a discharge")
                await asyncio.sleep(1.0)
                agent.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                await _until(lambda: abs(module.current_a) <= 5.0, 5.0, "<= 5 A")
                to_5a = time.monotonic() - t0
                rc = await asyncio.get_running_loop().run_in_executor(None, agent.wait, 10)
                to_exit = time.monotonic() - t0
                ems_stop.set()
                await ems
        finally:
            stop.set()
            await world
            await pile.close()
        return to_5a, to_exit, rc

    to_5a, to_exit, rc = asyncio.run(body())
    output = (tmp_path / "run.log").read_text()
    assert rc == 0, output[-3000:]
    assert to_5a <= 1.0 and to_exit <= 5.0, (to_5a, to_exit)
    [session] = _ledger_sessions(tmp_path)
    assert str(session["stop_reason"]).startswith("agent stopped (SIGTERM)"), session
    assert float(session["from_vehicle_kwh"] or 0) > 0, session


def test_kill_9_and_restart(tmp_path: Path) -> None:
    """The agent killed while charging, with the central system away (its events wait in
    the outbox) and hardware that does not trip on its own (no heartbeat trip, a slow
    module watchdog): the restarted agent writes the output off before its first CAN frame,
    closes the session left open and replays the outbox with that transaction's end."""
    csms = Csms(password=PASSWORD)
    csms_port = free_port()
    cfg = _pile_toml(tmp_path, 1, ocpp_port=csms_port)
    config = load_config(cfg)
    first_frame: list[tuple[float, float]] = []

    async def body() -> None:
        pile = ServedPile(config, _one_car(3, v2g=False))
        await pile.start()
        stop = asyncio.Event()
        world = asyncio.create_task(pile.run(stop))
        gun = pile.guns[0]
        module = gun.module
        try:
            await csms.start(csms_port)
            with process(["run", "--config", str(cfg)], tmp_path, "run1.log") as agent:
                await _until(lambda: module.current_a > 20.0, 90.0, "charging")
                await csms.wait_for("TransactionEvent", 1)
                await csms.stop()  # the central system goes away
                await asyncio.sleep(12.0)  # Updated events (5 s) and a checkpoint (10 s)
                gun.safety.module = None  # the board's trip does not reach the module
                module._put("watchdog_timeout", 65535)  # nor does its own watchdog
                agent.kill()
                # SIGKILL is reaped once the process leaves the kernel; one clean-clone CI
                # run saw that take over 10 s (a ledger fsync on a busy disk?): 30 s.
                await asyncio.get_running_loop().run_in_executor(None, agent.wait, 30)
            await asyncio.sleep(1.0)
            assert module._get("output_enable") == 1, "the plant must still be on"
            assert gun.link is not None
            poll = gun.link.poll

            def spy(t: float) -> Any:
                items = poll(t)
                if not first_frame and any(not isinstance(i, LinkProblem | LinkNotice)
                                           for i in items):
                    first_frame.append((module._get("output_enable"),
                                        module._get("contactor_command")))
                return items

            gun.link.poll = spy  # type: ignore[method-assign]
            await csms.start(csms_port)
            with process(["run", "--config", str(cfg)], tmp_path, "run2.log") as agent:
                await _until(lambda: any(e["event_type"] == "Ended"
                                         for e in csms.of("TransactionEvent")), 60.0,
                             "the replayed end")
                # The car still plugged in is greeted again (CHM): a new session.
                await _until(lambda: bool(first_frame), 20.0, "the new agent's first frame")
                agent.send_signal(signal.SIGTERM)
                await asyncio.get_running_loop().run_in_executor(None, agent.wait, 10)
        finally:
            stop.set()
            await world
            await pile.close()
            await csms.stop()

    asyncio.run(body())
    output = (tmp_path / "run2.log").read_text()
    assert first_frame == [(0.0, 0.0)], (first_frame, output[-2000:])
    assert "closed a session left open" in output, output[-2000:]
    # The I/O board tripped when the killed agent's heartbeat stopped; the new one re-arms
    # it (nothing at stake), so the gun is usable again without a visit.
    assert "notice safety_trip_rearmed" in output, output[-2000:]
    sessions = _ledger_sessions(tmp_path)
    killed = [s for s in sessions if s["stop_reason"] == "agent restarted"]
    assert len(killed) == 1 and float(killed[0]["to_vehicle_kwh"] or 0) > 0, sessions
    events = csms.of("TransactionEvent")
    tx = events[0]["transaction_info"]["transaction_id"]
    mine = [e for e in events if e["transaction_info"]["transaction_id"] == tx]
    assert [e["seq_no"] for e in mine] == list(range(len(mine))), mine
    assert [e["event_type"] for e in mine][-1] == "Ended", mine
    assert mine[-1]["transaction_info"]["stopped_reason"] == "PowerLoss", mine[-1]
    assert any(e["event_type"] == "Updated" for e in mine), mine  # queued while away


async def _mute_central_system(seen: asyncio.Event) -> asyncio.Server:
    """A central system that accepts the WebSocket upgrade (RFC 6455 §4.2.2) and then says
    nothing more: no CALLRESULT, and no Close frame in answer to the agent's."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Protocol: ocpp2.1\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        await writer.drain()
        seen.set()
        while await reader.read(4096):  # everything the agent sends, unanswered
            pass

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_a_central_system_that_never_answers_close_does_not_hold_the_exit(
        tmp_path: Path) -> None:
    """SIGTERM with the OCPP link up to a central system that never answers the closing
    handshake: the agent drops the connection after its close timeout and exits 0 within
    the 5 s budget (websockets' default wait is 10 s; the soak saw an agent still alive 15 s
    after SIGTERM)."""
    async def body() -> tuple[int | None, float, str]:
        seen = asyncio.Event()
        server = await _mute_central_system(seen)
        port = server.sockets[0].getsockname()[1]
        cfg = _pile_toml(tmp_path, 1, ocpp_port=port)
        try:
            with process(["run", "--config", str(cfg)], tmp_path, "run.log") as agent:
                await asyncio.wait_for(seen.wait(), 20.0)
                await asyncio.sleep(1.0)
                agent.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                rc = await asyncio.get_running_loop().run_in_executor(None, agent.wait, 20)
                took = time.monotonic() - t0
        finally:
            server.close()
        return rc, took, (tmp_path / "run.log").read_text()

    rc, took, output = asyncio.run(body())
    assert rc == 0, output[-3000:]
    assert took <= 5.0, (took, output[-2000:])
