"""The pile's service in one process against the loopback pile (wall-clock time): car
after car through CC1, one gun's fault or exception leaves the other charging, and the
systemd notify protocol (READY, STATUS, WATCHDOG withheld when a gun's loop hangs)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.core.states import State
from agent.ledger.store import Ledger
from agent.runtime.config import parse_config
from agent.runtime.gun_service import HANG_S
from agent.runtime.pile_service import PileService
from agent.runtime.realtime import install_signals
from agent.runtime.sd_notify import SdNotifier
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.loopback_pile import LoopbackPile
from tests.served_service import until as _until

LONG = VehicleConfig(start_soc_pct=40.0, target_soc_pct=90.0)
SHORT = VehicleConfig(start_soc_pct=79.6, target_soc_pct=80.0)


async def _with_service(tmp_path: Path, cars: list[VehicleConfig],
                        body: Callable[[PileService, LoopbackPile], Awaitable[Any]],
                        notifier: SdNotifier | None = None,
                        extra: dict[str, Any] | None = None) -> tuple[Any, str, int]:
    pile = LoopbackPile(cars)
    devices = await pile.start()
    config = parse_config({**devices, "ledger": {"path": str(tmp_path / "ledger.sqlite")},
                           **(extra or {})})
    out = io.StringIO()
    service = PileService(config, out=out, notifier=notifier)
    run = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.started.wait(), 20.0)
        result = await body(service, pile)
        assert not run.done(), out.getvalue()  # the process never stopped on its own
        service.stop("test over")
        rc = await asyncio.wait_for(run, 10.0)
    finally:
        if not run.done():
            run.cancel()
        await pile.close()
    return result, out.getvalue(), rc


def _charging(service: PileService, number: int) -> bool:
    s = service.gun(number).session
    return s.state is State.CHARGING and s.act.current_a > 10.0


def test_car_after_car_on_one_gun(tmp_path: Path) -> None:
    """CC1 on the I/O board: a finished car stays until it is unplugged (12 V); the next
    car's plug-in (4 V) starts a new session; each is in the ledger."""

    async def body(service: PileService, pile: LoopbackPile) -> list[str]:
        gun = service.gun(1)
        seen = []
        for car in range(2):
            await _until(lambda n=car: len(service.reports[1]) > n, 60.0,  # type: ignore[misc]
                         f"session {car + 1}")
            await asyncio.sleep(0.5)
            assert gun.session.state is State.FINISHED and gun.status() == "Occupied"
            pile.safety.cc1_v = 12.0  # unplugged: back in the holster
            await _until(lambda: gun.session.state is State.IDLE, 5.0, "idle")
            seen.append(gun.status())
            pile.guns[0].bms = BmsSimulator(SHORT)
            pile.safety.cc1_v = 4.0
        return seen

    seen, output, rc = asyncio.run(_with_service(tmp_path, [SHORT], body))
    assert rc == 0 and seen == ["Available", "Available"], output
    assert output.count("idle -> handshake: vehicle connected") >= 2, output
    ledger = Ledger(tmp_path / "ledger.sqlite", read_only=True)
    try:
        sessions = ledger.sessions()
    finally:
        ledger.close()
    assert [s["outcome"] for s in sessions][:2] == ["finished", "finished"], sessions


def test_a_fault_on_one_gun_leaves_the_other_charging(tmp_path: Path) -> None:
    async def body(service: PileService, pile: LoopbackPile) -> list[float]:
        await _until(lambda: _charging(service, 1) and _charging(service, 2), 60.0,
                     "both guns charging")
        pile.guns[0].safety.estop_pressed = True
        await _until(lambda: service.gun(1).session.state is State.FAULT, 3.0, "gun 1 fault")
        currents = []
        for _ in range(20):  # two seconds after the fault
            await asyncio.sleep(0.1)
            currents.append(pile.guns[1].module.current_a)
        assert service.gun(1).status() == "Faulted"
        assert pile.guns[0].module._get("output_enable") == 0
        return currents

    currents, output, rc = asyncio.run(_with_service(tmp_path, [LONG, LONG], body))
    assert rc == 0, output
    assert min(currents) > 10.0, (currents, output)  # gun 2 never stopped
    assert "gun 1: charging -> fault" in output and "gun 2: charging -> fault" not in output


def test_an_exception_in_one_guns_step_is_that_guns_fault(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one gun's step: logged with its traceback, that gun's session faults (output
    off, K1/K2 open), its loop goes on; the other gun and the process carry on."""

    async def body(service: PileService, pile: LoopbackPile) -> tuple[list[float], bool]:
        await _until(lambda: _charging(service, 1) and _charging(service, 2), 60.0,
                     "both guns charging")
        gun = service.gun(1)
        real = gun.runtime.step
        raised = []

        async def broken(t: float, events: Any = ()) -> None:
            if not raised:
                raised.append(t)
                raise RuntimeError("injected: a bug in gun 1's step")
            await real(t, events)

        gun.runtime.step = broken  # type: ignore[method-assign]
        await _until(lambda: gun.session.state is State.FAULT, 3.0, "gun 1 fault")
        await _until(lambda: pile.guns[0].module._get("output_enable") == 0, 3.0,
                     "gun 1 output off")
        currents = []
        for _ in range(20):
            await asyncio.sleep(0.1)
            currents.append(pile.guns[1].module.current_a)
        return currents, gun.alive(service.clock.now())

    with caplog.at_level(logging.ERROR, logger="pile_agent.gun"):
        (currents, alive), output, rc = asyncio.run(
            _with_service(tmp_path, [LONG, LONG], body))
    assert rc == 0 and alive, output
    assert min(currents) > 10.0, currents
    assert "gun 1: charging -> fault: runtime driver failed" in output, output
    record = next(r for r in caplog.records if "exception in the control step" in r.message)
    assert record.exc_info is not None and "injected" in str(record.exc_info[1])


def test_sd_notify_ready_status_and_a_watchdog_withheld_when_a_loop_hangs(
        tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    messages: list[tuple[float, str]] = []

    def read() -> None:
        while True:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except BlockingIOError:
                return

    notifier = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    assert notifier.watchdog_s == 1.0

    async def reader(stop: asyncio.Event) -> None:
        while not stop.is_set():  # each message stamped when it arrives
            read()
            await asyncio.sleep(0.02)

    async def body(service: PileService, pile: LoopbackPile) -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(reader(stop))
        await _until(lambda: _charging(service, 1), 60.0, "gun 1 charging")
        gun = service.gun(2)

        async def hang(t: float, events: Any = ()) -> None:
            await asyncio.Event().wait()  # never set: this gun's loop is stuck here

        gun.runtime.step = hang  # type: ignore[method-assign]
        gun.wake.set()
        hung_at = time.monotonic()
        await asyncio.sleep(HANG_S + 2.5)
        stop.set()
        await task
        return hung_at, pile.guns[0].module.current_a

    try:
        (hung_at, current), output, rc = asyncio.run(
            _with_service(tmp_path, [LONG, LONG], body, notifier))
        read()
    finally:
        sock.close()
    assert rc == 0, output
    texts = [m for _, m in messages]
    assert texts[0].startswith("READY=1\nSTATUS=gun 1: "), texts[:2]
    before = [t for t, m in messages if "WATCHDOG=1" in m and t < hung_at]
    after = [t for t, m in messages if "WATCHDOG=1" in m and t > hung_at + HANG_S + 1.0]
    assert len(before) >= 2, texts  # fed at half the watchdog period while all was well
    assert after == [], texts  # not fed once gun 2's loop hung
    late_status = [m for t, m in messages if t > hung_at + HANG_S + 1.0 and "STATUS=" in m]
    assert late_status and "gun 1: occupied, charging" in late_status[0], late_status
    assert current > 10.0  # gun 1 went on charging meanwhile
    assert "gun 2: control loop hung; watchdog withheld" in output
    assert any(m.startswith("STOPPING=1") for m in texts), texts


def test_a_gun_out_of_service_serves_no_car(tmp_path: Path) -> None:
    """`in_service = false`: a car plugged in is not served (Unavailable) until the gun is
    put back in service (what OCPP ChangeAvailability Operative does)."""

    async def body(service: PileService, pile: LoopbackPile) -> list[str]:
        gun = service.gun(1)
        await asyncio.sleep(2.0)
        seen = [gun.status(), gun.session.state.value]
        gun.set_in_service(True)
        await _until(lambda: gun.session.state is not State.IDLE, 5.0, "a session")
        return seen

    seen, output, rc = asyncio.run(_with_service(tmp_path, [SHORT], body,
                                                 extra={"gun": {"in_service": False}}))
    assert rc == 0 and seen == ["Unavailable", "idle"], (seen, output)


def test_a_signal_stops_in_order_and_a_second_one_exits_at_once() -> None:
    """SIGTERM: the orderly stop (the service's stop reason names it); SIGINT after it: the
    exit at once with 128 + the signal, as a shell would report it."""

    async def body() -> tuple[str, list[int]]:
        service = PileService(parse_config({}), out=io.StringIO())
        codes: list[int] = []
        install_signals(service, exit_now=codes.append)
        loop = asyncio.get_running_loop()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.2)
            first = service.stop_reason
            assert codes == []
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.2)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return first, codes

    reason, codes = asyncio.run(body())
    assert reason == "agent stopped (SIGTERM)" and codes == [128 + signal.SIGINT]
