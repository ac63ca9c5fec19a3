"""`pile-agent sim --fault NAME`: every fault file (hil/scenarios/faults/) reaches the safe
state in time, over the real transports (virtual CAN bus, Modbus TCP on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.cli import main
from hil.scenario_file import FAULT_DIR, load
from hil.sim import SimOptions, run_sim

FAULTS = sorted(p.stem for p in FAULT_DIR.glob("*.toml"))


def test_every_fault_the_harness_had_is_a_file() -> None:
    # The 24 faults of the old Python table (hil/faults.py until issue 23), each a file now.
    assert len(FAULTS) >= 24
    assert {"emergency-stop", "bms-silence", "module-no-capability", "meter-reset",
            "absurd-demand", "welded-contactor", "agent-hang"} <= set(FAULTS)
    # ... and the car's CAN faults written since (hil/car_can_faults.py).
    assert {"car-bus-off", "car-bcl-wrong-dlc", "car-bcl-garbage",
            "car-bcs-tp-abort"} <= set(FAULTS)


@pytest.mark.parametrize("name", FAULTS)
def test_scenario_reaches_the_safe_state_in_time(name: str) -> None:
    result = asyncio.run(run_sim(SimOptions(start_soc_pct=60.0, target_soc_pct=80.0,
                                            live=False, max_sim_s=300.0,
                                            scenario=load(FAULT_DIR / f"{name}.toml"))))
    assert result.fault_injected_at is not None
    assert result.fault_ok, result.fault_verdict


def test_the_verdict_fails_when_the_deadline_cannot_be_met(tmp_path: Path) -> None:
    text = (FAULT_DIR / "bms-silence.toml").read_text()
    assert "at_most = 3.0" in text
    impossible = tmp_path / "bms-silence-0.5.toml"
    impossible.write_text(text.replace("at_most = 3.0", "at_most = 0.5"))
    result = asyncio.run(run_sim(SimOptions(start_soc_pct=60.0, target_soc_pct=80.0,
                                            live=False, max_sim_s=300.0,
                                            scenario=load(impossible))))
    assert not result.fault_ok
    assert "deadline 0.5 s" in result.fault_verdict


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--fault", "list"]) == 0
    assert "emergency-stop" in capsys.readouterr().out
    assert main(["sim", "--fault", "no-such-fault"]) == 2
    assert main(["sim", "--quiet", "--fault", "emergency-stop", "--start-soc", "60"]) == 0
    assert "PASS" in capsys.readouterr().out
