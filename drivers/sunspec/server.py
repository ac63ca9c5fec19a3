"""The SunSpec Modbus TCP server the site EMS / VPP talks to (pymodbus).

Reads are answered from the pile's live snapshot, encoded by `codec.encode_image`, at most
IMAGE_MAX_AGE_S old (an EMS that reads point by point costs one encoding per 100 ms, not
one per register; a write is seen by the next read). Writes are taken only from the
allowed client addresses (others get exception 01, ILLEGAL FUNCTION: the function is not
available to them), must cover whole writable points with values in range (02 / 03),
and become upstream events through `EmsControls`; `events(t)` hands them to the runtime.
Bound to 127.0.0.1 unless the operator configures another address.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.core.events import Event
from drivers.sunspec.codec import Layout, Snapshot, decode_write, encode_image
from drivers.sunspec.ems_controls import EmsControls

_FC_READS = (3, 4)
_FC_WRITES = (6, 16)  # write single register, write multiple registers
_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("sunspec_peer", default="")

SnapshotSource = Callable[[], tuple[Snapshot, Sequence[Snapshot]]]
# Information, not control: a reading this old is as good as a fresh one to an EMS that
# polls every second or so (the module's own figures are up to 100 ms old).
IMAGE_MAX_AGE_S = 0.1


class _PeerAwareHandler(ServerRequestHandler):
    """Runs each request with its client's address at hand (pymodbus's datastore
    callbacks do not receive it)."""

    async def handle_request(self) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        token = _PEER.set(str(peer[0]) if peer else "")
        try:
            await super().handle_request()  # type: ignore[no-untyped-call]
        finally:
            _PEER.reset(token)


class _Server(ModbusTcpServer):
    def callback_new_connection(self) -> _PeerAwareHandler:
        return _PeerAwareHandler(  # type: ignore[no-untyped-call]
            self, self.trace_packet, self.trace_pdu, self.trace_connect)


class SunSpecServer:
    def __init__(self, lay: Layout, controls: EmsControls, snapshot: SnapshotSource,
                 clock: Callable[[], float], *, allowed_writers: Sequence[str] = ("127.0.0.1",),
                 unit_id: int = 1) -> None:
        self.layout = lay
        self.controls = controls
        self.snapshot = snapshot
        self.clock = clock
        self.allowed_writers = frozenset(allowed_writers)
        self.unit_id = unit_id
        # (peer, address, why), the latest only: a flood of refused writes stays bounded.
        self.refused: deque[tuple[str, int, str]] = deque(maxlen=200)
        self._server: Any = None
        # Called after each accepted write, so the runtime can act on it at once.
        self.on_write: Callable[[], None] | None = None
        self._image: tuple[float, list[int]] | None = None  # (when, registers)

    async def start(self, host: str = "127.0.0.1", port: int = 502) -> int:
        """Serve; port=0 picks a free port, which is returned."""
        device = SimDevice(id=self.unit_id, action=self._action, simdata=[
            SimData(self.layout.base, count=self.layout.size, datatype=DataType.REGISTERS)])
        self._server = _Server(device, address=(host, port))
        await self._server.serve_forever(background=True)
        return int(self._server.transport.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def events(self, t: float) -> list[Event]:
        return self.controls.poll(t)

    def image(self) -> list[int]:
        t = self.clock()
        # On the pile's clock (a simulation's runs faster than the wall); a clock that has
        # not moved (a test's fixed one) always gets a fresh image.
        if self._image is not None and 0.0 < t - self._image[0] < IMAGE_MAX_AGE_S:
            return self._image[1]
        values, ports = self.snapshot()
        c = self.controls
        merged = {**values,
                  "wset_enabled": 1.0 if c.wset_enabled else 0.0, "wset_mode": 1.0,
                  "wset_w": c.wset_w, "wset_revert_w": 0.0, "wset_enabled_revert": 0.0,
                  "wset_revert_s": c.revert_s or c.settings.default_validity_s,
                  "wset_remaining_s": round(c.remaining_s(t)),
                  "charge_limit_w": min(c.charge_limit_w, float(values.get("rated_charge_w")
                                                                or 0.0)),
                  "discharge_limit_w": min(c.discharge_limit_w, float(
                      values.get("rated_discharge_w") or 0.0)),
                  "op_ctl": float(c.op_ctl), "droop_enabled": 1.0 if c.droop_enabled else 0.0,
                  "droop_dead_band_hz": c.dead_band_hz, "droop": c.droop,
                  "controller_heartbeat": float(c.controller_hb or 0)}
        image = encode_image(self.layout, merged, ports)
        self._image = (t, image)
        return image

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int],
                      set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if function_code not in (*_FC_READS, *_FC_WRITES):
            # Coils, discrete inputs and the rest: the map is registers only (a coil read
            # once answered with the bits of "SunS").
            return ExcCodes.ILLEGAL_FUNCTION
        if function_code in _FC_READS or set_values is None:
            current_registers[: self.layout.size] = self.image()
            return None
        peer = _PEER.get()
        if peer not in self.allowed_writers:
            self.refused.append((peer, address, "not an allowed writer"))
            return ExcCodes.ILLEGAL_FUNCTION
        written = decode_write(self.layout, address, [int(v) for v in set_values])
        if isinstance(written, int):
            self.refused.append((peer, address, f"exception {written}"))
            return ExcCodes(written)
        self._image = None  # the next read shows the write
        refused = self.controls.on_write(self.clock(), written)
        if refused is not None:
            self.refused.append((peer, address, f"exception {refused}"))
            return ExcCodes(refused)
        if self.on_write is not None:
            self.on_write()
        return None
