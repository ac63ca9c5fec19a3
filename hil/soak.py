"""`pile-agent bench --soak MINUTES`: the service as it runs in the field, for minutes or
hours of real time, and what it costs and keeps.

Three processes: the served pile (`pile-agent hil serve`: short sessions, cars with a few
tenths of a kWh, back to back, half of them V2G), the agent (`pile-agent run`, with its CAN
traffic logged in candump format), and this one, which is the hil central system (OCPP
2.1) and a site EMS (SunSpec: reads every gun's port, and keeps a pile-level discharge
setpoint written so the V2G cars discharge). At the end the agent gets SIGTERM and the
figures come from what the others saw and what the ledger holds:

- sessions per gun, and how they ended (faults counted);
- the agent's RSS at the start of the window, half way and at its end (growth per hour,
  over the whole window and over its second half, after the caches are warm), its CPU
  share of one core over the window, the CCS period's median and p99 while charging;
- ledger intervals lost or duplicated (each session's must run 1, 2, 3, ... with no gap),
  OCPP transaction events lost or duplicated (each transaction's seqNo 0..n, Started
  first, Ended last, one ledger session per transaction): all must be 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from agent.ledger.store import Ledger
from drivers.sunspec.codec import layout, load_map
from hil.bench_scale import ccs_periods, percentile
from hil.csms_sim import Csms
from hil.loopback_pile import free_port

PASSWORD = "0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]
# A car in ten falls silent mid-session: the agent ends that session on the timeout and
# serves the next car once it is unplugged (faults are part of a soak, not an exception).
FAULT_SHARE = 0.1
WARM_UP_S = 10.0  # the window starts after the agent's start-up (imports, first cars)
# A CCS gap longer than this is the pause between two sessions, not a late message.
SESSION_GAP_MS = 500.0


def pile_toml(tmp: Path, guns: int, ems_port: int, ocpp_port: int) -> Path:
    """A pile of `guns` V2G guns on loopback, with the EMS and OCPP on."""
    tag = uuid.uuid4().hex[:8]
    lines = [f'[ledger]\npath = "{tmp / "ledger.sqlite"}"\n',
             f'[ems]\nenabled = true\nport = {ems_port}\nallow_discharge = true\n',
             f'[ocpp]\nenabled = true\nurl = "ws://127.0.0.1:{ocpp_port}/ocpp"\n'
             f'station_id = "SOAK-{tag}"\npassword = "{PASSWORD}"\nmeter_interval_s = 10.0\n']
    for n in range(1, guns + 1):
        lines.append(
            f'[[gun]]\ncharger_number = {n}\nmax_discharge_current_a = 150.0\n'
            f'max_discharge_power_w = 60000.0\n'
            f'can = {{ interface = "udp_loopback", channel = "soak-{tag}-gun{n}" }}\n'
            f'modbus = {{ transport = "tcp", port = {free_port()} }}\n'
            f'safety_bus = {{ enabled = true, transport = "tcp", port = {free_port()} }}\n'
            f'meter = {{ enabled = true, transport = "tcp", port = {free_port()} }}\n')
    path = tmp / "pile.toml"
    path.write_text("\n".join(lines))
    return path


@contextlib.contextmanager
def process(args: list[str], tmp: Path, log: str) -> Iterator[subprocess.Popen[bytes]]:
    """`pile-agent ARGS` as a child process, its output in tmp/log; killed if left. It
    shares this process's environment, so a udp_loopback channel opened here meets its."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp / log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@dataclass
class SiteEms:
    """Reads every gun's 714 port state twice a second; keeps a pile-level WSet of
    `discharge_w` written (SunSpec's sign: + injects, so the vehicles discharge)."""

    port: int
    n_ports: int
    discharge_w: float = 0.0
    reads: list[tuple[float, int, int]] = field(default_factory=list)  # (t, gun, DCSta)
    failed_reads: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        lay = layout(*load_map(), n_ports=self.n_ports)
        client = AsyncModbusTcpClient("127.0.0.1", port=self.port)
        for _ in range(300):
            if await client.connect():
                break
            await asyncio.sleep(0.1)
        written_at = -1e9
        try:
            while not stop.is_set():
                for i in range(self.n_ports):
                    try:
                        r = await client.read_holding_registers(
                            lay.address_of(f"Prt[{i}].DCSta"), count=1)
                        state = -1 if r.isError() else int(r.registers[0])
                    except Exception:
                        state = -1
                    self.failed_reads += state < 0
                    self.reads.append((time.monotonic(), i + 1, state))
                if self.discharge_w and time.monotonic() - written_at > 10.0:
                    watts = int(self.discharge_w)
                    with contextlib.suppress(Exception):
                        await client.write_registers(lay.address_of("WSetRvrtTms"), [0, 60])
                        await client.write_registers(lay.address_of("WSet"),
                                                     [(watts >> 16) & 0xFFFF, watts & 0xFFFF])
                        await client.write_register(lay.address_of("WSetEna"), 1)
                        written_at = time.monotonic()
                await asyncio.sleep(0.5)
        finally:
            client.close()


def _proc_figures(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def ledger_audit(path: Path) -> dict[str, Any]:
    """Sessions per gun, outcomes, and intervals lost or duplicated per session."""
    ledger = Ledger(path, read_only=True)
    try:
        sessions = ledger.sessions()
        lost = duplicated = 0
        for s in sessions:
            seqs = [int(str(i["seq"])) for i in ledger.intervals(str(s["session_key"]))]
            duplicated += len(seqs) - len(set(seqs))
            # Numbered from 1 in each session (agent/core/metering.py).
            lost += len(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
    finally:
        ledger.close()
    per_gun: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for s in sessions:
        per_gun[str(s["gun"])] = per_gun.get(str(s["gun"]), 0) + 1
        outcomes[str(s["outcome"])] = outcomes.get(str(s["outcome"]), 0) + 1
    return {"sessions": len(sessions), "sessions_per_gun": per_gun, "outcomes": outcomes,
            "faults": outcomes.get("fault", 0), "intervals_lost": lost,
            "intervals_duplicated": duplicated,
            "discharged_kwh": round(sum(float(str(s["from_vehicle_kwh"] or 0))
                                        for s in sessions), 3),
            "reasons": sorted({str(s["stop_reason"]) for s in sessions})}


def ocpp_audit(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per transaction: seqNo 0..n without gaps or repeats, Started first, Ended last."""
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_tx.setdefault(e["transaction_info"]["transaction_id"], []).append(e)
    lost = duplicated = unended = wrong_evse = 0
    per_evse: dict[str, int] = {}
    for evs in by_tx.values():
        seqs = [int(e["seq_no"]) for e in evs]
        duplicated += len(seqs) - len(set(seqs))
        lost += max(seqs) + 1 - len(set(seqs))
        unended += evs[-1]["event_type"] != "Ended" or evs[0]["event_type"] != "Started"
        evse = {e["evse"]["id"] for e in evs}
        wrong_evse += len(evse) != 1
        key = str(min(evse))
        per_evse[key] = per_evse.get(key, 0) + 1
    return {"transactions": len(by_tx), "transactions_per_evse": per_evse,
            "events_lost": lost, "events_duplicated": duplicated,
            "transactions_not_started_and_ended": unended, "transactions_on_two_evses":
            wrong_evse}


async def soak(minutes: float, guns: int = 4, seed: int = 1, workdir: Path | None = None,
               fault_share: float = FAULT_SHARE) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        return await _soak(tmp, minutes, guns, seed, fault_share)


async def _soak(tmp: Path, minutes: float, guns: int, seed: int,
                fault_share: float) -> dict[str, Any]:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the EMS's first connects
    csms = Csms(password=PASSWORD)
    csms_port, ems_port = await csms.start(), free_port()
    cfg = pile_toml(tmp, guns, ems_port, csms_port)
    log = tmp / "can.log"
    ems = SiteEms(ems_port, guns, discharge_w=20_000.0 * guns / 2)
    stop = asyncio.Event()
    try:
        with process(["hil", "serve", "--config", str(cfg), "--seed", str(seed),
                      "--v2g-share", "0.5", "--stay-s", "20",
                      "--fault-share", str(fault_share)], tmp, "serve.log") as served, \
                process(["run", "--config", str(cfg), "--can-log", str(log)], tmp,
                        "run.log") as agent:
            reader = asyncio.create_task(ems.run(stop))
            await asyncio.sleep(WARM_UP_S)
            rss0, cpu0 = _proc_figures(agent.pid)
            t0 = time.monotonic()
            rss_half: float | None = None
            while time.monotonic() - t0 < minutes * 60 and agent.poll() is None \
                    and served.poll() is None:
                if rss_half is None and time.monotonic() - t0 >= minutes * 30:
                    rss_half = _proc_figures(agent.pid)[0]  # caches warm by now
                await asyncio.sleep(0.5)
            window_s = time.monotonic() - t0
            alive = agent.poll() is None
            rss1, cpu1 = _proc_figures(agent.pid) if alive else (0.0, cpu0)
            stop.set()
            await reader
            agent.send_signal(signal.SIGTERM)
            t_stop = time.monotonic()
            rc = await asyncio.get_running_loop().run_in_executor(None, agent.wait, 15)
            stop_s = time.monotonic() - t_stop
    finally:
        await csms.stop()
    periods = [p for ps in ccs_periods(log).values() for p in ps if p <= SESSION_GAP_MS]
    hours = window_s / 3600.0
    result: dict[str, Any] = {
        "minutes": round(window_s / 60.0, 2), "guns": guns,
        "cars_falling_silent": int((tmp / "serve.log").read_text().count("fell silent")),
        "agent_exit_code": rc, "agent_alive_through_the_window": alive,
        "stop_s": round(stop_s, 2),
        "rss_mb_start": round(rss0, 1), "rss_mb_end": round(rss1, 1),
        "rss_growth_mb_per_h": round((rss1 - rss0) / hours, 1) if hours > 0 else None,
        # Over the second half only: the first fills SQLite's page caches and the
        # allocator's pools, so a leak shows here, warm-up does not.
        "rss_mb_half_way": round(rss_half, 1) if rss_half is not None else None,
        "rss_growth_mb_per_h_second_half": round((rss1 - rss_half) / (hours / 2), 1)
        if rss_half is not None and hours > 0 else None,
        "cpu_pct_of_one_core": round(100.0 * (cpu1 - cpu0) / window_s, 1) if window_s else None,
        "ccs_period_ms": {"n": len(periods),
                          "p50": round(sorted(periods)[len(periods) // 2], 1) if periods
                          else None,
                          "p99": round(percentile(periods, 0.99), 1) if periods else None},
        "ems_reads": len(ems.reads), "ems_failed_reads": ems.failed_reads,
        "ems_port_states_seen": {str(g): sorted({s for _, n, s in ems.reads if n == g})
                                 for g in range(1, guns + 1)},
        "ledger": ledger_audit(tmp / "ledger.sqlite"),
        "ocpp": {**ocpp_audit(csms.of("TransactionEvent")),
                 "boot_notifications": len(csms.of("BootNotification")),
                 "connector_statuses": {
                     str(n): sorted({s["connector_status"]
                                     for s in csms.of("StatusNotification")
                                     if s["evse_id"] == n}) for n in range(1, guns + 1)}},
    }
    return result
