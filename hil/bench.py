"""`pile-agent bench`: reaction latencies, CCS period, CPU, memory and simulation speed,
measured over the real transports (virtual CAN, Modbus TCP on loopback) on the wall clock:
the reactions on one gun; the CCS period, the agent's CPU and the RSS at 1, 4 and 12 guns
sharing a module pool (hil/bench_scale.py, a process each); the simulation speed of one
gun and the station run's gun-hours per wall second over the real transports, and a
station's day at the energy level (hil/station_day.py). Prints JSON. The method is in
docs/PERFORMANCE.md.

Each reaction is timed from the stimulus to the first module write that answers it, both
taken with `time.perf_counter` in this process: (a) the first BCL on the bus with a lower
demand -> a lower setpoint_current on the module's Modbus wire; (b) the E-stop input set on
the I/O board simulator -> output_enable = 0; (c) the I/O board's Modbus answer carrying a
connector PT1000 above the derating curve -> setpoint 0 A (and from the sensor change,
which adds the wait for the next poll); (d) the site EMS's SunSpec write of a lower charge
limit -> a lower setpoint. The agent, the simulators and the clients share this process
and its event loop (as the CAN virtual bus needs), so CPU and memory are the whole
process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
from pymodbus.client import AsyncModbusTcpClient

from agent.core.messages import BCL, ChargeMode
from agent.runtime.config import parse_config
from agent.runtime.pile_service import PileService
from drivers.gbt27930.link import GbtLink, Role
from drivers.power_module.link import ModuleLink, TcpTarget
from drivers.sunspec.codec import layout, load_map
from drivers.task_end import within
from hil import sim_loop
from hil.bench_scale import ccs_periods, percentile
from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile, free_port
from hil.module_sim import ModuleSim
from hil.pile_scenario_run import charging_spans as _charging_spans
from hil.pile_sim import run_pile_sim
from hil.safety_io_sim import IO_UNIT
from hil.sim import SimOptions, run_sim
from hil.station_day import DayOptions, StationDay

SAFETY_POLL_S = 0.02
ESTOP_PRESSES = 5  # at most: each after the first is a fresh session (about 6 s each)
# Event-driven against lock-step over the same first simulated seconds of one session.
COMPARE_S = 300.0
HOT_C = 95.0  # the connector PT1000 past the 80-90 C derating curve: 0 A


@dataclass
class Probe:
    """What crossed the wires, with perf_counter times."""

    writes: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    bcl: list[tuple[float, float]] = field(default_factory=list)  # (t, demand A)
    hot_reads: list[float] = field(default_factory=list)  # I/O board answers carrying >= trip

    def first_write_after(self, t0: float, test: Any, timeout: float = 2.0) -> float | None:
        for t, values in self.writes:
            if t >= t0 and test(values):
                return t - t0 if t - t0 <= timeout else None
        return None


def _stats(ms: list[float]) -> dict[str, float | int]:
    if not ms:
        return {"n": 0}
    p99 = percentile(ms, 0.99)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(p99, 2),
            "max_ms": round(max(ms), 2)}


class Bench:
    def __init__(self, trials: int) -> None:
        self.trials = trials
        self.probe = Probe()
        self.pile = LoopbackPile(VehicleConfig(start_soc_pct=30.0, target_soc_pct=95.0))
        self.bms, self.module, self.safety = self.pile.bms, self.pile.module, self.pile.safety
        self.estop_from = ""
        self.pile.on_sent = self._sent
        original = self.module.accept_write
        regmap = self.module.regmap

        def recorded(address: int, values: list[int]) -> Any:
            result = original(address, values)
            if result is None:
                seen = {}
                for offset, word in enumerate(values):
                    reg = regmap.by_address(address + offset)
                    if reg is not None:
                        seen[reg.name] = reg.decode([word])
                self.probe.writes.append((time.perf_counter(), seen))
            return result

        self.module.accept_write = recorded  # type: ignore[method-assign]
        traced = self.safety._trace

        def on_wire(sending: bool, data: bytes) -> bytes:
            # An answer of the I/O board (read holding registers) sent while the
            # connector reads over-temperature: the reading is on the wire.
            out = traced(sending, data)
            if sending and len(out) > 7 and out[6] == IO_UNIT and out[7] == 3 \
                    and (self.safety.force_connector_c or 0.0) >= HOT_C:
                self.probe.hot_reads.append(time.perf_counter())
            return out

        self.safety._trace = on_wire  # type: ignore[method-assign]

    def _sent(self, message: object) -> None:
        if isinstance(message, BCL):
            self.probe.bcl.append((time.perf_counter(), message.current_demand_a))

    async def until(self, check: Any, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if check():
                return True
            await asyncio.sleep(0.01)
        return False

    async def answer(self, sent: float, test: Any, timeout: float = 5.0) -> float | None:
        """Seconds from `sent` to the first module write passing `test` (None: none came
        within `timeout`; waits for it, so a slow machine is measured, not missed)."""
        await self.until(lambda: self.probe.first_write_after(sent, test, timeout) is not None,
                         timeout)
        return self.probe.first_write_after(sent, test, timeout)

    def setpoint(self) -> float:
        return next((v["setpoint_current"] for _t, v in reversed(self.probe.writes)
                     if "setpoint_current" in v), 0.0)

    async def bcl_drops(self) -> list[float]:
        out: list[float] = []
        for _ in range(self.trials):
            self.bms.demand_override_a = 200.0
            await self.until(lambda: self.setpoint() >= 199.0, 5.0)
            await asyncio.sleep(0.3)
            self.bms.demand_override_a = 100.0
            mark = len(self.probe.bcl)
            await self.until(lambda m=mark: any(d <= 100.0 for _t, d in self.probe.bcl[m:]), 2.0)
            sent = next((t for t, d in self.probe.bcl[mark:] if d <= 100.0), None)
            if sent is None:
                continue
            lat = await self.answer(sent, lambda v: v.get("setpoint_current", 1e9) <= 100.05)
            if lat is not None:
                out.append(lat * 1000.0)
        self.bms.demand_override_a = 200.0
        return out

    async def upstream_limits(self, port: int) -> list[float]:
        lay = layout(*load_map(), n_ports=1)
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()
        address = lay.address_of("WChaRteMax")
        out: list[float] = []
        for _ in range(self.trials):
            await client.write_register(address, 15_000)  # 150 kW (W_SF 1)
            await asyncio.sleep(1.1)
            await self.until(lambda: self.setpoint() >= 199.0, 5.0)
            sent = time.perf_counter()
            await client.write_register(address, 2_000)  # 20 kW
            lat = await self.answer(sent, lambda v: v.get("setpoint_current", 1e9) < 100.0)
            await asyncio.sleep(1.0)  # the EMS's next offer: one a second
            if lat is not None:
                out.append(lat * 1000.0)
        await client.write_register(address, 15_000)
        client.close()
        return out

    async def over_temperature(self) -> tuple[list[float], list[float]]:
        """(from the reading on the wire, from the sensor change) to the 0 A write, in ms."""
        from_reading: list[float] = []
        from_sensor: list[float] = []
        for _ in range(self.trials):
            self.safety.force_connector_c = None
            await self.until(lambda: self.setpoint() >= 150.0, 6.0)
            await asyncio.sleep(0.2)
            mark = len(self.probe.hot_reads)
            sent = time.perf_counter()
            self.safety.force_connector_c = HOT_C  # past the 80-90 C derating curve: 0 A
            lat = await self.answer(sent, lambda v: v.get("setpoint_current", 1e9) <= 0.5
                                    or v.get("output_enable", 1) == 0)
            if lat is None:
                continue
            from_sensor.append(lat * 1000.0)
            read = next((t for t in self.probe.hot_reads[mark:]), None)
            if read is not None and read <= sent + lat:
                from_reading.append((sent + lat - read) * 1000.0)
        self.safety.force_connector_c = None
        return from_reading, from_sensor

    async def emergency_stop(self) -> list[float]:
        """Pressed while charging (it latches: one sample per run)."""
        self.safety.force_connector_c = None
        await self.until(lambda: self.module.current_a > 50.0, 10.0)
        self.estop_from = (f"output {'on' if self.module.output_on else 'off'}, "
                           f"{self.module.current_a:.0f} A")
        await asyncio.sleep(0.2)
        # The board's hardware trip would disable the output itself, and the driver then
        # rightly writes nothing (the device already reads 0): time the agent's own answer.
        self.safety.estop_trips_hardware = False
        sent = time.perf_counter()
        self.safety.estop_pressed = True
        lat = await self.answer(sent, lambda v: v.get("output_enable", 1) == 0)
        return [] if lat is None else [lat * 1000.0]


async def _measure(trials: int) -> dict[str, Any]:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    b = Bench(trials)
    devices = await b.pile.start()
    ems_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "can.log"
        # TCP on loopback: the I/O board can be polled every 20 ms (a 19,200-baud RS-485
        # line could not; docs/PERFORMANCE.md).
        devices["safety_bus"]["poll_period_s"] = SAFETY_POLL_S
        config = parse_config({
            **devices,
            "ledger": {"path": str(Path(tmp) / "ledger.sqlite")},
            "ems": {"enabled": True, "port": ems_port},
        })
        service, agent = _serve(config, str(log))
        results: dict[str, Any] = {}
        try:
            if not await b.until(lambda: b.module.current_a > 100.0, 60.0):
                raise RuntimeError("the session never reached energy transfer")
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(5.0)  # steady charging: CPU of the process
            results["cpu_pct_of_one_core_charging"] = round(
                100.0 * (time.process_time() - cpu0) / (time.perf_counter() - wall0), 1)
            results["a_bcl_drop_to_module_write"] = _stats(await b.bcl_drops())
            hot_read, hot_sensor = await b.over_temperature()
            results["c_over_temperature_to_module_write"] = {
                **_stats(hot_read), "from": "the I/O board's answer carrying it, on the wire",
                "from_sensor_change": _stats(hot_sensor)}
            results["d_upstream_limit_to_module_write"] = _stats(await b.upstream_limits(
                ems_port))
            estop = await b.emergency_stop()
            pressed_with = b.estop_from
            periods = [p for ps in ccs_periods(log).values() for p in ps]
            if periods:
                results["ccs_period_ms"] = {
                    "n": len(periods), "p50": round(statistics.median(periods), 1),
                    "p99": round(percentile(periods, 0.99), 1),
                    "share_above_55ms": round(sum(p > 55.0 for p in periods)
                                              / len(periods), 3)}
        finally:
            service.stop("bench over")
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await within(agent, 15.0)
            await b.pile.close()
    # The E-stop latches and ends the session: each further press is a fresh session.
    for _ in range(min(trials, ESTOP_PRESSES) - 1):
        estop += await _estop_once()
    results["b_estop_to_module_write"] = {**_stats(estop), "pressed_with": pressed_with}
    results["rss_max_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def _serve(config: Any, can_log: str | None = None) -> tuple[PileService, asyncio.Task[int]]:
    """The pile's service in this process, until the bench stops it."""
    service = PileService(config, out=io.StringIO(), can_log=can_log)
    return service, asyncio.create_task(service.run())


async def _estop_once() -> list[float]:
    """One more E-stop press, in a session of its own (the agent and the simulators
    started afresh, charging), at a random phase of the I/O board's poll."""
    b = Bench(1)
    devices = await b.pile.start()
    with tempfile.TemporaryDirectory() as tmp:
        devices["safety_bus"]["poll_period_s"] = SAFETY_POLL_S
        config = parse_config({**devices, "ledger": {"path": str(Path(tmp) / "l.sqlite")}})
        service, agent = _serve(config)
        try:
            if not await b.until(lambda: b.module.current_a > 50.0, 60.0):
                return []
            await asyncio.sleep(random.uniform(0.0, SAFETY_POLL_S))
            return await b.emergency_stop()
        finally:
            service.stop("bench over")
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await within(agent, 15.0)
            await b.pile.close()


async def _sim_speed() -> dict[str, Any]:
    """The one-gun simulation (20 -> 80 %), with its traffic per simulated second; and the
    same session's first COMPARE_S simulated seconds event-driven and in lock-step."""
    out: dict[str, Any] = {}
    for name, lock_step, until in (("event_driven", False, None),
                                   ("first_300_s_event_driven", False, COMPARE_S),
                                   ("first_300_s_lock_step", True, COMPARE_S)):
        wall0 = time.perf_counter()
        r = await run_sim(SimOptions(live=False, lock_step=lock_step,
                                     max_sim_s=until or SimOptions.max_sim_s))
        wall = time.perf_counter() - wall0
        if until is not None:
            out[name] = {"wall_s": round(wall, 2), "speed_up": round(until / wall, 1),
                         "agent_steps_per_sim_s": round(r.agent_steps / until, 1)}
            continue
        sim_s = max(r.sim_duration_s, 1e-9)
        out[name] = {"simulated_s": round(r.sim_duration_s, 1), "wall_s": round(wall, 2),
                     "speed_up": round(r.sim_duration_s / wall, 1),
                     "agent_steps_per_sim_s": round(r.agent_steps / sim_s, 1),
                     "can_frames_per_sim_s": round(r.can_frames / sim_s, 1),
                     "modbus_requests_per_sim_s": round(r.modbus_requests / sim_s, 1)}
    return out


async def _transport_costs(n: int = 2000) -> dict[str, float]:
    """Wall time of one module status read over Modbus TCP on loopback (our link, pymodbus
    client and server in this loop, the decode) and of one CAN frame through our links
    (encode, virtual bus, decode): what the transports alone cost the simulation."""
    module = ModuleSim()
    server, port = await module.start_tcp("127.0.0.1", 0)
    link = ModuleLink(TcpTarget("127.0.0.1", port))
    try:
        await link.connect()
        await link.poll(0.0)
        t0 = time.perf_counter()
        for _ in range(n):
            await link.poll(0.0)
        request_s = (time.perf_counter() - t0) / n
    finally:
        await link.close()
        await server.stop()
    channel = f"bench-{uuid.uuid4().hex[:8]}"
    with can.Bus(interface="virtual", channel=channel) as a, \
            can.Bus(interface="virtual", channel=channel) as b:
        car, charger = GbtLink(a, Role.BMS), GbtLink(b, Role.CHARGER)
        demand = BCL(400.0, 120.0, ChargeMode.CONSTANT_CURRENT)
        t0 = time.perf_counter()
        for _ in range(n):
            car.send(demand, 0.0)
            charger.poll(0.0)
        frame_s = (time.perf_counter() - t0) / n
    return {"modbus_request_us": round(request_s * 1e6, 1),
            "can_frame_us": round(frame_s * 1e6, 1)}


def _floor(sim: dict[str, Any], costs: dict[str, float]) -> dict[str, float]:
    """The fastest the one-gun simulation could run if everything but the transports took
    no time: its requests and frames per simulated second at their measured costs."""
    ev = sim["event_driven"]
    per_sim_s_us = ev["modbus_requests_per_sim_s"] * costs["modbus_request_us"] \
        + ev["can_frames_per_sim_s"] * costs["can_frame_us"]
    return {"transport_ms_per_sim_s": round(per_sim_s_us / 1000.0, 2),
            "speed_up_ceiling": round(1e6 / max(per_sim_s_us, 1e-9), 1)}


def _scale_point(guns: int) -> dict[str, Any]:
    """One pile of `guns` guns in a process of its own (hil/bench_scale.py), so its RSS and
    CPU are that configuration's."""
    done = subprocess.run([sys.executable, "-m", "hil.bench_scale", str(guns)],
                          capture_output=True, text=True, timeout=600, check=False)
    try:
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"guns": guns, "error": (done.stderr or done.stdout)[-500:]}
    return figures


async def _station(guns: int) -> dict[str, Any]:
    """The station run: every gun charging on the pool, in simulated time (lock-step)."""
    wall0 = time.perf_counter()
    r = await run_pile_sim("station", guns)
    wall = time.perf_counter() - wall0
    hours = sum(t1 - t0 for g in r.per_gun for t0, t1 in _charging_spans(g.states)) / 3600
    return {"guns": guns, "simulated_s": round(r.sim_s, 1), "wall_s": round(wall, 2),
            "speed_up": round(r.sim_s / wall, 1), "gun_hours": round(hours, 3),
            "gun_hours_per_wall_s": round(hours / wall, 4), "verdict": r.verdict}


def _station_day(guns: int, hours: float) -> dict[str, Any]:
    """A station's day at the energy level (hil/station_day.py): the pool and the arbiter
    without the protocols; the profiles and departures are left to `pile-agent
    station-day`."""
    s = StationDay(DayOptions(guns=guns, hours=hours)).run().summary()
    drop = ("import_kw_per_quarter_hour", "export_kw_per_quarter_hour", "v2g_departures")
    return {k: v for k, v in s.items() if k not in drop}


def run_bench(trials: int = 20, scale: tuple[int, ...] = (1, 4, 12),
              station_guns: int = 12, day_guns: int = 36,
              day_hours: float = 24.0) -> dict[str, Any]:
    out: dict[str, Any] = {"guns": 1, "trials": trials}
    out.update(asyncio.run(_measure(trials)))
    sim = {**sim_loop.run(_sim_speed()), "event_loop": sim_loop.loop_name()}
    costs = asyncio.run(_transport_costs())
    out["simulation_one_gun"] = {**sim, "transport_costs": costs,
                                 "transport_floor": _floor(sim, costs)}
    out["scale"] = [_scale_point(n) for n in scale]
    out["station"] = asyncio.run(_station(station_guns))
    out["station_day"] = _station_day(day_guns, day_hours)
    return out


def main(trials: int, pretty: bool, scale: tuple[int, ...] = (1, 4, 12),
         station_guns: int = 12, day_guns: int = 36, day_hours: float = 24.0) -> int:
    print(json.dumps(run_bench(trials, scale, station_guns, day_guns, day_hours),
                     indent=2 if pretty else None))
    return 0
