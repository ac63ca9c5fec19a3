"""`pile-agent hil car`: the simulated car against a charger it knows only by CAN, and the
charger verdicts from the trace (hil/charger_verdicts.py).

Against our agent (`pile-agent run`, a process of its own, its hardware served by
`pile-agent hil serve --external-cars` in a third): every case it can judge is PASS. Against
chargers that break one rule each (our agent's CAN output stage broken in one way: a charger
that overshoots the demand, one that misses periods, one that skips CRM(0xAA)): the right
case FAILs with the frame that broke it. And the verdicts on the real recorded chargers."""

from __future__ import annotations

import asyncio
import itertools
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.core.messages import CCS, CRM
from drivers.gbt27930.candump import read_candump
from hil.charger_verdicts import CaseVerdict, judge
from hil.loopback_pile import free_port
from hil.sim import SimOptions, SimulatedPile
from hil.soak import process

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gbt27930"
CAR = """
[scenario]
name = "bench-car"
description = "a 2015 car from 70 % to 71 %"

[car]
start_soc_pct = 70.0
target_soc_pct = 71.0

[[expect]]
measure = "outcome"
equals = "finished"
"""


def _status(verdicts: list[CaseVerdict]) -> dict[str, str]:
    return {v.case.id: v.status for v in verdicts}


def test_the_car_against_pile_agent_run_in_another_process(tmp_path: Path) -> None:
    channel = f"hil-car-{time.monotonic_ns() % 10**9}"
    car = tmp_path / "car.toml"
    car.write_text(CAR)
    pile = tmp_path / "pile.toml"
    pile.write_text(
        f'[ledger]\npath = "{tmp_path / "ledger.sqlite"}"\n[status]\nport = {free_port()}\n'
        f'[[gun]]\ncharger_number = 1\n'
        f'can = {{ interface = "udp_loopback", channel = "{channel}" }}\n'
        f'modbus = {{ transport = "tcp", port = {free_port()} }}\n'
        f'safety_bus = {{ enabled = true, transport = "tcp", port = {free_port()} }}\n'
        f'meter = {{ enabled = true, transport = "tcp", port = {free_port()} }}\n')
    report = tmp_path / "report"
    with process(["hil", "serve", "--config", str(pile), "--external-cars", str(car)],
                 tmp_path, "serve.log") as served:
        _wait_for(tmp_path / "serve.log", "served on loopback", served)
        with process(["run", "--config", str(pile)], tmp_path, "agent.log") as agent:
            time.sleep(1.0)  # the agent's links up
            with process(["hil", "car", "--can", f"udp_loopback:{channel}", "--scenario",
                          str(car), "--max-s", "120", "--report", str(report)],
                         tmp_path, "car.log") as tester:
                code = tester.wait(180)
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
    out = (tmp_path / "car.log").read_text()
    assert code == 0, out[-4000:] + (tmp_path / "agent.log").read_text()[-3000:]
    assert "the session ended (BSD/CSD)" in out
    # The verdicts, again, from the report's BLF as python-can reads it.
    import can

    frames = [(m.timestamp, m.arbitration_id, bytes(m.data))
              for m in can.BLFReader(str(report / "can.blf"))]
    verdicts = judge(frames)
    status = _status(verdicts)
    assert "FAIL" not in status.values(), [v for v in verdicts if v.status == "FAIL"]
    # What a whole session lets it judge, it judged.
    for case in ("DN.L01", "DN.L02", "DN.L03", "DN.H02", "DN.H03", "DN.C01", "DN.C02",
                 "DN.E01", "DN.E02", "DN.E03", "DN.E04", "DN.E05", "DN.E06", "DN.S01",
                 "DN.S03"):
        assert status[case] == "PASS", (case, verdicts)
    cases = ET.parse(report / "junit.xml").getroot().findall(".//testcase")
    assert len(cases) == len(verdicts) and not any(c.find("failure") is not None
                                                   for c in cases)


def _wait_for(log: Path, text: str, proc: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.exists() and text in log.read_text():
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {log}: {log.read_text() if log.exists() else ''}")


# ---- chargers that break one rule -----------------------------------------------------------

def _broken_run(tmp_path: Path, breaks: Callable[[Any, float, Callable[..., None]], None],
                ) -> list[CaseVerdict]:
    """Our agent with its CAN output stage broken one way, against the simulated car."""
    return judge(read_candump(_broken_log(tmp_path, breaks)))


def _as_sent(message: Any, t: float, send: Callable[..., None]) -> None:
    send(message, t)


def _broken_log(tmp_path: Path,
                breaks: Callable[[Any, float, Callable[..., None]], None] = _as_sent) -> Path:
    log = tmp_path / "broken.log"

    async def body() -> None:
        options = SimOptions(start_soc_pct=70.0, target_soc_pct=71.0, live=False,
                             can_log=str(log), max_sim_s=240.0)
        async with SimulatedPile(options) as pile:
            real_send = pile.charger_link.send

            def send(message: Any, t: float) -> None:
                breaks(message, t, real_send)

            pile.charger_link.send = send  # type: ignore[method-assign]
            await pile.run()

    asyncio.run(body())
    return log


def test_a_charger_that_overshoots_the_demand_fails_dn_e03(tmp_path: Path) -> None:
    def overshoot(message: Any, t: float, send: Callable[..., None]) -> None:
        if isinstance(message, CCS) and message.output_current_a > 20.0:
            message = CCS(message.output_voltage_v, message.output_current_a + 20.0,
                          message.charging_min, message.permitted)
        send(message, t)

    verdicts = _broken_run(tmp_path, overshoot)
    failed = {v.case.id: v for v in verdicts if v.status == "FAIL"}
    assert "DN.E03" in failed, verdicts
    assert "CCS" in failed["DN.E03"].frame and "demand" in failed["DN.E03"].detail
    assert set(failed) <= {"DN.E03", "DN.E04", "DN.E06"}, failed


def test_a_charger_that_misses_periods_fails_dn_e01(tmp_path: Path) -> None:
    sent = {"n": 0}

    def every_other(message: Any, t: float, send: Callable[..., None]) -> None:
        if isinstance(message, CCS):
            sent["n"] += 1
            if sent["n"] % 2 == 0:
                return  # one CCS in two never leaves: 100 ms between them
        send(message, t)

    verdicts = _broken_run(tmp_path, every_other)
    failed = {v.case.id: v for v in verdicts if v.status == "FAIL"}
    assert set(failed) == {"DN.E01"}, failed
    assert "median interval 100.0 ms" in failed["DN.E01"].detail


def test_a_charger_that_skips_crm_aa_fails_dn_h03(tmp_path: Path) -> None:
    def no_recognition(message: Any, t: float, send: Callable[..., None]) -> None:
        if isinstance(message, CRM) and message.recognized:
            return
        send(message, t)

    verdicts = _broken_run(tmp_path, no_recognition)
    failed = {v.case.id: v for v in verdicts if v.status == "FAIL"}
    assert "DN.H03" in failed, verdicts
    assert "no CRM(0xAA) after the car's BRM" in failed["DN.H03"].detail


def test_frames_stamped_per_task_cycle_are_still_a_timed_trace(tmp_path: Path) -> None:
    # A trace in which a logger stamps each 50 ms task cycle's frames alike (so most
    # neighbours are equal) still has a clock: CCS periods are judged on it.
    frames = list(read_candump(_broken_log(tmp_path)))
    stamped = [(round(t * 20) / 20, i, d) for t, i, d in frames]  # the 50 ms cycle's stamp
    equal = sum(1 for a, b in itertools.pairwise(stamped) if a[0] == b[0])
    assert equal > len(stamped) / 2, "the draw should have most neighbours equal"
    status = _status(judge(stamped))
    assert status["DN.E01"] == "PASS" and status["DN.E02"] == "PASS", status
    # A logger that stamps everything alike is still judged on order only.
    flat = _status(judge([(1.0, i, d) for _, i, d in frames]))
    assert flat["DN.E01"] == "N/A" and flat["DN.E03"] == "PASS", flat


# ---- recorded chargers, and the command -----------------------------------------------------

def test_the_real_recorded_chargers(capsys: pytest.CaptureFixture[str]) -> None:
    # session-b: a whole session from a real charger; its logger stamped frames alike, so
    # order is judged and periods are not.
    b = _status(judge(read_candump(DATA / "session-b.candump.log")))
    assert "FAIL" not in b.values()
    assert b["DN.E01"] == "N/A" and b["DN.E03"] == "PASS" and b["DN.H03"] == "PASS"
    # session-a: that charger never answered the car's BRM (no CTS: the car aborted) and
    # still sent CRM(0xAA).
    a = judge(read_candump(DATA / "session-a.candump.log"))
    assert {v.case.id for v in a if v.status == "FAIL"} == {"DN.L03", "DN.H03"}
    assert main(["hil", "judge", str(DATA / "session-a.candump.log")]) == 1
    out = capsys.readouterr().out
    assert "DN.H03  FAIL" in out and "1801F456#AA" in out
    assert main(["hil", "judge", str(DATA / "session-b.candump.log")]) == 0


def test_bad_flags_are_one_line_errors(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hil", "car", "--can", "can0"]) == 2
    assert "INTERFACE:CHANNEL" in capsys.readouterr().err
    plant = tmp_path / "plant.toml"
    plant.write_text(CAR + '\n[[step]]\nname = "trip"\nat_s = 1.0\n'
                     'set = { "module.silent" = true }\n')
    assert main(["hil", "car", "--can", "udp_loopback:x", "--scenario", str(plant)]) == 2
    assert "a car against a charger can only act on itself" in capsys.readouterr().err
    assert main(["hil", "judge", str(tmp_path / "missing.log")]) == 2
    broken = tmp_path / "broken.blf"
    broken.write_bytes(b"LOGG\x00\x01 not a whole header")
    assert main(["hil", "judge", str(broken)]) == 2
    assert "not a readable CAN trace" in capsys.readouterr().err


def test_bench_mode_serves_only_what_is_not_real(tmp_path: Path) -> None:
    """A device on a serial line is the bench's real one: `hil serve` simulates the rest
    (here the output unit and the I/O board) and says which it left to the hardware."""
    from agent.runtime.config import load_config
    from hil.ev_bms import VehicleConfig
    from hil.served_pile import ServedPile, loopback_problems

    pile = tmp_path / "pile.toml"
    pile.write_text(
        f'[[gun]]\ncharger_number = 1\n'
        f'can = {{ interface = "udp_loopback", channel = "bench-{time.monotonic_ns()}" }}\n'
        f'modbus = {{ transport = "tcp", port = {free_port()} }}\n'
        f'safety_bus = {{ enabled = true, transport = "tcp", port = {free_port()} }}\n'
        'meter = { enabled = true, transport = "rtu", serial_port = "/dev/ttyUSB-meter" }\n')
    config = load_config(str(pile))
    assert loopback_problems(config) == []
    said: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            said.append(text)

        def flush(self) -> None:
            pass

    async def body() -> int:
        served = ServedPile(config, out=Out(), external=VehicleConfig())  # type: ignore[arg-type]
        await served.start()
        try:
            return len(served._servers)
        finally:
            await served.close()

    assert asyncio.run(body()) == 2  # the output unit and the I/O board, not the meter
    assert any("DC meter on /dev/ttyUSB-meter is the bench's real one" in s for s in said)
