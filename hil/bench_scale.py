"""One scale point of `pile-agent bench`: N guns sharing a module pool, the agent
(`pile-agent run`) in a process of its own as deployed, the simulators (cars, output units,
I/O boards, meters and the matrix board on Modbus TCP) in this one, CAN between them over
the `udp_loopback` interface (drivers/udp_loopback: UDP on 127.0.0.1 only). Run in its own
process (`python -m hil.bench_scale N`); prints JSON.

Measured while every gun charges: the agent process's CPU time over the wall time (its share
of one core, from /proc), the CCS period on each gun's channel from the agent's CAN log, its
peak RSS, and every internet socket of both processes that is not on loopback (must be none:
hil/socket_audit.py). Where `udp_loopback` cannot open, the agent runs in a thread of this
process on virtual buses instead, and the output says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can

from agent.runtime.config import PileConfig, parse_config
from agent.runtime.pile_service import PileService
from drivers.task_end import within
from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile, free_port
from hil.matrix_sim import GroupSim
from hil.pool_layout import GROUP_A, GROUP_W, ring_groups
from hil.socket_audit import off_loopback

WINDOW_S = 10.0  # steady charging, every gun


class AgentThread:
    """The pile's service on its own event loop in its own thread."""

    def __init__(self, config: PileConfig, can_log: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.config, self.can_log = config, can_log
        self.rc: int | None = None
        self.service: PileService | None = None
        self.thread = threading.Thread(target=self._run, name="agent", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> int:
            self.service = PileService(self.config, out=io.StringIO(), can_log=self.can_log)
            return await self.service.run()

        self.rc = self.loop.run_until_complete(serve())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """An orderly stop, as SIGTERM gives the process."""
        if self.service is not None:
            self.loop.call_soon_threadsafe(self.service.stop, "bench over")

    def cpu_s(self) -> float:
        """CPU seconds of the agent's thread and of its CAN reader threads (python-can's
        Notifier reads a bus without a descriptor, such as `virtual`, in a thread of its
        own: drivers/gbt27930/rx_notify.py), from /proc."""
        ids = [self.thread.native_id, *(t.native_id for t in threading.enumerate()
                                        if t.name.startswith("Notifier for bus"))]
        return sum(thread_cpu_s(i) for i in ids if i is not None)


def thread_cpu_s(native_id: int) -> float:
    """utime + stime of one thread of this process (0 once it is gone)."""
    try:
        return cpu_s(f"/proc/self/task/{native_id}/stat")
    except OSError:
        return 0.0


def cpu_s(stat: str) -> float:
    """utime + stime from a /proc stat file (a process: every thread; or one task)."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ccs_periods(log: Path) -> dict[str, list[float]]:
    """CCS (PF 0x12, GB/T 27930-2015: every 50 ms) periods per channel, in ms."""
    times: dict[str, list[float]] = defaultdict(list)
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and "#" in parts[2]:
            can_id = int(parts[2].split("#")[0], 16)
            if (can_id >> 8) & 0xFF00 == 0x1200:
                times[parts[1]].append(float(parts[0].strip("()")))
    return {ch: [(b - a) * 1000.0 for a, b in itertools.pairwise(ts)]
            for ch, ts in times.items()}


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak RSS (VmHWM; this one by default). Not ru_maxrss: Linux carries the
    parent's peak across fork and exec, so every child would report at least its parent's."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def toml_text(doc: dict[str, Any], prefix: str = "") -> str:
    """A pile.toml for `pile-agent run` from the sections LoopbackPile gives (tables,
    arrays of tables, strings, numbers, booleans and lists of them)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    lines = [f"{k} = {value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v
                                                 and isinstance(v[0], dict))]
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines += ["", f"[{name}]", toml_text(v, name + ".")]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += ["", f"[[{name}]]", toml_text(item, name + ".")]
    return "\n".join(lines)


def _pile(guns: int, can_interface: str) -> LoopbackPile:
    cars = [VehicleConfig(start_soc_pct=30.0, target_soc_pct=95.0, vin=f"LBENCH{g:011d}")
            for g in range(1, guns + 1)]
    groups = [GroupSim(g.id, GROUP_A, GROUP_W, g.reach) for g in ring_groups(guns)] \
        if guns > 1 else [GroupSim("G1", GROUP_A, GROUP_W, frozenset({1})),
                          GroupSim("G2", GROUP_A, GROUP_W, frozenset({1}))]
    return LoopbackPile(cars, groups, can_interface=can_interface)


def _ccs_figures(log: Path, mark: int, tmp: str) -> dict[str, Any] | None:
    with open(log, "rb") as fh:
        fh.seek(mark)
        window = Path(tmp) / "window.log"
        window.write_bytes(fh.read())
    periods = [p for ps in ccs_periods(window).values() for p in ps[1:]]
    if not periods:
        return None
    return {"n": len(periods), "p50": round(statistics.median(periods), 1),
            "p99": round(percentile(periods, 0.99), 1), "max": round(max(periods), 1),
            "share_above_55ms": round(sum(p > 55.0 for p in periods) / len(periods), 3)}


async def _window(log: Path, tmp: str, cpu_s: Callable[[], float],
                  agent_pid: int | None = None) -> dict[str, Any]:
    """WINDOW_S of steady charging: the agent's share of one core and its CCS periods; in
    its middle, the sockets of the agent's process and of this one that are not on
    loopback."""
    mark = log.stat().st_size if log.exists() else 0
    cpu0, wall0 = cpu_s(), time.perf_counter()
    await asyncio.sleep(WINDOW_S / 2)
    sockets = {"simulators": off_loopback()}
    if agent_pid is not None:
        sockets["agent"] = off_loopback(agent_pid)
    await asyncio.sleep(WINDOW_S / 2)
    cpu1, wall1 = cpu_s(), time.perf_counter()
    out: dict[str, Any] = {
        "agent_cpu_pct_of_one_core": round(100.0 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        "sockets_off_loopback": sockets}
    ccs = _ccs_figures(log, mark, tmp)
    if ccs is not None:
        out["ccs_period_ms"] = ccs
    return out


async def _until_charging(pile: LoopbackPile, seconds: float = 90.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not all(g.module.current_a > 50.0 for g in pile.guns):
        await asyncio.sleep(0.05)
    return all(g.module.current_a > 50.0 for g in pile.guns)


async def _until_settled(pile: LoopbackPile, seconds: float = 20.0) -> None:
    """The cars' stops have gone through: every gun at <= 5 A."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(abs(g.module.current_a) > 5.0 for g in pile.guns):
        await asyncio.sleep(0.05)


async def measure(guns: int) -> dict[str, Any]:
    """The agent as deployed: `pile-agent run` in a process of its own, its CAN buses
    udp_loopback; where that interface cannot open, the agent in a thread of this process
    on virtual buses."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        with can.Bus(interface="udp_loopback", channel=f"bench-probe-{os.getpid()}"):
            pass
    except (can.CanError, OSError, ImportError, ValueError, NotImplementedError) as exc:
        return {**await measure_in_thread(guns),
                "agent": f"thread of the simulators' process (udp_loopback: {exc})"}
    return await measure_in_process(guns)


async def _scrape(urls: list[str], stop: asyncio.Event) -> int:
    """What Prometheus and an open status page ask of the agent, once a second each (a
    harder pace than a 15 s scrape): the answers counted."""
    def fetch(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5.0) as answer:
                return bool(answer.read())
        except OSError:
            return False

    answered = 0
    while not stop.is_set():
        for url in urls:
            answered += await asyncio.to_thread(fetch, url)
        with contextlib.suppress(TimeoutError):
            await within(stop.wait(), 1.0)
    return answered


async def measure_in_process(guns: int, observe: bool = False) -> dict[str, Any]:
    """observe: the metrics and status endpoints on and scraped every second, and the
    event records as JSON lines to a file; else both endpoints off and stdout discarded."""
    pile = _pile(guns, "udp_loopback")
    devices = await pile.start()
    out: dict[str, Any] = {"guns": guns, "agent": "own process (pile-agent run, CAN over "
                           "udp_loopback: UDP on 127.0.0.1)", "observed": observe}
    status_port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log, config = Path(tmp) / "can.log", Path(tmp) / "pile.toml"
        seen = {"status": {"port": status_port}, "metrics": {"enabled": True,
                                                             "port": metrics_port}} \
            if observe else {"status": {"enabled": False}}
        config.write_text(toml_text({**devices, **seen,
                                     "ledger": {"path": str(Path(tmp) / "l.sqlite")}}))
        events = open(Path(tmp) / "events.jsonl", "w") if observe else None  # noqa: SIM115
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(config), "--can-log",
            str(log), *(["--log-format", "json"] if observe else []),
            stdout=events or asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        stop_scraping = asyncio.Event()
        scraper = asyncio.create_task(_scrape(
            [f"http://127.0.0.1:{metrics_port}/metrics",
             f"http://127.0.0.1:{status_port}/status"], stop_scraping)) if observe else None
        try:
            out["all_charging"] = await _until_charging(pile)
            out.update(await _window(log, tmp, lambda: cpu_s(f"/proc/{proc.pid}/stat"),
                                     proc.pid))
            out["rss_max_mb_agent_process"] = peak_rss_mb(proc.pid)
        finally:
            if scraper is not None:
                stop_scraping.set()
                out["scrapes_answered"] = await scraper
            if events is not None:
                events.close()
                out["event_records"] = len((Path(tmp) / "events.jsonl").read_text().splitlines())
            for g in pile.guns:
                g.bms.request_stop()
            await _until_settled(pile)
            proc.send_signal(signal.SIGTERM)  # the service runs until stopped
            try:
                await within(proc.wait(), 30.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await pile.close()
    out["rss_max_mb_simulators"] = peak_rss_mb()
    out["agent_finished"] = proc.returncode == 0
    if proc.returncode != 0 and proc.stderr is not None:
        out["agent_stderr"] = (await proc.stderr.read()).decode(errors="replace")[-500:]
    return out


async def measure_in_thread(guns: int) -> dict[str, Any]:
    pile = _pile(guns, "virtual")
    devices = await pile.start()
    out: dict[str, Any] = {"guns": guns}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "can.log"
        config = parse_config({**devices, "ledger": {"path": str(Path(tmp) / "l.sqlite")}})
        agent = AgentThread(config, str(log))
        agent.start()
        try:
            out["all_charging"] = await _until_charging(pile)
            out.update(await _window(log, tmp, agent.cpu_s))
        finally:
            for g in pile.guns:
                g.bms.request_stop()
            await _until_settled(pile)
            agent.stop()
            await asyncio.to_thread(agent.thread.join, 30.0)
            await pile.close()
    out["rss_max_mb_whole_process"] = peak_rss_mb()
    out["agent_finished"] = agent.rc == 0
    return out


def main(argv: list[str]) -> int:
    observe = "--observe" in argv
    argv = [a for a in argv if a != "--observe"]
    guns = int(argv[0]) if argv else 1
    if not 1 <= guns <= 36:
        print("usage: python -m hil.bench_scale GUNS (1-36) [--observe]", file=sys.stderr)
        return 2
    figures = asyncio.run(measure_in_process(guns, observe) if observe else measure(guns))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
