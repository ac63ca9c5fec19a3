"""`pile-agent run` as the separate process it is in the field, against simulated hardware
on loopback: the served pile (`pile-agent hil serve`, or hil/served_pile.py in this
process where the test must reach into the hardware), the hil central system and a site
EMS over SunSpec Modbus TCP.

- Two guns, car after car: >= 3 sessions on each, one of them V2G (discharging for the
  EMS's pile-level WSet), one transaction per session on the right EVSE, the EMS reading
  both guns' 714 ports between and during sessions.
- SIGTERM during a discharge: <= 5 A within 1 s, exit 0 within 5 s, the session in the
  ledger as stopped by the agent.
- kill -9 and restart: the output off before the first CAN frame of the new process, the
  open session closed ("agent restarted"), the outbox replayed with an Ended event.
"""

from __future__ import annotations

import asyncio
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
from hil.soak import PASSWORD, SiteEms, pile_toml, process


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


def test_two_guns_serve_car_after_car_with_ocpp_and_the_ems(tmp_path: Path) -> None:
    ems_port, csms = free_port(), Csms(password=PASSWORD)
    reads: list[tuple[float, int, int]] = []

    async def body() -> tuple[int | None, str]:
        csms_port = await csms.start()
        cfg = _pile_toml(tmp_path, 2, ems_port, csms_port)
        stop = asyncio.Event()
        with process(["hil", "serve", "--config", str(cfg), "--seed", "5",
                      "--v2g-share", "0.5", "--stay-s", "15"], tmp_path, "serve.log"), \
                process(["run", "--config", str(cfg)], tmp_path, "run.log") as agent:
            site = SiteEms(ems_port, 2, discharge_w=20_000.0)
            ems = asyncio.create_task(site.run(stop))
            deadline = time.monotonic() + 240.0
            try:
                while time.monotonic() < deadline and agent.poll() is None:
                    ended = [e["evse"]["id"] for e in csms.of("TransactionEvent")
                             if e["event_type"] == "Ended"]
                    if all(ended.count(n) >= 3 for n in (1, 2)):
                        break
                    await asyncio.sleep(0.5)
            finally:
                stop.set()
                await ems
                reads.extend(site.reads)
            agent.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            rc = await asyncio.get_running_loop().run_in_executor(None, agent.wait, 15)
            took = time.monotonic() - t0
        await csms.stop()
        return rc, f"exit after SIGTERM in {took:.2f} s"

    rc, took = asyncio.run(body())
    output = (tmp_path / "run.log").read_text()
    assert rc == 0, (took, output[-3000:])
    assert float(took.split()[-2]) <= 5.0, took
    events = csms.of("TransactionEvent")
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_tx.setdefault(e["transaction_info"]["transaction_id"], []).append(e)
    per_evse: dict[int, int] = {}
    for tx, evs in by_tx.items():
        evse = {e["evse"]["id"] for e in evs}
        assert len(evse) == 1, (tx, evse)  # a transaction stays on its EVSE
        assert [e["seq_no"] for e in evs] == list(range(len(evs))), tx
        assert evs[0]["event_type"] == "Started", tx
        per_evse[evse.pop()] = per_evse.get(evs[0]["evse"]["id"], 0) + 1
    assert per_evse.get(1, 0) >= 3 and per_evse.get(2, 0) >= 3, (per_evse, output[-3000:])
    assert len(csms.of("BootNotification")) == 1
    statuses = {(s["evse_id"], s["connector_status"]) for s in csms.of("StatusNotification")}
    assert {(1, "Occupied"), (2, "Occupied"), (1, "Available"), (2, "Available")} <= statuses
    # One ledger record per transaction; at least one V2G session discharged.
    sessions = _ledger_sessions(tmp_path)
    assert len(sessions) == len(by_tx), (len(sessions), len(by_tx))
    assert any(float(s["from_vehicle_kwh"] or 0) > 0 for s in sessions), sessions
    # The EMS read both ports, idle and energising, for the whole run.
    for gun in (1, 2):
        states = {st for _, n, st in reads if n == gun}
        assert {0, 1} <= states and -1 not in states, (gun, states)


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
                await asyncio.get_running_loop().run_in_executor(None, agent.wait, 10)
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
