"""End to end over real transports: python-can virtual bus + Modbus TCP on loopback.

One short session (50 % -> 53 % SOC) through `hil.sim`, checked from the outside: the
agent's CAN log decoded by an independent decoder, the energy the battery took, and
every commanded current against the limits in force when it was decided.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
from pathlib import Path

import pytest

from drivers.gbt27930.candump import read_candump
from hil.sim import SimOptions, SimResult, run_sim
from tests.independent_gbt_decoder import decode_log

# Phases in bus order; within a group the first appearances may interleave (the car
# starts BCL, BCS and BSM together, and the charger answers with CCS).
EXPECTED_GROUPS = [["CHM"], ["BHM"], ["CRM"], ["BRM"], ["BCP"], ["CML"], ["BRO"], ["CRO"],
                   ["BCL", "BCS", "BSM", "CCS"], ["BST"], ["CST"], ["BSD"], ["CSD"]]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimResult, Path]:
    log = tmp_path_factory.mktemp("e2e") / "session.candump.log"
    options = SimOptions(start_soc_pct=50.0, target_soc_pct=53.0, can_log=str(log), live=False,
                         max_sim_s=600.0)
    return asyncio.run(run_sim(options)), log


def test_session_finishes_with_the_expected_states(session: tuple[SimResult, Path]) -> None:
    result, _log = session
    assert result.outcome == "finished", result.reason
    assert [s for _t, s in result.states] == [
        "handshake", "insulation_check", "identification", "parameter_exchange", "precharge",
        "charging", "stopping", "welding_check", "finished"]
    assert result.end_soc_pct is not None and result.end_soc_pct >= 53.0


def test_energy_delivered_matches_what_the_battery_took(session: tuple[SimResult, Path]) -> None:
    result, _log = session
    assert result.energy_kwh > 1.0
    assert math.isclose(result.energy_kwh, result.battery_energy_in_kwh, rel_tol=0.02)


def test_current_never_above_any_limit(session: tuple[SimResult, Path]) -> None:
    result, _log = session
    options = SimOptions()
    charging = [row for row in result.trace if row.state == "charging"]
    assert charging and max(row.commanded_a for row in charging) > 100.0
    for row in result.trace:
        assert row.commanded_a <= options.ratings.max_current_a + 1e-9
        assert row.commanded_a * row.commanded_v <= options.ratings.max_power_w * 1.000001
        if row.state == "charging" and row.ev_demand_a is None:
            assert row.commanded_a == 0.0  # no demand heard yet
        elif row.state == "charging":
            assert row.ev_max_a is not None
            assert row.commanded_a <= row.ev_demand_a + 1e-9
            assert row.commanded_a <= row.ev_max_a + 1e-9
        else:
            assert row.commanded_a <= 20.0  # pre-charge / cable-check currents only
    # The module followed: measured never above the command it was given (+ regulation).
    assert result.max_current_a <= options.ratings.max_current_a


def test_can_log_decodes_to_the_gbt_sequence(session: tuple[SimResult, Path]) -> None:
    _result, log = session
    messages = decode_log(log.read_text().splitlines())
    names = [name for name, _fields in messages]
    expected = [n for group in EXPECTED_GROUPS for n in group]
    assert set(expected) <= set(names), f"missing: {set(expected) - set(names)}"
    first = {name: names.index(name) for name in expected}
    for earlier, later in itertools.pairwise(EXPECTED_GROUPS):
        assert max(first[n] for n in earlier) < min(first[n] for n in later), (earlier, later)
    assert first["BCL"] < first["CCS"]
    bcl = [f for n, f in messages if n == "BCL"]
    assert bcl and max(f["current"] for f in bcl) > 100.0  # a charge demand, + = charging


def test_can_log_periods_read_as_on_a_real_bus(session: tuple[SimResult, Path]) -> None:
    _result, log = session
    frames = list(read_candump(log))
    ccs = [ts for ts, ident, _d in frames if ident == 0x1812F456]
    bcl = [ts for ts, ident, _d in frames if ident == 0x181056F4]
    assert len(ccs) > 100 and len(bcl) > 100
    assert statistics.median(b - a for a, b in itertools.pairwise(ccs)) == \
        pytest.approx(0.050, abs=1e-6)
    assert statistics.median(b - a for a, b in itertools.pairwise(bcl)) == \
        pytest.approx(0.050, abs=1e-6)
    stamps = [ts for ts, _i, _d in frames]
    assert stamps == sorted(stamps)


def test_event_driven_time_gives_the_session_lock_step_gives(
        session: tuple[SimResult, Path]) -> None:
    """The same session jumping from one due instant to the next (the default) and stepping
    every 10 ms: the same states, energy and peak current, in far fewer agent steps."""
    result, _log = session
    options = SimOptions(start_soc_pct=50.0, target_soc_pct=53.0, live=False, max_sim_s=600.0,
                         lock_step=True)
    stepped = asyncio.run(run_sim(options))
    assert [s for _t, s in stepped.states] == [s for _t, s in result.states]
    assert result.energy_kwh == pytest.approx(stepped.energy_kwh, rel=0.01)
    assert result.max_current_a == pytest.approx(stepped.max_current_a, abs=1.0)
    assert result.sim_duration_s == pytest.approx(stepped.sim_duration_s, abs=2.0)
    # 100 steps per simulated second against the instants anyone was due at.
    assert stepped.agent_steps >= 0.95 * stepped.sim_duration_s / 0.01
    assert result.agent_steps < 0.6 * stepped.agent_steps
