"""A whole pile over the real transports (`pile-agent sim --guns N --scenario ...`): guns
sharing the module pool through the matrix, a faulted group, the shared grid and export
limits. Each scenario checks its own expectations (hil/pile_scenarios.py); these tests
also check the figures they stand on, and that a pool which switches under load fails."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent import cli
from agent.core import module_pool
from hil.pile_sim import run_pile_sim


def test_two_guns_share_the_pool_a_group_faults_and_the_grid_limit_holds(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--guns", "2", "--scenario", "pool-share", "--json",
                     "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "PASS", out["failures"]
    assert [g["outcome"] for g in out["guns_detail"]] == ["finished", "finished"]
    assert out["switched_under_load"] == [] and out["joined_two_guns"] == 0
    assert out["peak_import_kw"] <= 150.0 * 1.02  # 75 kW per gun
    log = out["pool_log"]
    assert any("faulted: module_fault" in line for line in log)
    assert any("back in the pool" in line for line in log)
    # Allocation changes are visible: some group served both guns in turn.
    assert any("-> gun 1" in line for line in log) and any("-> gun 2" in line for line in log)
    assert all(g["above_pool"] == 0 and g["peak_a"] <= 250.0 for g in out["guns_detail"])


def test_a_discharging_gun_and_a_charging_gun_share_the_pool() -> None:
    r = asyncio.run(run_pile_sim("pool-v2g", 2))
    assert r.failures == [], r.failures
    gun1, gun2 = r.per_gun
    assert gun1.discharged_kwh > 0.5 and gun2.charged_kwh > 0.5
    assert r.peak_export_w <= 50_000 * 1.02


def test_a_pool_that_switches_under_load_fails_the_scenario(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The mutant: groups move whatever their gun carries.
    monkeypatch.setattr(module_pool, "SWITCH_CURRENT_A", float("inf"))
    r = asyncio.run(run_pile_sim("pool-share", 2))
    assert r.switched_under_load, "a move under load went unseen"
    assert any("switched on gun" in f for f in r.failures)


def test_guns_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--guns", "0"]) == 2
    assert cli.main(["sim", "--guns", "2", "--fault", "bms-silence"]) == 2
    assert cli.main(["sim", "--guns", "2", "--scenario", "no-such"]) == 2
    assert cli.main(["sim", "--guns", "2", "--scenario", "list"]) == 0
    assert "pool-share" in capsys.readouterr().out
