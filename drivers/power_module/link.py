"""ModuleLink: the power module over Modbus TCP or RTU, through a pymodbus async client.

Thin on purpose: it writes what the core commanded and reports what the module measured. It
does not retry, reconnect or schedule; ModuleBusOwner (owner.py) does that for one bus.

What reaches the wire is decided by what this link wrote and the module acknowledged, never by
the module's read-back of its own registers: a module whose read-back lies (0 where it holds a
setpoint, an enabled output, closed K1/K2) must not keep a stop from being written. A command
that makes the output safer (a lower current, output off, K1/K2 open) is re-asserted after
every status read that shows it not held: its register reads back otherwise, or the output
still carries current, or K1/K2 still read closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from agent.core import timing as T
from agent.core.events import DriverError, ModuleLinkLost, ModuleStatus
from drivers.modbus_stats import TimedClient
from drivers.power_module.codec import (
    MODE_CHARGE,
    ModuleCommand,
    command_readback,
    contiguous_runs,
    decode_status,
    encode_command,
)
from drivers.power_module.regmap import RegisterMap, load_register_map
from drivers.task_end import within

# 0.5 s: EVerest SerialCommHub's first-byte timeout (safety-limits.md §1.6); a healthy module
# answers a 28-word FC03 in ~7 ms at 115200 baud RTU (§4.2) or ~0.1 ms over loopback TCP (§4.3),
# so this only fires on a dead link, and several misses still fit before the watchdog below.
REQUEST_TIMEOUT_S = 0.5
# 1 s: module output off after 10 missed polls at POLL_PERIOD_S (owner.py). Must stay under the
# 10 s InfyPower hard-wired timeout (EV PowerSupplies/InfyPower/README.md) and leaves 1 s of the
# GB44263 §8.2.1 budget (communication timeout -> <= 5 A within 2 s) for the current to fall.
WATCHDOG_TIMEOUT_MS = 1000


class ModuleLinkError(ConnectionError):
    """A request on the module bus failed (timeout, refused, exception response)."""


class ModuleRefused(ModuleLinkError):
    """The module answered a request with a Modbus exception: it refused that request, but
    the link carries answers (no reason to drop it and reconnect)."""


@dataclass(frozen=True, slots=True)
class TcpTarget:
    host: str
    port: int = 502


@dataclass(frozen=True, slots=True)
class RtuTarget:
    device: str
    baudrate: int = 115200
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1


@dataclass(frozen=True, slots=True)
class LinkConfig:
    unit_id: int = 1
    request_timeout_s: float = REQUEST_TIMEOUT_S
    watchdog_timeout_ms: int = WATCHDOG_TIMEOUT_MS


def target_label(target: TcpTarget | RtuTarget) -> str:
    return f"{target.host}:{target.port}" if isinstance(target, TcpTarget) else target.device


def make_client(target: TcpTarget | RtuTarget, timeout_s: float, device: str = "") -> Any:
    """device: the name its requests are timed and counted under (drivers/modbus_stats.py;
    "" for none)."""
    # retries=0 and reconnect_delay=0: pymodbus must neither retry nor reconnect behind our
    # back; ModuleBusOwner decides both, so timing stays visible in one place.
    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    if isinstance(target, TcpTarget):
        client = AsyncModbusTcpClient(
            target.host, port=target.port, timeout=timeout_s, retries=0, reconnect_delay=0
        )
    else:
        client = AsyncModbusSerialClient(
            target.device, baudrate=target.baudrate, parity=target.parity,
            bytesize=target.bytesize, stopbits=target.stopbits,
            timeout=timeout_s, retries=0, reconnect_delay=0,
        )
    return TimedClient(client, device) if device else client


class ModuleLink:
    """One power module (unit_id) on one Modbus transport."""

    def __init__(
        self,
        target: TcpTarget | RtuTarget,
        config: LinkConfig | None = None,
        regmap: RegisterMap | None = None,
    ) -> None:
        self.target = target
        self.config = config or LinkConfig()
        self.regmap = regmap or load_register_map()
        self._client: Any = None
        # Words the module acknowledged since the link (re)connected: what it was told.
        self._written: dict[int, int] = {}
        # The latest command's word per register: what it should hold.
        self._commanded: dict[int, int] = {}
        # Writes not yet acknowledged, one dict per command, oldest first.
        self._pending: list[dict[int, int]] = []
        self.reasserted = 0  # safe-direction words written again because they were not held
        self.refused = False  # the last poll was answered with an exception
        self.regmap["watchdog_timeout"].encode(self.config.watchdog_timeout_ms)  # fail early
        self._enable = self.regmap["output_enable"].address
        self._contactors = self.regmap["contactor_command"].address
        self._setpoint = self.regmap["setpoint_current"].address

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    @property
    def pending_writes(self) -> int:
        return sum(len(words) for words in self._pending)

    async def connect(self) -> None:
        """Open the transport and arm the module's watchdog. Raises ModuleLinkError."""
        await self.close()
        self._client = make_client(self.target, self.config.request_timeout_s,
                                   f"module {target_label(self.target)}#"
                                   f"{self.config.unit_id}")
        try:
            ok = await within(self._client.connect(), self._guard_s)
        except (TimeoutError, OSError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        else:
            detail = "connection refused or device missing"
        if not ok:
            await self.close()
            raise ModuleLinkError(f"connect to {self._describe()} failed: {detail}")
        self._written.clear()  # the module may have restarted: what it holds is unknown
        # Armed after what is queued: a stop that waited for the link goes out first.
        reg = self.regmap["watchdog_timeout"]
        words = dict(zip(reg.addresses, reg.encode(self.config.watchdog_timeout_ms),
                         strict=True))
        self._queue(words, words)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def stage(self, cmd: ModuleCommand) -> None:
        """Queue the registers of cmd that the module was not told yet (or not since it
        reconnected). ValueError if cmd is invalid."""
        mode_addr = self.regmap["mode"].address
        previous_mode = self._latest(mode_addr)
        encoded = encode_command(self.regmap, cmd, previous_mode)
        self._commanded.update(encoded.words)
        words = {
            addr: word for addr, word in encoded.words.items()
            if encoded.trigger or self._written.get(addr) != word
        }
        self._queue(words, encoded.words)

    def _queue(self, words: dict[int, int], replaces: Iterable[int]) -> None:
        # Latest command wins per register; older entries keep their place for the rest.
        for entry in self._pending:
            for addr in replaces:
                entry.pop(addr, None)
        self._pending = [entry for entry in self._pending if entry]
        if words:
            self._pending.append(words)

    async def flush(self) -> None:
        """Write the queued registers in command order. Raises ModuleLinkError; keeps the rest.

        Consecutive commands whose registers form one contiguous run go out as one request
        (an emergency's output-off and K1/K2-open together: the module takes both or
        neither, and a link that answers late cannot hold back the second)."""
        while self._pending:
            count, merged = 1, dict(self._pending[0])
            while count < len(self._pending) and len(
                    contiguous_runs({**merged, **self._pending[count]})) == 1 \
                    and len(contiguous_runs(merged)) == 1:
                merged.update(self._pending[count])
                count += 1
            for start, values in contiguous_runs(merged):
                await self._write(start, values)
                for entry in self._pending[:count]:
                    for offset in range(len(values)):
                        entry.pop(start + offset, None)
            del self._pending[:count]

    async def apply(self, cmd: ModuleCommand) -> None:
        self.stage(cmd)
        await self.flush()

    async def poll(self, t: float) -> ModuleStatus | ModuleLinkLost:
        """Read the whole register span once. Never raises: failures become ModuleLinkLost
        (`refused` says whether the module answered with an exception)."""
        span = self.regmap.span
        self.refused = False
        try:
            block = await self._read(span.start, len(span))
        except ModuleLinkError as exc:
            self.refused = isinstance(exc, ModuleRefused)
            return ModuleLinkLost(t, str(exc))
        except Exception as exc:  # a driver bug must reach the core as a fault, not kill a task
            return ModuleLinkLost(t, f"unexpected {type(exc).__name__}: {exc}")
        status = decode_status(self.regmap, t, block)
        if isinstance(status, DriverError):
            return ModuleLinkLost(t, f"malformed status from {self._describe()}: {status.detail}")
        self._reassert(command_readback(self.regmap, block), status)
        return status

    # -- internals --------------------------------------------------------------------------

    @property
    def _guard_s(self) -> float:
        # pymodbus applies request_timeout_s itself; this outer guard only catches a hang in
        # connect or in the library.
        return 2 * self.config.request_timeout_s

    def _reassert(self, readback: dict[int, int], status: ModuleStatus) -> None:
        """Write again each safe-direction command the module does not hold (I16)."""
        words: dict[int, int] = {}
        enable = self._commanded.get(self._enable)
        contactors = self._commanded.get(self._contactors)
        if enable == 0 and (readback.get(self._enable) != 0
                            or abs(status.output_current_a) > T.CONTACTOR_OPEN_CURRENT_A):
            words[self._enable] = 0
        if contactors == 0 and (readback.get(self._contactors) != 0
                                or status.contactors_any_closed):
            words[self._contactors] = 0
        setpoint = self._commanded.get(self._setpoint)
        if setpoint is not None and readback.get(self._setpoint, setpoint) > setpoint:
            words[self._setpoint] = setpoint
        if words and not any(addr in entry for entry in self._pending for addr in words):
            self.reasserted += len(words)
            self._queue(words, words)

    def _latest(self, address: int) -> int:
        for entry in reversed(self._pending):
            if address in entry:
                return entry[address]
        return self._written.get(address, MODE_CHARGE)

    def _describe(self) -> str:
        if isinstance(self.target, TcpTarget):
            where = f"{self.target.host}:{self.target.port}"
        else:
            where = self.target.device
        return f"module {self.config.unit_id} at {where}"

    async def _request(self, what: str, call: Any) -> Any:
        if not self.connected:
            raise ModuleLinkError(f"{what}: {self._describe()} not connected")
        try:
            response = await within(call(), self._guard_s)
        except TimeoutError as exc:
            raise ModuleLinkError(f"{what}: {self._describe()} timed out") from exc
        except Exception as exc:  # pymodbus raises ModbusException subclasses and OSError
            raise ModuleLinkError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise ModuleRefused(f"{what}: {self._describe()} answered exception {code}")
        return response

    async def _write(self, address: int, values: Sequence[int]) -> None:
        await self._request(
            f"write {len(values)} @ {address}",
            lambda: self._client.write_registers(
                address, list(values), device_id=self.config.unit_id
            ),
        )
        self._written.update(zip(range(address, address + len(values)), values, strict=True))

    async def _read(self, address: int, count: int) -> list[int]:
        response = await self._request(
            f"read {count} @ {address}",
            lambda: self._client.read_holding_registers(
                address, count=count, device_id=self.config.unit_id
            ),
        )
        registers: list[int] = list(response.registers)
        if len(registers) != count:
            raise ModuleLinkError(f"read {count} @ {address}: got {len(registers)} registers")
        return registers
