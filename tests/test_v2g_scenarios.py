"""V2G scenarios over the real transports (CAN virtual bus, Modbus TCP, SQLite ledger):
the built-in scenario files (hil/scenarios/*.toml), each judged by its own expectations,
and what these tests measure beside them from the CAN log and the verdicts' figures."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from agent.cli import main
from hil.scenario_engine import Verdict
from hil.scenario_file import named
from hil.sim import SimOptions, SimResult, run_sim
from hil.site_clock import parse_hhmm


def _run(name: str, tmp_path: Path) -> tuple[SimResult, Path]:
    log = tmp_path / f"{name}.log"
    result = asyncio.run(run_sim(SimOptions(scenario=named(name), live=False, can_log=str(log),
                                            ledger=str(tmp_path / "ledger.sqlite"))))
    return result, log


def _verdict(result: SimResult, measure: str, contains: str = "") -> Verdict:
    return next(v for v in result.verdicts if v.measure == measure and contains in v.name)


def _figure(v: Verdict) -> float:
    return float(v.measured)


def test_v2g_peak_shaving_charge_discharge_charge(tmp_path: Path) -> None:
    result, log = _run("v2g-peak-shaving", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures
    assert all(v.status == "PASS" for v in result.verdicts)
    phases = [d for _t, d in result.phases]
    assert phases == ["charge", "discharge", "charge"]
    ledger, battery = result.ledger_from_vehicle_kwh, result.battery_energy_out_kwh
    assert ledger is not None and abs(ledger - battery) / battery <= 0.005
    # The CAN log: CCS carries discharge with the standard's sign (§4.5: raw > 4000).
    raws = []
    for line in log.read_text().splitlines():
        m = re.search(r"([0-9A-F]{8})#([0-9A-F]+)", line)
        if m and (int(m.group(1), 16) >> 8) & 0xFF00 == 0x1200:
            raws.append(int.from_bytes(bytes.fromhex(m.group(2))[2:4], "little"))
    assert any(r > 4000 + 1000 for r in raws) and any(r < 4000 - 1000 for r in raws)


def test_a_charge_only_car_still_charges(tmp_path: Path) -> None:
    result, _log = _run("charge-only-car", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures
    assert result.outcome == "finished"
    assert _figure(_verdict(result, "max_discharge_a")) == 0.0


def test_a_frequency_step_moves_the_discharge_by_the_droop_within_a_second(
        tmp_path: Path) -> None:
    result, _log = _run("frequency-step", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures
    # 50.00 -> 49.80 Hz, 36 mHz dead band, 5 % droop of 100 kW: 6.56 kW more discharge.
    assert abs(_figure(_verdict(result, "power_change_w")) - -6560.0) < 330.0
    assert _figure(_verdict(result, "time_to_90pct_s")) <= 1.0


def test_the_vpp_link_drops_mid_discharge_and_the_discharge_stops_on_reversion(
        tmp_path: Path) -> None:
    result, _log = _run("upstream-lost", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures
    assert 10.0 <= _figure(_verdict(result, "discharge_stopped_s")) <= 12.0
    assert [d for _t, d in result.phases] == ["charge", "discharge", "charge"]


def test_ocpp_offline_the_profile_lapses_and_the_events_are_replayed(tmp_path: Path) -> None:
    result, _log = _run("ocpp-offline-replay", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures
    assert 20.0 <= _figure(_verdict(result, "discharge_stopped_s")) <= 23.0
    assert _figure(_verdict(result, "tx_offline_events")) >= 4


def _site_run(tmp_path: Path, start: str, until: str) -> SimResult:
    return asyncio.run(run_sim(SimOptions(
        scenario=named("vpp-peak-shaving-18h"), live=False,
        ledger=str(tmp_path / "ledger.sqlite"),
        site_start_s=parse_hhmm(start), site_end_s=parse_hhmm(until))))


def test_the_vpp_dispatches_at_18_and_releases_at_21_on_the_site_clock(tmp_path: Path) -> None:
    # Both edges of the 18:00-21:00 window, each in a few simulated minutes (the whole
    # evening is `pile-agent sim --scenario vpp-peak-shaving-18h`).
    result = _site_run(tmp_path, "17:59", "18:03")
    assert result.scenario_failures == [], result.scenario_failures
    assert _figure(_verdict(result, "discharge_began_s")) <= 15.0
    # What the run did not reach is N/A, not a pass.
    assert _verdict(result, "discharge_stopped_s").status == "N/A"
    (tmp_path / "late").mkdir()
    result = _site_run(tmp_path / "late", "20:58", "21:04")
    assert result.scenario_failures == [], result.scenario_failures
    assert _figure(_verdict(result, "discharge_stopped_s")) <= 5.0
    assert _verdict(result, "discharge_began_s").status == "N/A"
    assert [d for _t, d in result.phases][-1] == "charge"


def test_the_first_run_is_a_v2g_evening_that_pays_the_owner(
        capsys: pytest.CaptureFixture[str]) -> None:
    # `pile-agent sim` with no flag naming a session: the README's first command.
    assert main(["sim", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "scenario v2g-evening: PASS" in out
    revenue = re.search(r"discharge @ 4 CNY/kWh\s+([\d.]+) kWh", out)
    off_peak = re.search(r"charge @ 0.4 CNY/kWh\s+([\d.]+) kWh", out)
    net = re.search(r"net to the owner\s+([+-][\d.]+) CNY", out)
    assert revenue and off_peak and net, out
    # Discharged at the peak price, charged back off-peak, paid for the difference.
    assert float(revenue.group(1)) > 5.0 and float(off_peak.group(1)) > 5.0
    expected = 4.0 * float(revenue.group(1)) - 0.4 * float(off_peak.group(1))
    assert abs(float(net.group(1)) - expected) < 0.1, out
