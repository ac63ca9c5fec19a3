"""The SunSpec Modbus TCP interface for the site EMS / VPP (drivers/sunspec): the map as a
SunSpec client walks it, scale factors for 600 kW, the sign at the edge, writes and their
refusals, over a real socket with pymodbus and with Debian's mbpoll."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from pymodbus.client import AsyncModbusTcpClient

from agent.core.events import DroopSet, UpstreamCleared, UpstreamSetpoint
from drivers.sunspec.codec import (
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    Layout,
    decode_write,
    encode_image,
    layout,
    load_map,
)
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer

BASE, MODELS = load_map()
LAYOUT = layout(BASE, MODELS, n_ports=1)
# Lengths from the SunSpec information models (github.com/sunspec/models, json/model_N).
SUNSPEC_LENGTHS = {1: 66, 701: 153, 702: 50, 704: 65, 711: 22, 713: 7, 714: 18 + 25, 715: 7}


def walk(image: list[int], base: int = BASE) -> list[tuple[int, int, int]]:
    """What a SunSpec client does: 'SunS', then (ID, L) to the end model."""
    assert image[0:2] == [0x5375, 0x6E53]
    out, a = [], 2
    while image[a] != 0xFFFF:
        out.append((image[a], image[a + 1], base + a))
        a += 2 + image[a + 1]
    assert image[a + 1] == 0
    return out


def value(lay: Layout, image: list[int], name: str, model: int | None = None) -> float:
    """Decode one point as a client would: raw words times 10^SF of its model."""
    a = lay.address_of(name, model)
    p = lay.points[a]
    raw = 0
    for w in image[a - lay.base: a - lay.base + p.words]:
        raw = (raw << 16) | w
    if p.type.startswith("int") and raw >= 1 << (16 * p.words - 1):
        raw -= 1 << (16 * p.words)
    sf = 0
    if p.sf:
        sfw = image[lay.address_of(p.sf, p.model) - lay.base]
        sf = sfw - 0x10000 if sfw >= 0x8000 else sfw
    return raw * 10.0 ** sf


def test_a_sunspec_client_walks_the_map_and_finds_every_model_at_its_length() -> None:
    image = encode_image(LAYOUT, {})
    assert [(m, n) for m, n, _a in walk(image)] == list(SUNSPEC_LENGTHS.items())
    two = layout(BASE, MODELS, n_ports=2)
    lengths = dict((m, n) for m, n, _a in walk(encode_image(two, {})))
    assert lengths[714] == 18 + 2 * 25


def test_600_kw_and_its_energy_fit_and_the_sign_turns_at_the_edge() -> None:
    snap = {"ac_power_w": -600_000.0, "dc_power_w": -600_000.0, "dc_current_a": -800.0,
            "energy_from_vehicle_wh": 9.9e9, "energy_to_vehicle_wh": 12_345_678.0,
            "rated_w": 600_000.0, "grid_frequency_hz": 49.987, "wset_w": -40_000.0}
    image = encode_image(LAYOUT, snap, [{"dc_power_w": 250_000.0, "dc_voltage_v": 812.3}])
    # SunSpec: + = injection. A discharge of 600 kW reads +600 kW.
    assert value(LAYOUT, image, "W") == 600_000.0
    assert value(LAYOUT, image, "DCW", 714) == 600_000.0
    assert value(LAYOUT, image, "DCA", 714) == pytest.approx(800.0)
    assert value(LAYOUT, image, "WMaxRtg") == 600_000.0
    assert value(LAYOUT, image, "TotWhInj", 701) == 9.9e9
    assert value(LAYOUT, image, "Hz") == pytest.approx(49.987)
    assert value(LAYOUT, image, "WSet") == 40_000.0
    assert value(LAYOUT, image, "Prt[0].DCW") == -250_000.0  # charging: absorbed
    assert value(LAYOUT, image, "Prt[0].DCV") == pytest.approx(812.3)
    # Not implemented, and a value that does not fit, read as SunSpec's "not implemented".
    assert image[LAYOUT.address_of("VA") - BASE] == 0x8000
    big = encode_image(LAYOUT, {"ac_power_w": -4e6})
    assert big[LAYOUT.address_of("W") - BASE] == 0x8000


def test_writes_must_be_whole_writable_points_within_range() -> None:
    wset = LAYOUT.address_of("WSet")
    ok = decode_write(LAYOUT, wset, [0, 40_000])
    assert not isinstance(ok, int) and ok[0].value == -40_000.0  # injection -> discharge
    assert decode_write(LAYOUT, wset, [0]) == ILLEGAL_DATA_ADDRESS  # half of an int32
    assert decode_write(LAYOUT, LAYOUT.address_of("W"), [1]) == ILLEGAL_DATA_ADDRESS
    assert decode_write(LAYOUT, wset, [0x7FFF, 0]) == ILLEGAL_DATA_VALUE  # beyond 2 MW
    assert decode_write(LAYOUT, wset, [0x8000, 0]) == ILLEGAL_DATA_VALUE  # NI is no value
    ena = LAYOUT.address_of("WSetEna")
    assert decode_write(LAYOUT, ena, [2]) == ILLEGAL_DATA_VALUE
    both = decode_write(LAYOUT, ena, [1, 1, 0xFFFF, 0xFFFF - 9_999])  # Ena, Mod, WSet
    assert not isinstance(both, int) and [w.value for w in both] == [1.0, 1.0, 10_000.0]


def test_the_controls_coalesce_writes_into_one_offer_per_interval() -> None:
    c = EmsControls(EmsSettings(allow_discharge=True, default_validity_s=30.0))
    wset, ena = LAYOUT.address_of("WSet"), LAYOUT.address_of("WSetEna")
    for t, (address, words) in enumerate([(ena, [1]), (wset, [0, 40_000])]):
        written = decode_write(LAYOUT, address, words)
        assert not isinstance(written, int)
        assert c.on_write(t * 0.01, written) is None
    events = c.poll(0.02)
    assert events == [UpstreamSetpoint(0.02, "ems", 30.02, setpoint=-40_000.0,
                                       charge_limit=math.inf, discharge_limit=math.inf,
                                       unit="W")]
    written = decode_write(LAYOUT, wset, [0, 30_000])
    assert not isinstance(written, int)
    c.on_write(0.5, written)
    assert c.poll(0.6) == []  # within the core's 1 s per source
    assert c.poll(1.1)[0].setpoint == -30_000.0  # type: ignore[union-attr]
    written = decode_write(LAYOUT, ena, [0])
    assert not isinstance(written, int)
    c.on_write(3.0, written)
    assert c.poll(3.0) == [UpstreamCleared(3.0, "ems")]


def test_stop_heartbeat_loss_and_the_droop() -> None:
    c = EmsControls(EmsSettings(allow_discharge=True, heartbeat_timeout_s=5.0))
    hb, op = LAYOUT.address_of("ControllerHb"), LAYOUT.address_of("OpCtl")
    for t, address, words in [(0.0, hb, [0, 1]), (0.0, LAYOUT.address_of("WSetEna"), [1]),
                              (0.0, LAYOUT.address_of("WSet"), [0xFFFF, 0xFFFF - 19_999]),
                              (0.0, LAYOUT.address_of("Ena", 711), [1]),
                              (0.0, LAYOUT.address_of("Ctl.KUf"), [40])]:
        written = decode_write(LAYOUT, address, words)
        assert not isinstance(written, int), (address, written)
        c.on_write(t, written)
    first = c.poll(0.0)
    assert DroopSet(0.0, "ems", True, 0.036, 0.04) in first
    assert any(isinstance(e, UpstreamSetpoint) and e.setpoint == 20_000.0 for e in first)
    written = decode_write(LAYOUT, op, [0])
    assert not isinstance(written, int)
    c.on_write(2.0, written)
    stopped = c.poll(2.0)[0]
    assert isinstance(stopped, UpstreamSetpoint)
    assert (stopped.setpoint, stopped.charge_limit, stopped.discharge_limit) == (None, 0.0, 0.0)
    # The heartbeat never moved again: after 5 s the EMS's offer is withdrawn.
    c.op_ctl = 1
    assert c.poll(4.0) == []
    assert c.poll(5.5) == [UpstreamCleared(5.5, "ems")]


def test_a_discharge_setpoint_is_refused_unless_enabled() -> None:
    c = EmsControls(EmsSettings(allow_discharge=False))
    written = decode_write(LAYOUT, LAYOUT.address_of("WSet"), [0, 1000])
    assert not isinstance(written, int)
    assert c.on_write(0.0, written) == ILLEGAL_DATA_VALUE
    assert c.poll(0.0) == []


# ---- over a real socket ----------------------------------------------------------------

@dataclass
class Clock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def serving(settings: EmsSettings, writers: tuple[str, ...] = ("127.0.0.1",)
                  ) -> AsyncIterator[tuple[SunSpecServer, int, Clock]]:
    clock = Clock()
    server = SunSpecServer(
        LAYOUT, EmsControls(settings),
        lambda: ({"ac_power_w": 12_000.0, "manufacturer": "pile-agent", "rated_w": 600_000.0,
                  "vehicle_soc_pct": 63.5}, [{"dc_voltage_v": 400.0}]),
        clock, allowed_writers=writers)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port, clock
    finally:
        await server.stop()


def test_pymodbus_client_reads_and_writes_and_strangers_are_refused() -> None:
    async def run() -> None:
        async with serving(EmsSettings(allow_discharge=True)) as (server, port, clock):
            client = AsyncModbusTcpClient("127.0.0.1", port=port)
            await client.connect()
            image: list[int] = []
            for start in range(BASE, BASE + LAYOUT.size, 125):
                n = min(125, BASE + LAYOUT.size - start)
                rr = await client.read_holding_registers(start, count=n)
                assert not rr.isError(), rr
                image += rr.registers
            assert [m for m, _n, _a in walk(image)] == list(SUNSPEC_LENGTHS)
            assert value(LAYOUT, image, "W") == -12_000.0  # absorbing 12 kW
            assert value(LAYOUT, image, "SoC") == pytest.approx(63.5)
            clock.t = 1.0
            rq = await client.write_registers(LAYOUT.address_of("WSetEna"),
                                              [1, 1, 0, 40_000])
            assert not rq.isError(), rq
            assert server.events(1.0)[0] == UpstreamSetpoint(
                1.0, "ems", 61.0, setpoint=-40_000.0, charge_limit=math.inf,
                discharge_limit=math.inf, unit="W")
            bad = await client.write_register(LAYOUT.address_of("W"), 5)
            assert bad.isError() and bad.exception_code == ILLEGAL_DATA_ADDRESS
            client.close()
            # A client from another address (127.0.0.2: still loopback) reads, never writes.
            other = AsyncModbusTcpClient("127.0.0.1", port=port,
                                         source_address=("127.0.0.2", 0))
            await other.connect()
            assert not (await other.read_holding_registers(BASE, count=2)).isError()
            refused = await other.write_registers(LAYOUT.address_of("WSet"), [0, 10])
            assert refused.isError() and refused.exception_code == 1
            other.close()
            assert server.refused[-1][0] == "127.0.0.2"
            clock.t = 5.0
            assert server.events(5.0) == []  # nothing new was accepted

    asyncio.run(run())


MBPOLL = shutil.which("mbpoll")


def test_debians_mbpoll_reads_the_map_and_writes_a_setpoint() -> None:
    assert MBPOLL is not None, "mbpoll missing: .ci/run installs it (apt-get install mbpoll)"

    async def mbpoll(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            MBPOLL, "-0", "-1", "-a", "1", *args, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        return out.decode()

    async def run() -> None:
        async with serving(EmsSettings(allow_discharge=True)) as (server, port, clock):
            out = await mbpoll("-p", str(port), "-r", str(BASE), "-c", "4", "127.0.0.1")
            assert f"[{BASE}]: \t21365" in out and f"[{BASE + 1}]: \t28243" in out, out
            assert f"[{BASE + 2}]: \t1" in out and f"[{BASE + 3}]: \t66" in out, out
            clock.t = 2.0
            wset = LAYOUT.address_of("WSet")
            out = await mbpoll("-p", str(port), "-r", str(LAYOUT.address_of("WSetEna")),
                               "127.0.0.1", "1")
            assert "Written 1 references" in out, out
            out = await mbpoll("-p", str(port), "-t", "4:int", "-B", "-r", str(wset),
                               "127.0.0.1", "55000")
            assert "Written 1 references" in out, out
            events = server.events(2.0)
            assert len(events) == 1 and isinstance(events[0], UpstreamSetpoint)
            assert events[0].setpoint == -55_000.0  # 55 kW injected = discharged
            out = await mbpoll("-p", str(port), "-t", "4:int", "-B", "-r", str(wset), "-c", "1",
                               "127.0.0.1")
            assert f"[{wset}]: \t55000" in out, out
            # Out of range: mbpoll shows the device's exception.
            out = await mbpoll("-p", str(port), "-r", str(LAYOUT.address_of("WSetEna")),
                               "127.0.0.1", "7")
            assert "Illegal data value" in out, out

    asyncio.run(run())
