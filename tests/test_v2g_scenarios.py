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
