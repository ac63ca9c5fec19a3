"""The per-day discharge budget through its real path: the ledger's records of earlier
sessions, found by the car's VIN (from BRM) and counted from local midnight, reach the
session's health limit (never an EnergyHistory event injected by the test)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.core.commands import LedgerInterval
from agent.core.health_policy import HealthPolicy
from agent.ledger.store import Ledger
from hil.ev_bms import VehicleConfig
from hil.scenario_file import named
from hil.sim import SimOptions, SimResult, run_sim

VIN = VehicleConfig().vin  # the simulated car's BRM VIN
DAY_KWH = 20.0  # the operator's budget: 20 kWh discharged a day
# The simulator's clock starts at 2026-01-01 00:00 UTC; the gun's site is at UTC+8 (the
# default utc_offset_h), so its day began at 2026-01-01 00:00 local, 8 hours earlier.
LOCAL_MIDNIGHT = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=8))).timestamp()


def _seed(path: Path, rows: list[tuple[str, float, float]]) -> None:
    """Earlier sessions' intervals: (VIN, end time, kWh discharged)."""
    ledger = Ledger(path)
    for n, (vin, end, kwh) in enumerate(rows):
        ledger.write_interval(f"earlier-{n}", 1, vin, LedgerInterval(
            0, end - 900.0, end, "discharge", 0.0, kwh, 0.0, kwh, "session end"))
    ledger.close()


def _discharge(path: Path) -> SimResult:
    return asyncio.run(run_sim(SimOptions(
        scenario=named("soc-floor"), ledger=str(path), live=False, max_sim_s=240.0,
        health=HealthPolicy(max_discharge_kwh_per_day=DAY_KWH))))


@pytest.fixture(scope="module")
def not_today(tmp_path_factory: pytest.TempPathFactory) -> SimResult:
    path = tmp_path_factory.mktemp("history") / "ledger.sqlite"
    # A minute before local midnight (yesterday), and another car's today: neither counts.
    _seed(path, [(VIN, LOCAL_MIDNIGHT - 60.0, 19.8), ("LOTHERCAR00000001", LOCAL_MIDNIGHT + 60.0,
                                                      19.8)])
    return _discharge(path)


def test_yesterday_and_other_cars_leave_the_budget_whole(not_today: SimResult) -> None:
    # down to the 60 % floor: about 0.65 kWh
    assert not_today.battery_energy_out_kwh > 0.5, not_today.battery_energy_out_kwh


def test_what_this_car_discharged_since_local_midnight_counts(tmp_path: Path,
                                                             not_today: SimResult) -> None:
    path = tmp_path / "ledger.sqlite"
    # A minute after local midnight: 19.8 of the day's 20 kWh are used.
    _seed(path, [(VIN, LOCAL_MIDNIGHT + 60.0, 19.8)])
    result = _discharge(path)
    out = result.battery_energy_out_kwh
    assert 0.1 <= out <= 0.3, out  # 0.2 kWh left, give or take the control's resolution
    assert out < not_today.battery_energy_out_kwh
    assert any("kWh a day" in detail for _t, _kind, detail in result.notices), result.notices
