"""The durable energy ledger: kill -9 at random moments loses no committed record and leaves
none half written; records lists, exports and settles; the meter over Modbus RTU."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.core.commands import LedgerInterval
from agent.core.events import MeterReading
from agent.core.states import State
from agent.ledger.settlement import Tariff, settle
from agent.ledger.store import Ledger, LedgerError
from drivers.dc_meter.link import MeterBusOwner
from drivers.power_module.link import RtuTarget
from hil.ev_bms import VehicleConfig
from hil.meter_sim import MeterSim
from hil.module_sim import ModuleSim
from hil.plant import InProcessPile
from tests.test_module_link import PtyNullModem

ROOT = Path(__file__).resolve().parent.parent


def test_kill_9_at_random_moments_loses_no_committed_interval(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    rng = random.Random(20261202)
    committed: set[int] = set()
    next_seq = 0
    for _round in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "tests.ledger_writer", str(path),
                                 str(next_seq)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is running and has committed at least once
        assert first.strip()
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        said = [int(x) for x in (first + out).split()]
        committed.update(said)
        next_seq = max(said) + 1 + rng.randint(0, 3)  # a gap, as a restart after a loss
    ledger = Ledger(path)
    rows = ledger.intervals("kill-test")
    ledger.close()
    stored = {int(r["seq"]) for r in rows}  # type: ignore[call-overload]
    assert committed <= stored, sorted(committed - stored)[:5]
    # Every row whole: its counters agree with its own sequence number.
    for r in rows:
        n = int(r["seq"]) + 1  # type: ignore[call-overload]
        assert r["to_vehicle_kwh"] == 0.25 and r["from_vehicle_kwh"] == 0.125
        assert r["meter_to_vehicle_kwh"] == n * 0.25
        assert r["meter_from_vehicle_kwh"] == n * 0.125
        assert r["direction"] in ("charge", "discharge") and r["closed_by"] == "quarter hour"
    assert len(stored) >= 12


def test_kill_inside_a_commit_loses_no_reported_interval(tmp_path: Path) -> None:
    """SIGKILL at an fsync (strace's fault injection): the transaction's pages are in the
    WAL, its sync has not returned. Every interval reported is on disk, every row whole. A
    ledger that does not sync each commit (synchronous=OFF, or NORMAL in WAL) is never
    killed here: it writes its 400 intervals and exits, and the test fails."""
    path = tmp_path / "ledger.sqlite"
    rng = random.Random(20261206)
    reported: set[int] = set()
    next_seq = 0
    for _round in range(6):
        when = rng.randint(6, 40)  # the when-th fsync of the process, schema ones included
        proc = subprocess.run(
            ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync,fdatasync",
             "-e", f"inject=fsync,fdatasync:signal=KILL:when={when}",
             sys.executable, "-m", "tests.ledger_writer", str(path), str(next_seq), "400"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, \
            (proc.returncode, "no commit reached an fsync", proc.stderr[-500:])
        said = [int(x) for x in proc.stdout.split()]
        reported.update(said)
        next_seq = max([next_seq, *said]) + 1
    ledger = Ledger(path)
    rows = ledger.intervals("kill-test")
    assert ledger._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ledger.close()
    stored = {int(r["seq"]) for r in rows}  # type: ignore[call-overload]
    assert reported and reported <= stored, sorted(reported - stored)[:5]
    for r in rows:
        n = int(r["seq"]) + 1  # type: ignore[call-overload]
        assert r["meter_to_vehicle_kwh"] == n * 0.25
        assert r["meter_from_vehicle_kwh"] == n * 0.125


def _interval(seq: int, start: float, to_kwh: float, from_kwh: float) -> LedgerInterval:
    return LedgerInterval(seq, start, start + 900.0, "charge" if to_kwh else "discharge",
                          to_kwh, from_kwh, 0.0, 0.0, "quarter hour")


def test_settlement_prices_each_interval_at_its_time_of_use_band(tmp_path: Path) -> None:
    # 2026-01-01 00:00 UTC is 08:00 China Standard Time.
    midnight_cst = 1_767_225_600.0 - 8 * 3600
    tariff = Tariff(charge=((0, 8, 0.4), (8, 24, 1.0)), discharge=((0, 18, 0.0), (18, 24, 4.0)))
    rows: list[dict[str, object]] = [
            {"start_wall": midnight_cst + 2 * 3600, "to_vehicle_kwh": 10.0,
             "from_vehicle_kwh": 0.0},
            {"start_wall": midnight_cst + 19 * 3600, "to_vehicle_kwh": 0.0,
             "from_vehicle_kwh": 5.0},
            {"start_wall": midnight_cst + 12 * 3600, "to_vehicle_kwh": 2.0,
             "from_vehicle_kwh": 1.0}]
    s = settle(rows, tariff, 1)
    assert s.charge_cost_cny == pytest.approx(10 * 0.4 + 2 * 1.0)
    assert s.discharge_revenue_cny == pytest.approx(5 * 4.0)
    assert s.net_cny == pytest.approx(20.0 - 6.0)
    assert Tariff(charge=((0, 8, 0.4),)).problems()
    assert Tariff(charge=((0, 12, 0.4), (10, 24, 1.0))).problems()


def test_records_lists_exports_and_settles(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.write_interval("s1", 1, "LVIN", _interval(1, 1_767_225_600.0, 3.0, 0.0))
    ledger.write_interval("s1", 1, "LVIN", _interval(2, 1_767_226_500.0, 0.0, 2.0))
    with pytest.raises(LedgerError, match="UNIQUE"):  # a settled record is never replaced
        ledger.write_interval("s1", 1, "LVIN", _interval(2, 1_767_226_500.0, 9.0, 9.0))
    assert ledger.discharged_today("LVIN", 1_767_225_600.0) == (2.0, 5.0)
    assert ledger.discharged_today("OTHER", 0.0) == (0.0, 0.0)
    ledger.close()
    toml = tmp_path / "pile.toml"
    toml.write_text("[tariff]\ncharge = [[0, 24, 0.5]]\ndischarge = [[0, 24, 4.0]]\n")
    assert main(["records", "--ledger", str(path), "--tariff", str(toml)]) == 0
    text = capsys.readouterr().out
    assert "charging cost" in text and "1.50 CNY" in text and "8.00 CNY" in text
    assert main(["records", "--ledger", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [i["seq"] for i in doc["intervals"]] == [1, 2]
    assert main(["records", "--ledger", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("session_key,seq")
    toml.write_text("[tariff]\ncharge = [[0, 12, 0.5]]\n")
    assert main(["records", "--ledger", str(path), "--tariff", str(toml)]) == 2
    assert "end at 12.0 h" in capsys.readouterr().err
    assert main(["records", "--ledger", str(tmp_path / "none.sqlite")]) == 2


def test_the_meter_over_modbus_rtu() -> None:
    async def body() -> None:
        modem = PtyNullModem()
        modem.start()
        module = ModuleSim()
        meter = MeterSim(module)
        module.current_a, module.output_voltage_v, module.gun_voltage_v = -120.0, 380.0, 380.0
        meter.step(3600.0)  # an hour at -120 A, 380 V: 45.6 kWh from the vehicle
        server = await meter.start_rtu(modem.paths[0], baudrate=9600)
        owner = MeterBusOwner(RtuTarget(modem.paths[1], baudrate=9600))
        try:
            events = await owner.service(1.0)
            reading = events[0]
            assert type(reading).__name__ == "MeterReading", events
            assert reading.current_a == pytest.approx(-120.0)  # type: ignore[union-attr]
            assert reading.from_vehicle_kwh == pytest.approx(45.6)  # type: ignore[union-attr]
            assert reading.to_vehicle_kwh == 0.0  # type: ignore[union-attr]
        finally:
            await owner.close()
            await server.stop()
            modem.close()

    asyncio.run(body())


def test_the_meter_cross_check_needs_a_persistent_disagreement() -> None:
    from agent.core.events import MeterReading
    from agent.core.metering import Metering

    m = Metering()
    reading = MeterReading(0.0, 380.0, -100.0, -38000.0, 1.0, 2.0)
    # A ramp: the module reads 20 A off for 3 s, then agrees: no fault.
    assert not any(m.cross_check(reading, -80.0, t) for t in (0.0, 1.0, 2.0, 3.0))
    assert not m.cross_check(reading, -99.0, 4.0)
    # Within 2 % (or 2 A) is agreement; 10 % off for more than 5 s is a fault.
    assert not any(m.cross_check(reading, -101.5, t) for t in range(5, 20))
    verdicts = [m.cross_check(reading, -90.0, float(t)) for t in range(20, 27)]
    assert verdicts == [False] * 6 + [True]
    # No module reading to compare with: no verdict either way.
    assert not m.cross_check(reading, None, 30.0)


@pytest.mark.parametrize(("module_a", "meter_a", "fault"), [
    (200.0, 203.8, False), (200.0, 204.2, True),    # 1.9 % and 2.1 % at 200 A
    (-150.0, -152.85, False), (-150.0, -153.15, True),  # the same, discharging
    (50.0, 51.9, False), (50.0, 52.1, True),        # below 100 A the 2 A floor binds
])
def test_the_meter_cross_check_on_both_sides_of_its_line(module_a: float, meter_a: float,
                                                         fault: bool) -> None:
    """JJG 1149 class 1 meter (+-1 %) against the module's +-1 %: more than 2 % apart (never
    less than 2 A) for over 5 s is a fault; just inside it never is."""
    from agent.core.events import MeterReading
    from agent.core.metering import Metering

    m = Metering()
    reading = MeterReading(0.0, 400.0, meter_a, 400.0 * meter_a, 1.0, 2.0)
    verdicts = [m.cross_check(reading, module_a, float(t)) for t in range(8)]
    assert any(verdicts) is fault, verdicts
    if fault:
        assert verdicts.index(True) == 6  # after more than 5 s, not before


def test_a_meter_whose_counters_go_backwards_is_re_based_not_lost() -> None:
    from agent.core.events import MeterReading
    from agent.core.metering import Metering

    m = Metering()

    def at(t: float, to_kwh: float, from_kwh: float) -> object:
        return m.on_reading(MeterReading(t, 380.0, 10.0, 3800.0, to_kwh, from_kwh),
                            1000.0 + t, "charge", True)

    assert at(0.0, 100.0, 50.0) is None
    assert at(60.0, 101.0, 50.0) is None
    closed = at(120.0, 0.0, 0.0)  # the meter was swapped
    assert closed is not None and closed.to_vehicle_kwh == 1.0  # type: ignore[attr-defined]
    assert at(180.0, 0.5, 0.25) is None
    assert m.to_vehicle_kwh == 1.5 and m.from_vehicle_kwh == 0.25
    assert "backwards" in m.note
    last = m.finish(1200.0, "session end")
    assert last is not None and last.to_vehicle_kwh == 0.5


def _charging_pile() -> InProcessPile:
    p = InProcessPile(vehicle=VehicleConfig(start_soc_pct=30.0, target_soc_pct=95.0))
    p.plug_in()
    # Charging and done ramping up (two module samples agree): a meter check's 5 s then
    # start at once, not after the ramp, whenever in the sequence charging began.
    assert p.run_until(lambda q: q.session.state is State.CHARGING
                       and q.module.current_a > 100.0 and q.session.plant.current_steady,
                       30.0)
    return p


def _meter_reads(p: InProcessPile, seconds: float, scale: float,
                 demand: Callable[[float], float] | None = None) -> None:
    """A meter read every second, `scale` times the module's true current; `demand` moves
    the car's demand meanwhile (a ramp the module follows)."""
    kwh = 0.0
    end = p.t + seconds
    while p.t < end:
        if demand is not None:
            p.bms.demand_override_a = demand(p.t)
        extra = []
        if abs(p.t - round(p.t)) < 1e-6:
            amps = p.module.current_a * scale
            kwh += amps * p.module.output_voltage_v / 3.6e6
            extra.append(MeterReading(p.t, p.module.output_voltage_v, amps,
                                      amps * p.module.output_voltage_v, kwh, 0.0))
        p.step(extra)


def test_a_steady_meter_disagreement_ends_the_session() -> None:
    p = _charging_pile()
    _meter_reads(p, 8.0, 1.10)  # 10 % high, steady
    assert p.session.state is State.FAULT
    assert "metering not trustworthy" in p.session.data.outcome_reason


def test_a_meter_read_while_the_current_ramps_is_not_judged() -> None:
    # The car's demand swings between 120 and 220 A every second: the module ramps at
    # 100 A/s most of the time, so a meter read and a module sample apart in time differ.
    p = _charging_pile()
    _meter_reads(p, 12.0, 1.0, demand=lambda t: 120.0 if int(t) % 2 else 220.0)
    assert p.session.state is State.CHARGING, p.session.data.outcome_reason


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5), st.integers(1, 40), st.integers(0, 5),
       st.lists(st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.05), st.booleans()),
                min_size=60, max_size=60),
       st.floats(800.0, 1000.0))
def test_the_intervals_hold_all_of_a_sessions_energy(
        before: int, during: int, after: int,
        steps: list[tuple[float, float, bool]], wall0: float) -> None:
    """Whatever flows between the meter's readings (before the transfer began, across a
    quarter hour, a direction change or the stop), the intervals add up to the session:
    none of the billing energy falls between two of them."""
    from agent.core.metering import Metering

    m, closed = Metering(), []
    to = fro = 0.0
    direction = "charge"
    n = before + during + after
    for k in range(n):
        dto, dfrom, flip = steps[k % len(steps)]
        to, fro = to + dto, fro + dfrom
        in_transfer = before <= k < before + during
        if in_transfer and flip:
            direction = "discharge" if direction == "charge" else "charge"
        r = MeterReading(float(k), 400.0, 0.0, 0.0, to, fro)
        c = m.on_reading(r, wall0 + 7.0 * k, direction, in_transfer)  # quarters cross
        closed += [c] if c is not None else []
    last = m.finish(wall0 + 7.0 * n, "session end")
    closed += [last] if last is not None else []
    assert closed
    assert sum(c.to_vehicle_kwh for c in closed) == pytest.approx(
        m.to_vehicle_kwh, abs=1e-6 * len(closed))
    assert sum(c.from_vehicle_kwh for c in closed) == pytest.approx(
        m.from_vehicle_kwh, abs=1e-6 * len(closed))
