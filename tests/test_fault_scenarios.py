"""`pile-agent sim --fault NAME`: every scenario reaches the safe state in time, over the
real transports (virtual CAN bus, Modbus TCP on loopback)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from agent.cli import main
from hil import faults
from hil.sim import SimOptions, run_sim


@pytest.mark.parametrize("name", sorted(faults.SCENARIOS))
def test_scenario_reaches_the_safe_state_in_time(name: str) -> None:
    result = asyncio.run(run_sim(SimOptions(start_soc_pct=60.0, target_soc_pct=80.0,
                                            live=False, fault=name, max_sim_s=300.0)))
    assert result.fault_injected_at is not None
    assert result.fault_ok, result.fault_verdict


def test_the_verdict_fails_when_the_deadline_cannot_be_met(
        monkeypatch: pytest.MonkeyPatch) -> None:
    impossible = dataclasses.replace(faults.SCENARIOS["bms-silence"], deadline_s=0.5)
    monkeypatch.setitem(faults.SCENARIOS, "bms-silence", impossible)
    result = asyncio.run(run_sim(SimOptions(start_soc_pct=60.0, target_soc_pct=80.0,
                                            live=False, fault="bms-silence", max_sim_s=300.0)))
    assert not result.fault_ok
    assert "deadline 0.5 s" in result.fault_verdict


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--fault", "list"]) == 0
    assert "emergency-stop" in capsys.readouterr().out
    assert main(["sim", "--fault", "no-such-fault"]) == 2
    assert main(["sim", "--quiet", "--fault", "emergency-stop", "--start-soc", "60"]) == 0
    assert "PASS" in capsys.readouterr().out
