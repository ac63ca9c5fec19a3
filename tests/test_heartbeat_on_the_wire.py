"""I15 seen from the wire (issue 25): the safety controller's heartbeat as a board we did
not write receives it. The I/O board and the IMD here are pymodbus's own plain register
server (not hil/safety_io_sim.py), their registers written from the documented layout
(io_board_map.toml's header contract: the agent writes an incrementing `heartbeat` at
least every 100 ms; no change for `heartbeat_timeout` opens K1/K2 in hardware). While the
service charges a car, the heartbeat never stands still for the armed timeout; once the
gun's core fails (an internal error, I15) it stands still, so the board's own watchdog
would open K1/K2."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from typing import Any

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from agent.core.states import State
from agent.runtime.config import parse_config
from agent.runtime.pile_service import PileService
from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile, free_port

CAR = VehicleConfig(start_soc_pct=40.0, target_soc_pct=90.0)
IO_UNIT, IMD_UNIT = 2, 3
HEARTBEAT, HEARTBEAT_TIMEOUT = 0, 1  # addresses, io_board_map.toml
# Inputs (address 11): E-stop loop closed, door closed, gun locked = bits 0-2. CC1 (12) in
# 0.01 V: 4.00 V, a plugged gun (GB/T 18487.1 Annex B). PT1000s (8-10) in 0.1 ohm: 1116.7
# ohm is 30 degC. The IMD: 5,000 kOhm (uint32 at 8-9), status 1 = measurement valid.
IO_WORDS = {8: 11167, 9: 11167, 10: 11167, 11: 0b111, 12: 400}
IMD_WORDS = {8: 0, 9: 5000, 10: 1}


def _block(words: dict[int, int]) -> ModbusSequentialDataBlock:
    values = [0] * 32
    for address, word in words.items():
        values[address] = word
    return ModbusSequentialDataBlock(1, values)  # pymodbus 3.16: 1 is register 0


class HeartbeatTap:
    """Every write the board receives, seen at the PDU (the server's trace hook): when the
    heartbeat's value changed, and what the timeout was armed with."""

    def __init__(self) -> None:
        self.changes: list[float] = []
        self.last: int | None = None
        self.armed_ms: int | None = None

    def __call__(self, sending: bool, pdu: Any) -> Any:
        address = getattr(pdu, "address", None)
        values = getattr(pdu, "registers", None)
        if not sending and getattr(pdu, "dev_id", None) == IO_UNIT and values \
                and pdu.function_code == 16:
            for offset, value in enumerate(values):
                if address + offset == HEARTBEAT and value != self.last:
                    self.last = value
                    self.changes.append(time.monotonic())
                if address + offset == HEARTBEAT_TIMEOUT:
                    self.armed_ms = value
        return pdu


def test_the_heartbeat_stands_still_only_after_the_core_fails() -> None:
    tap = HeartbeatTap()

    async def main() -> None:
        context = ModbusServerContext(devices={
            IO_UNIT: ModbusDeviceContext(hr=_block(IO_WORDS)),
            IMD_UNIT: ModbusDeviceContext(hr=_block(IMD_WORDS))}, single=False)
        port = free_port()
        board = ModbusTcpServer(context, address=("127.0.0.1", port), trace_pdu=tap)
        serving = asyncio.create_task(board.serve_forever())
        pile = LoopbackPile([CAR])
        devices = await pile.start()
        devices["safety_bus"] = {"enabled": True, "transport": "tcp", "host": "127.0.0.1",
                                 "port": port, "io_unit": IO_UNIT, "imd_unit": IMD_UNIT}
        service = PileService(parse_config({**devices, "status": {"enabled": False},
                                            "ledger": {"path": ":memory:"}}),
                              out=io.StringIO())
        run = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.started.wait(), 20.0)
            gun = service.gun(1)
            deadline = time.monotonic() + 40.0
            while gun.session.state is not State.CHARGING:
                assert time.monotonic() < deadline, gun.session.state
                await asyncio.sleep(0.05)
            armed_ms = tap.armed_ms
            assert armed_ms is not None and 100 < armed_ms <= 1000, armed_ms  # at connect
            start = time.monotonic()
            await asyncio.sleep(3.0)
            beats = [t for t in tap.changes if t >= start]
            gaps = [b - a for a, b in zip([start, *beats], [*beats, time.monotonic()],
                                          strict=True)]
            assert len(beats) >= 10 and max(gaps) < armed_ms / 1000, (len(beats), max(gaps))

            # One internal error, once: the steps after it run normally, and the broken
            # core still must not feed the watchdog (I15).
            control = gun.session._control
            raised: list[bool] = []

            def boom() -> None:
                if not raised:
                    raised.append(True)
                    raise RuntimeError("injected")
                control()

            gun.session._control = boom  # type: ignore[method-assign]
            deadline = time.monotonic() + 5.0
            while gun.session.state is not State.FAULT:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            failed = time.monotonic()
            await asyncio.sleep(3 * armed_ms / 1000)
            late = [t for t in tap.changes if t > failed + 0.2]
            assert late == [], f"heartbeat moved {len(late)} times after the core failed"
        finally:
            service.stop("test over")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, 10.0)
            await pile.close()
            await board.shutdown()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serving

    asyncio.run(main())
