"""Driver <-> simulator over real Modbus: TCP on loopback and RTU over a pty pair.

Async tests run with asyncio.run() inside plain test functions (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import Awaitable, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes

from agent.core.commands import SetBleeder, SetContactors, SetModuleOutput, StartInsulationTest
from agent.core.events import DriverError, Event, ModuleLinkLost, ModuleStatus
from drivers.power_module.codec import decode_status, decode_status_payload
from drivers.power_module.link import LinkConfig, ModuleLink, RtuTarget, TcpTarget
from drivers.power_module.owner import ModuleBusOwner, MonotonicClock
from drivers.power_module.regmap import load_register_map
from hil.dc_link import TrivialBattery
from hil.module_sim import ModuleSim

MAP = load_register_map()
TIMEOUT_S = 0.3


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 20.0))


def owner_for(target: TcpTarget | RtuTarget, **config: float) -> ModuleBusOwner:
    link = ModuleLink(target, LinkConfig(request_timeout_s=TIMEOUT_S, **config))  # type: ignore[arg-type]
    return ModuleBusOwner(link, backoff_min_s=0.05, backoff_max_s=0.2)


async def lockstep(owner: ModuleBusOwner, sim: ModuleSim, battery: TrivialBattery | None,
                   t: float, seconds: float, dt: float = 0.1) -> tuple[float, list[Event]]:
    events: list[Event] = []
    for _ in range(round(seconds / dt)):
        events += await owner.service(t)
        sim.step(dt, battery)
        t += dt
    return t, events


def statuses(events: list[Event]) -> list[ModuleStatus]:
    return [e for e in events if isinstance(e, ModuleStatus)]


def test_commands_reach_the_sim_and_status_comes_back_signed() -> None:
    async def body() -> None:
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            owner.submit(SetContactors(True))
            owner.submit(SetModuleOutput(True, 450.0, 120.0))
            t, events = await lockstep(owner, sim, battery, 0.0, 2.0)
            assert sim.regs[MAP["watchdog_timeout"].address] == 1000  # armed by connect()
            assert sim.regs[MAP["setpoint_current"].address] == 1200
            last = statuses(events)[-1]
            assert last.contactors_closed and abs(last.output_current_a - 120.0) < 1.0
            assert last.gun_voltage_v > battery.open_circuit_voltage_v  # OCV + I*R
            assert last.capability_current_a == 250.0 and last.fault_word == 0

            owner.submit(SetModuleOutput(True, 300.0, -60.0))  # V2G
            t, events = await lockstep(owner, sim, battery, t, 2.0)
            last = statuses(events)[-1]
            assert abs(last.output_current_a + 60.0) < 1.0
            assert sim.regs[MAP["mode"].address] == 2

            owner.submit(SetModuleOutput(False, 0.0, 0.0))
            owner.submit(SetContactors(False))
            owner.submit(SetBleeder(True))
            t, events = await lockstep(owner, sim, None, t, 0.5)
            assert statuses(events)[-1].output_current_a == 0.0
            assert not statuses(events)[-1].contactors_closed
            assert sim.regs[MAP["bleeder_command"].address] == 1
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_only_changed_registers_are_written() -> None:
    async def body() -> None:
        sim = ModuleSim()
        writes = _recording(sim)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            await owner.service(0.0)  # connect + watchdog + first poll
            writes.clear()
            owner.submit(SetModuleOutput(True, 400.0, 10.0))
            owner.submit(SetContactors(True))
            await owner.service(0.1)
            # The first command is written whole: the module's read-back of a register is
            # not what it was told (mode reads charge, and is written all the same). Two
            # commands whose registers are contiguous go out as one request.
            assert writes == [(0, [1, 4000, 100, 1, 1])]
            writes.clear()
            owner.submit(SetModuleOutput(True, 400.0, 20.0))
            owner.submit(SetContactors(True))  # unchanged: not written
            await owner.service(0.2)
            assert writes == [(2, [200])]
            writes.clear()
            owner.submit(StartInsulationTest(500.0))  # a trigger: written every time
            owner.submit(StartInsulationTest(500.0))
            await owner.service(0.3)
            assert writes == [(6, [5000, 1])]
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_invalid_command_becomes_driver_error_not_a_write() -> None:
    async def body() -> None:
        sim = ModuleSim()
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            owner.submit(SetModuleOutput(True, 2000.0, 10.0))
            events = await owner.service(0.0)
            errors = [e for e in events if isinstance(e, DriverError)]
            assert errors and "setpoint_voltage" in errors[0].detail
            assert statuses(events) and sim.regs[MAP["output_enable"].address] == 0
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_insulation_result_is_reported_in_ohm() -> None:
    async def body() -> None:
        sim = ModuleSim()
        sim.insulation_ohm = 480e3
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            owner.submit(SetModuleOutput(True, 500.0, 2.0))
            owner.submit(SetContactors(True))
            owner.submit(StartInsulationTest(500.0))
            _, events = await lockstep(owner, sim, None, 0.0, 1.6)
            results = [s.insulation_ohm for s in statuses(events) if s.insulation_ohm is not None]
            assert results and results[-1] == 480e3
            assert statuses(events)[0].insulation_ohm is None
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_silence_is_reported_within_the_timeout_and_trips_the_sim_watchdog() -> None:
    async def body() -> None:
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            owner.submit(SetContactors(True))
            owner.submit(SetModuleOutput(True, 450.0, 50.0))
            t, _ = await lockstep(owner, sim, battery, 0.0, 1.0)
            sim.silent = True
            started = time.monotonic()
            events = await owner.service(t)
            elapsed = time.monotonic() - started
            assert [type(e) for e in events] == [ModuleLinkLost]
            assert elapsed < TIMEOUT_S + 0.2
            for _ in range(11):  # 1.1 s of simulated silence > the 1000 ms watchdog
                sim.step(0.1, battery)
            assert not sim.output_on and sim.current_a == 0.0
            sim.silent = False
            t, events = await lockstep(owner, sim, battery, t + 1.1, 0.5)
            last = statuses(events)[-1]
            assert last.fault_word & MAP["fault_word"].bit("watchdog_expired")
            assert last.output_current_a == 0.0
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_reconnects_after_the_server_restarts() -> None:
    async def body() -> None:
        sim = ModuleSim()
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            assert statuses(await owner.service(0.0))
            await server.stop()
            await asyncio.sleep(0.05)
            lost = await owner.service(0.1)
            assert [type(e) for e in lost] == [ModuleLinkLost]
            assert [type(e) for e in await owner.service(0.2)] == [ModuleLinkLost]  # refused
            owner.submit(SetContactors(True))  # queued while down, written after reconnect
            sim2 = ModuleSim()
            server, _ = await sim2.start_tcp(port=port)
            events: list[Event] = []
            t = 0.3
            while not statuses(events) and t < 3.0:
                events = await owner.service(t)
                t += 0.1
            assert statuses(events)
            assert sim2.regs[MAP["contactor_command"].address] == 1
            assert sim2.regs[MAP["watchdog_timeout"].address] == 1000
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_exception_response_is_link_lost() -> None:
    async def body() -> None:
        sim = ModuleSim(unit_id=1)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port), unit_id=7)
        try:
            events = await owner.service(0.0)
            # The watchdog write and the poll, each refused: each a ModuleLinkLost.
            assert events and all(isinstance(e, ModuleLinkLost) for e in events), events
            assert all("exception" in e.detail for e in events)  # type: ignore[union-attr]
            # An exception is an answer: the link stays up, no reconnect, no back-off.
            assert owner.link.connected
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_run_polls_in_real_time_and_writes_promptly() -> None:
    async def body() -> None:
        sim = ModuleSim()
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        owner.poll_period_s = 0.5
        events: list[Event] = []
        task = asyncio.create_task(owner.run(MonotonicClock(), events.append))
        try:
            await asyncio.sleep(0.1)
            assert len(statuses(events)) == 1
            owner.submit(SetContactors(True))
            await asyncio.sleep(0.05)  # a tenth of the poll period: submit() woke the owner
            assert sim.regs[MAP["contactor_command"].address] == 1
            assert len(statuses(events)) == 1
            await asyncio.sleep(0.5)
            assert len(statuses(events)) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await owner.close()
            await server.stop()

    run(body)


class PtyNullModem:
    """Two pty pairs whose masters are cross-connected: a null-modem cable between two paths."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.paths: list[str] = []
        self._masters: list[int] = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            self._fds += [master, slave]
            self._masters.append(master)
            self.paths.append(os.ttyname(slave))

    def _pump(self, src: int, dst: int) -> None:
        with contextlib.suppress(OSError):
            os.write(dst, os.read(src, 4096))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        a, b = self._masters
        loop.add_reader(a, self._pump, a, b)
        loop.add_reader(b, self._pump, b, a)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for master in self._masters:
            loop.remove_reader(master)
        for fd in self._fds:
            os.close(fd)


def test_rtu_over_a_pty_pair_full_cycle() -> None:
    async def body() -> None:
        modem = PtyNullModem()
        modem.start()
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server = await sim.start_rtu(modem.paths[0], baudrate=115200)
        owner = owner_for(RtuTarget(modem.paths[1], baudrate=115200))
        try:
            owner.submit(SetContactors(True))
            owner.submit(SetModuleOutput(True, 300.0, -40.0))
            _, events = await lockstep(owner, sim, battery, 0.0, 2.0)
            assert not [e for e in events if isinstance(e, ModuleLinkLost)]
            assert sim.regs[MAP["setpoint_current"].address] == 400
            assert abs(statuses(events)[-1].output_current_a + 40.0) < 1.0
            sim.silent = True  # RTU: a late answer must not be taken for the next request's
            assert [type(e) for e in await owner.service(2.0)] == [ModuleLinkLost]
            for _ in range(11):  # 1.1 s of simulated silence > the 1000 ms watchdog
                sim.step(0.1, battery)
            sim.silent = False
            t = 3.1
            t, events = await lockstep(owner, sim, battery, t, 1.0)
            assert statuses(events) and statuses(events)[-1].output_current_a == 0.0  # watchdog
        finally:
            await owner.close()
            await server.stop()
            modem.close()

    run(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_status_decoder_never_raises_on_random_bytes(payload: bytes) -> None:
    result = decode_status_payload(MAP, 1.0, payload)
    assert isinstance(result, ModuleStatus | DriverError)
    if isinstance(result, DriverError):
        assert result.source == "power_module" and result.detail


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**20), 2**20), min_size=len(MAP.span), max_size=len(MAP.span)))
def test_status_decoder_handles_any_word_values(words: list[int]) -> None:
    result = decode_status(MAP, 1.0, words)
    assert isinstance(result, ModuleStatus | DriverError)


def test_status_decoder_accepts_a_real_block() -> None:
    sim = ModuleSim()
    payload = b"".join(w.to_bytes(2, "big") for w in sim.regs)
    assert isinstance(decode_status_payload(MAP, 0.0, payload), ModuleStatus)
    bad = decode_status_payload(MAP, 0.0, payload[:-2])
    assert isinstance(bad, DriverError) and f"expected {len(MAP.span)}" in bad.detail


async def _charging_at(owner: ModuleBusOwner, sim: ModuleSim, battery: TrivialBattery,
                       amps: float) -> float:
    await owner.service(0.0)
    owner.submit(SetContactors(True))
    owner.submit(SetModuleOutput(True, 450.0, amps))
    t, _ = await lockstep(owner, sim, battery, 0.1, 1.0)
    assert sim.current_a > amps - 5.0, sim.current_a
    return t


def _recording(sim: ModuleSim) -> list[tuple[int, list[int]]]:
    writes: list[tuple[int, list[int]]] = []
    accept = sim.accept_write

    def recording(address: int, values: list[int]) -> ExcCodes | None:
        writes.append((address, values))
        return accept(address, values)

    sim.accept_write = recording  # type: ignore[method-assign]
    return writes


def test_a_lying_read_back_does_not_keep_a_stop_off_the_wire() -> None:
    """I16: the module reads back 0 for setpoint, output enable and K1/K2 while it delivers
    current; output off and K1/K2 open must still be written (they were skipped as
    'already held' when the link trusted the read-back)."""
    async def body() -> None:
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            t = await _charging_at(owner, sim, battery, 200.0)
            sim.lies_readback = True
            t, _ = await lockstep(owner, sim, battery, t, 0.3)
            assert sim.current_a > 150.0  # it delivers; its registers read 0
            owner.submit(SetModuleOutput(False, 0.0, 0.0))
            t, _ = await lockstep(owner, sim, battery, t, 0.3)
            assert sim.current_a == 0.0 and sim.regs[MAP["output_enable"].address] == 0
            owner.submit(SetContactors(False))
            await lockstep(owner, sim, battery, t, 0.3)
            assert sim.regs[MAP["contactor_command"].address] == 0 and not sim.contactors_closed
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_a_stop_the_module_does_not_hold_is_written_again() -> None:
    """I16: a module that drops a write of output off (its register snaps back to 1) gets
    it again after each status that shows it, and an honest one gets it once."""
    async def body() -> None:
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        writes = _recording(sim)
        accept = sim.accept_write
        enable = MAP["output_enable"].address

        def stubborn(address: int, values: list[int]) -> ExcCodes | None:
            result = accept(address, values)
            sim.firmware_sets("output_enable", 1)  # the firmware ignores the stop
            return result

        try:
            t = await _charging_at(owner, sim, battery, 100.0)
            writes.clear()
            owner.submit(SetModuleOutput(False, 0.0, 0.0))
            sim.accept_write = stubborn  # type: ignore[method-assign]
            t, _ = await lockstep(owner, sim, battery, t, 0.5)
            offs = [w for w in writes if w == (enable, [0])]
            assert len(offs) >= 4, writes  # the first, then again after every poll
            assert owner.link.reasserted >= 3
            sim.accept_write = accept  # type: ignore[method-assign]
            await lockstep(owner, sim, battery, t, 0.2)
            writes.clear()
            await lockstep(owner, sim, battery, t + 0.2, 0.5)
            assert writes == [], writes  # held now: nothing more
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_an_emergency_stop_is_one_request() -> None:
    """Output off and K1/K2 open commanded together reach the module in one FC16 write,
    so a link that answers late cannot hold back the second (module-slow)."""
    async def body() -> None:
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        writes = _recording(sim)
        try:
            t = await _charging_at(owner, sim, battery, 100.0)
            writes.clear()
            owner.submit(SetModuleOutput(False, 0.0, 0.0))
            owner.submit(SetContactors(False))
            await owner.service(t)
            assert writes == [(MAP["output_enable"].address, [0, 0])], writes
        finally:
            await owner.close()
            await server.stop()

    run(body)


def test_a_refused_write_is_tried_again_at_once() -> None:
    """A module that refuses every second request (exception 04): the stop is written
    within the same service, and the link is kept (no reconnect, no back-off)."""
    async def body() -> None:
        sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
        server, port = await sim.start_tcp()
        owner = owner_for(TcpTarget("127.0.0.1", port))
        try:
            t = await _charging_at(owner, sim, battery, 100.0)
            sim.refuse_every = 2
            for parity in range(2):  # whichever request the write falls on
                owner.submit(SetModuleOutput(True, 450.0, 100.0 - parity))
                await owner.service(t)
                owner.submit(SetModuleOutput(False, 0.0, 0.0))
                owner.submit(SetContactors(False))
                await owner.service(t)
                assert sim.regs[MAP["output_enable"].address] == 0
                assert sim.regs[MAP["contactor_command"].address] == 0
                assert owner.link.connected
                owner.submit(SetContactors(True))
                sim.requests += 1  # shift the parity for the next round
        finally:
            await owner.close()
            await server.stop()

    run(body)
