"""A virtual power plant's dispatch client for the SunSpec Modbus TCP server of the pile.

It does what an aggregator's field gateway does: reads the map (walks the models), writes
an active-power setpoint (704 WSetEna/WSetMod/WSet, with a reversion time WSetRvrtTms),
refreshes it, releases it, beats the controller heartbeat (715), and can lose its link.
SunSpec's sign: + = injection (discharge). Over a real socket; it knows nothing of the
agent but the map file.
"""

from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient

from drivers.sunspec.codec import Layout


class VppError(RuntimeError):
    """The pile refused a write or did not answer."""


class ModbusVpp:
    def __init__(self, lay: Layout, host: str = "127.0.0.1", port: int = 502,
                 unit_id: int = 1) -> None:
        self.layout = lay
        self.client = AsyncModbusTcpClient(host, port=port, timeout=2)
        self.unit_id = unit_id
        self.writes = 0
        self.connected = False

    async def connect(self) -> None:
        self.connected = bool(await self.client.connect())
        if not self.connected:
            raise VppError("cannot connect to the pile's SunSpec server")

    def drop(self) -> None:
        """The link is lost: no goodbye, no more writes."""
        self.client.close()
        self.connected = False

    async def _write(self, name: str, words: list[int], model: int | None = None) -> None:
        rq = await self.client.write_registers(self.layout.address_of(name, model), words,
                                               device_id=self.unit_id)
        if rq.isError():
            raise VppError(f"write {name} refused: {rq}")
        self.writes += 1

    async def dispatch(self, injection_w: int, revert_s: int) -> None:
        """WSet = injection_w (+ discharge to the grid), valid for revert_s."""
        raw = injection_w & 0xFFFF_FFFF
        await self._write("WSetEna", [1, 1, raw >> 16, raw & 0xFFFF])  # Ena, Mod, WSet
        await self._write("WSetRvrtTms", [revert_s >> 16, revert_s & 0xFFFF])

    async def release(self) -> None:
        await self._write("WSetEna", [0])

    async def heartbeat(self, n: int) -> None:
        await self._write("ControllerHb", [(n >> 16) & 0xFFFF, n & 0xFFFF])

    async def read_power_w(self) -> float | None:
        """701 W as the VPP sees it (+ = injection), None if not implemented."""
        a = self.layout.address_of("W", 701)
        sf_a = self.layout.address_of("W_SF", 701)
        rr = await self.client.read_holding_registers(a, count=sf_a - a + 1,
                                                      device_id=self.unit_id)
        if rr.isError():
            raise VppError(f"read W refused: {rr}")
        raw, sf = rr.registers[0], rr.registers[-1]
        if raw == 0x8000:
            return None
        raw = raw - 0x10000 if raw >= 0x8000 else raw
        sf = sf - 0x10000 if sf >= 0x8000 else sf
        return float(raw * 10.0 ** sf)
