"""V2G scenarios over the real transports (CAN virtual bus, Modbus TCP, SQLite ledger):
the issue's acceptance runs. Each scenario checks its own expectations (hil/scenarios.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from hil.sim import SimOptions, run_sim


def _run(name: str, tmp_path: Path) -> tuple[object, Path]:
    log = tmp_path / f"{name}.log"
    result = asyncio.run(run_sim(SimOptions(scenario=name, live=False, can_log=str(log),
                                            ledger=str(tmp_path / "ledger.sqlite"))))
    return result, log


def test_v2g_peak_shaving_charge_discharge_charge(tmp_path: Path) -> None:
    result, log = _run("v2g-peak-shaving", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    phases = [d for _t, d in result.phases]  # type: ignore[attr-defined]
    assert phases == ["charge", "discharge", "charge"]
    ledger = result.ledger_from_vehicle_kwh  # type: ignore[attr-defined]
    battery = result.battery_energy_out_kwh  # type: ignore[attr-defined]
    assert abs(ledger - battery) / battery <= 0.005
    # The CAN log: CCS carries discharge with the standard's sign (§4.5: raw > 4000).
    raws = []
    for line in log.read_text().splitlines():
        m = re.search(r"([0-9A-F]{8})#([0-9A-F]+)", line)
        if m and (int(m.group(1), 16) >> 8) & 0xFF00 == 0x1200:
            raws.append(int.from_bytes(bytes.fromhex(m.group(2))[2:4], "little"))
    assert any(r > 4000 + 1000 for r in raws) and any(r < 4000 - 1000 for r in raws)


def test_a_charge_only_car_still_charges(tmp_path: Path) -> None:
    result, _log = _run("charge-only-car", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    assert result.outcome == "finished"  # type: ignore[attr-defined]


def test_a_frequency_step_moves_the_discharge_by_the_droop_within_a_second(
        tmp_path: Path) -> None:
    result, _log = _run("frequency-step", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    response = next(n for n in result.scenario_script if "response" in n)  # type: ignore[attr-defined]
    m = re.search(r"(-?[\d.]+) kW -> (-?[\d.]+) kW .* in ([\d.]+) s", response)
    assert m is not None, response
    before, after, seconds = (float(g) for g in m.groups())
    # 50.00 -> 49.80 Hz, 36 mHz dead band, 5 % droop of 100 kW: 6.56 kW more discharge.
    assert abs((after - before) - -6.56) < 0.33
    assert seconds <= 1.0


def test_the_vpp_link_drops_mid_discharge_and_the_discharge_stops_on_reversion(
        tmp_path: Path) -> None:
    result, _log = _run("upstream-lost", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    script = "\n".join(result.scenario_script)  # type: ignore[attr-defined]
    m = re.search(r"discharge stopped ([\d.]+) s after the last write", script)
    assert m is not None and 10.0 <= float(m.group(1)) <= 12.0, script
    assert [d for _t, d in result.phases] == ["charge", "discharge", "charge"]  # type: ignore[attr-defined]


def test_ocpp_offline_the_profile_lapses_and_the_events_are_replayed(tmp_path: Path) -> None:
    result, _log = _run("ocpp-offline-replay", tmp_path)
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    script = "\n".join(result.scenario_script)  # type: ignore[attr-defined]
    m = re.search(r"discharge stopped ([\d.]+) s after the link was lost", script)
    assert m is not None and 20.0 <= float(m.group(1)) <= 23.0, script
    m = re.search(r"(\d+) recorded offline and replayed", script)
    assert m is not None and int(m.group(1)) >= 4, script


def _site_run(tmp_path: Path, start: str, until: str) -> object:
    from hil.scenarios import parse_hhmm

    return asyncio.run(run_sim(SimOptions(
        scenario="vpp-peak-shaving-18h", live=False, ledger=str(tmp_path / "ledger.sqlite"),
        site_start_s=parse_hhmm(start), site_end_s=parse_hhmm(until))))


def test_the_vpp_dispatches_at_18_and_releases_at_21_on_the_site_clock(tmp_path: Path) -> None:
    # Both edges of the 18:00-21:00 window, each in a few simulated minutes (the whole
    # evening is `pile-agent sim --scenario vpp-peak-shaving-18h`).
    result = _site_run(tmp_path, "17:59", "18:03")
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    script = "\n".join(result.scenario_script)  # type: ignore[attr-defined]
    m = re.search(r"discharge began ([\d.]+) s after 18:00", script)
    assert m is not None and float(m.group(1)) <= 15.0, script
    (tmp_path / "late").mkdir()
    result = _site_run(tmp_path / "late", "20:58", "21:04")
    assert result.scenario_failures == [], result.scenario_failures  # type: ignore[attr-defined]
    script = "\n".join(result.scenario_script)  # type: ignore[attr-defined]
    m = re.search(r"discharge stopped ([\d.]+) s after the 21:00 release", script)
    assert m is not None and float(m.group(1)) <= 5.0, script
    assert [d for _t, d in result.phases][-1] == "charge"  # type: ignore[attr-defined]
