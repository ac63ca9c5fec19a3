"""A whole pile over the real transports (`pile-agent sim --guns N --scenario ...`): guns
sharing the module pool through the matrix, a faulted group, the shared grid and export
limits. Each scenario is a file (hil/scenarios/pile/) with its own expectations; these
tests also check the figures they stand on, that a pool which switches under load fails,
and that a pile scenario written only in TOML runs, fails when its expectation does not
hold, and is refused with FILE:LINE when it is wrong."""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

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
    [v] = [v for v in r.verdicts if v.measure == "switched_under_load"]
    assert v.status == "FAIL" and "on gun" in v.detail, v
    assert r.verdict == "FAIL"


def test_guns_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--guns", "0"]) == 2
    assert cli.main(["sim", "--guns", "2", "--fault", "bms-silence"]) == 2
    assert cli.main(["sim", "--guns", "2", "--scenario", "no-such"]) == 2
    assert cli.main(["sim", "--guns", "2", "--scenario", "list"]) == 0
    assert "pool-share" in capsys.readouterr().out


# ---- a pile scenario written in the test --------------------------------------------------

PILE_FILE = """
[scenario]
name = "three-cars-one-leaves"
description = "three cars, 10 s apart; gun 2's leaves early"
end_s = "10 * n + 40"

[pile]
grid_limit_w = "60000 * n"

[car]
start_soc_pct = "30 + gun"
target_soc_pct = 95.0
vin = "LTESTPILE{gun:08d}"
plug_at_s = "0.2 + 10 * (gun - 1)"

[car.on_gun.2]
start_soc_pct = 50.0

[[step]]
name = "gun 2's owner leaves"
at_s = "10 * n + 10"
gun = 2
stop = "owner leaves"

[[step]]
name = "the run ends"
at_s = "10 * n + 40"
gun = "each but 2"
stop = "the run ends"

[[expect]]
name = "every gun charges"
measure = "charged_kwh"
gun = "each"
at_least = 0.05

[[expect]]
name = "gun 2 gives its groups away"
measure = "groups_given_away"
gun = 2
from = "gun 2's owner leaves"
at_least = 1

[[expect]]
name = "gun 1 draws current while gun 2 leaves"
measure = "max_current_a"
gun = 1
from = "gun 2's owner leaves"
to = "the run ends"
at_least = AMPS
"""


def test_a_pile_scenario_written_in_toml_runs_and_fails_when_broken(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "pile.toml"
    good.write_text(PILE_FILE.replace("AMPS", "20.0"))
    report = tmp_path / "report"
    assert cli.main(["sim", "--guns", "3", "--scenario", str(good), "--json", "--quiet",
                     "--report", str(report)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "PASS", out["failures"]
    by_name = {v["name"]: v for v in out["verdicts"]}
    assert {f"every gun charges (gun {g})" for g in (1, 2, 3)} <= set(by_name)
    assert by_name["gun 2 gives its groups away"]["status"] == "PASS"
    # The per-gun values: gun 2's own start SOC, the others' by expression; the grid limit
    # and the step times grew with n = 3.
    assert [g["soc"][0] for g in out["guns_detail"]] == [31.0, 50.0, 33.0]
    assert "grid within the site's 180 kW" in by_name
    assert out["guns_detail"][1]["reason"] == "owner leaves"
    assert ET.parse(report / "junit.xml").getroot().get("failures") == "0"
    page = (report / "report.html").read_text()
    assert 'data-verdict="PASS"' in page
    # Each gun's current drawn (a line with points), a state strip per gun, the site plot
    # with its grid limit, and the two steps marked.
    current = page.split('data-title="module current per gun (- = discharge)"')[1]
    current = current.split("</svg>")[0]
    drawn = re.findall(r'data-name="gun (\d)" data-points="(\d+)"', current)
    assert {g for g, n in drawn if int(n) > 10} == {"1", "2", "3"}, drawn
    assert all(f'data-title="gun {g}: state"' in page for g in (1, 2, 3))
    assert 'data-name="grid limit"' in page and "gun 2&#x27;s owner leaves @" in page
    # The same file with an expectation no run can meet: FAIL, and the JUnit says why.
    bad = tmp_path / "bad.toml"
    bad.write_text(PILE_FILE.replace("AMPS", "900.0"))
    assert cli.main(["sim", "--guns", "3", "--scenario", str(bad), "--quiet",
                     "--report", str(report)]) == 1
    text = capsys.readouterr().out
    assert "FAIL  gun 1 draws current while gun 2 leaves" in text, text
    root = ET.parse(report / "junit.xml").getroot()
    [failure] = root.iter("failure")
    assert "expected >= 900" in (failure.get("message") or ""), failure.attrib
    page = (report / "report.html").read_text()
    assert 'data-verdict="FAIL"' in page
    [row] = [r for r in page.split("<tr>") if r.startswith('<td class="FAIL">')]
    assert "gun 1 draws current while gun 2 leaves" in row and "expected &gt;= 900" in row


@pytest.mark.parametrize(("edit", "at", "says"), [
    # (what the file says instead, the text on the line the error must name, the error)
    (("[pile]\n", "[pile]\ngrid_limt_w = 1.0\n"), "grid_limt_w", "no key 'grid_limt_w'"),
    (('plug_at_s = "0.2 + 10 * (gun - 1)"', 'plug_at_s = "0.2 + 10 * (gunn - 1)"'),
     "plug_at_s", "unknown name 'gunn'"),
    (('plug_at_s = "0.2 + 10 * (gun - 1)"', 'plug_at_s = "__import__(1)"'), "plug_at_s",
     "only numbers"),
    (('gun = "each but 2"', 'gun = "every"'), 'gun = "every"', "\"each but K\""),
    (('at_s = "10 * n + 40"', 'at_s = "10 / (n - 3)"'), None, "for 3 guns"),
    (('stop = "owner leaves"', 'setpoint_w = "-1e6 / (n - 3)"'), None, "for 3 guns"),
    (('from = "gun 2\'s owner leaves"', 'from = "never"'), 'from = "never"', "no step"),
    (("measure = \"groups_given_away\"\n", "measure = \"groups_given_away\"\n"
      "tolerance = 1\n"), "tolerance", "no key 'tolerance'"),
])
def test_a_wrong_pile_file_is_refused_with_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str],
        at: str | None, says: str) -> None:
    text = PILE_FILE.replace("AMPS", "20.0")
    assert edit[0] in text, edit
    text = text.replace(edit[0], edit[1], 1)
    path = tmp_path / "pile.toml"
    path.write_text(text)
    assert cli.main(["sim", "--guns", "3", "--scenario", str(path)]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    line = next((n for n, raw in enumerate(text.splitlines(), 1)
                 if at is not None and raw.startswith(at)), 0)
    assert (f"{path}:{line}:" if line else f"{path}: ") in err, err
    assert "Traceback" not in err


def test_a_pile_file_and_a_one_gun_file_each_ask_for_their_flags(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pile = tmp_path / "pile.toml"
    pile.write_text(PILE_FILE.replace("AMPS", "20.0"))
    assert cli.main(["sim", "--scenario", str(pile)]) == 2
    assert "run it with --guns N" in capsys.readouterr().err
    assert cli.main(["sim", "--guns", "2", "--scenario",
                     "hil/scenarios/v2g-evening.toml"]) == 2
    assert "run it without --guns" in capsys.readouterr().err
    assert cli.main(["sim", "--guns", "1", "--scenario", "pool-share"]) == 2
