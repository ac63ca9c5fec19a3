"""Scenario files written here, in the test, not in the package (docs/HIL.md): one runs and
passes; the same file with one expectation broken fails, and its JUnit XML (parsed with the
standard library) and HTML report (loaded in a real headless browser) say which and why; a
file with a mistake is refused with its line before anything runs."""

from __future__ import annotations

import asyncio
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import can
import pytest

from agent.cli import main
from hil.report import decimate
from hil.scenario_file import SCENARIO_DIR, ScenarioError, load
from hil.series import HeldSeries
from hil.sim import SimOptions, SimResult, run_sim
from tests.headless_browser import chromium

# The example, on a shorter clock: a V2G car at 35 %, the VPP dispatches 60 kW,
# the E-stop is pressed; expect <= 5 A and K1/K2 open within 100 ms.
V2G_ESTOP = """
[scenario]
name = "v2g-estop"
description = "a V2G car at 35 %; the VPP dispatches 60 kW; the E-stop is pressed"

[gun]
max_discharge_current_a = 200.0
max_discharge_power_w = 100000.0

[car]
start_soc_pct = 35.0
v2g = true
stop_at_target = false
soc_floor_pct = 30.0

[[step]]
name = "VPP dispatches 60 kW"
charging_for_s = 5.0
setpoint_w = -60000.0

[[step]]
name = "E-stop pressed"
after_s = 30.0
set = { "io.estop_pressed" = true }

[[expect]]
name = "the car discharges for the VPP"
measure = "max_discharge_a"
from = "VPP dispatches 60 kW"
from_offset_s = 10.0
to = "E-stop pressed"
at_least = 100.0

[[expect]]
name = "current at most the car's 150 A discharge limit"
measure = "max_discharge_a"
at_most = 150.5

[[expect]]
name = "safe within 100 ms of the E-stop"
measure = "safe_state_s"
from = "E-stop pressed"
at_most = 0.1
source = "GB/T 18487.1-2023 Table C.15: E-stop trigger <= 70 ms"

[[expect]]
name = "the session ends in FAULT"
measure = "outcome"
equals = "fault"
"""
# One expectation broken: the car's own limit (150 A) written as 120 A.
BROKEN = V2G_ESTOP.replace("at_most = 150.5", "at_most = 120.0")


def _run(tmp_path: Path, text: str, name: str) -> tuple[SimResult, Path]:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    report = tmp_path / f"{name}-report"
    result = asyncio.run(run_sim(SimOptions(scenario=load(path), live=False,
                                            report_dir=str(report))))
    return result, report


def _cases(junit: Path) -> dict[str, ET.Element]:
    root = ET.parse(junit).getroot()
    return {c.attrib["name"]: c for c in root.iter("testcase")}


def test_a_scenario_written_here_passes_and_its_reports_say_so(tmp_path: Path) -> None:
    result, report = _run(tmp_path, V2G_ESTOP, "v2g-estop")
    assert [v.status for v in result.verdicts] == ["PASS"] * 4, result.scenario_failures
    cases = _cases(report / "junit.xml")
    assert len(cases) == 4
    assert not any(c.find("failure") is not None for c in cases.values())
    safe = cases["safe within 100 ms of the E-stop"]
    measured = {p.attrib["name"]: p.attrib["value"] for p in safe.iter("property")}
    assert float(measured["measured"]) <= 0.1
    assert "Table C.15" in measured["source"]
    # The run's CAN traffic, read back by python-can's own readers: the same frames as the
    # candump, in both directions.
    candump = [ln for ln in (report / "can.log").read_text().splitlines() if ln]
    assert len(candump) > 500
    for reader in (can.BLFReader, can.ASCReader):
        frames = list(reader(str(report / ("can.blf" if reader is can.BLFReader
                                           else "can.asc"))))
        assert len(frames) == len(candump)
        assert {f.arbitration_id & 0xFF for f in frames} == {0x56, 0xF4}


def test_the_same_file_with_a_broken_expectation_fails_and_the_reports_show_why(
        tmp_path: Path) -> None:
    result, report = _run(tmp_path, BROKEN, "broken")
    failed = [v for v in result.verdicts if v.status == "FAIL"]
    assert [v.name for v in failed] == ["current at most the car's 150 A discharge limit"]
    figure = float(failed[0].measured)
    assert 120.0 < figure <= 150.5
    cases = _cases(report / "junit.xml")
    failure = cases["current at most the car's 150 A discharge limit"].find("failure")
    assert failure is not None and failed[0].measured in failure.attrib["message"]
    assert "expected <= 120" in failure.attrib["message"]
    assert sum(c.find("failure") is not None for c in cases.values()) == 1

    # The page in a real browser: the verdict, the failing row with its figure, and every
    # plot drawn (the page counts, after layout, the lines and spans with a drawn extent).
    artifacts = Path(os.environ.get("PILE_AGENT_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    page = (report / "report.html").as_uri()
    dom = chromium("--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    chromium("--window-size=1100,1900", f"--screenshot={artifacts / 'hil-report.png'}", page)
    assert 'data-ready="1"' in dom.stdout and 'data-verdict="FAIL"' in dom.stdout
    row = re.search(r'<td class="FAIL">FAIL</td><td>current at most the car\'s 150 A '
                    r"discharge limit</td><td>([^<]+)</td>", dom.stdout)
    assert row is not None and row.group(1) == failed[0].measured
    drawn = re.findall(r'<svg class="plot[^"]*" data-title="([^"]+)"[^>]*data-drawn="(\d+)"',
                       dom.stdout)
    titles = {t: int(n) for t, n in drawn}
    assert {"current", "voltage", "DC power (- = discharge)", "state of charge",
            "module temperature", "binding limit"} <= set(titles), titles
    assert all(n >= 1 for n in titles.values()), titles
    assert titles["current"] == 2  # measured and commanded
    assert (artifacts / "hil-report.png").stat().st_size > 10_000


def test_the_cli_runs_a_user_s_file_and_exits_by_its_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(V2G_ESTOP.replace("after_s = 30.0", "after_s = 10.0"))
    bad.write_text(BROKEN.replace("after_s = 30.0", "after_s = 10.0"))
    assert main(["sim", "--quiet", "--scenario", str(good)]) == 0
    assert "scenario v2g-estop: PASS" in capsys.readouterr().out
    assert main(["sim", "--quiet", "--scenario", str(bad)]) == 1
    assert "FAIL current at most the car's 150 A" in capsys.readouterr().out
    typo = tmp_path / "typo.toml"
    typo.write_text(V2G_ESTOP.replace("soc_floor_pct = 30.0", "soc_flor_pct = 30.0"))
    assert main(["sim", "--scenario", str(typo)]) == 2
    err = capsys.readouterr().err
    line = V2G_ESTOP.splitlines().index("soc_floor_pct = 30.0") + 1
    assert f"typo.toml:{line}: [car] has no key 'soc_flor_pct'" in err, err


@pytest.mark.parametrize(("change", "said"), [
    (("[gun]", "[gnu]"), "unknown table [gnu]"),
    (("max_discharge_power_w = 100000.0", 'max_discharge_power_w = "lots"'),
     "[gun] max_discharge_power_w must be a number"),
    (("max_discharge_power_w = 100000.0", "max_discharge_power_w = -1.0"), "[gun]:"),
    (('from = "E-stop pressed"', 'from = "E-stop"'), "from 'E-stop' is no step"),
    (('measure = "outcome"', 'measure = "mood"'), "measure 'mood' is not one of"),
    (('"io.estop_pressed"', '"engine.estop_pressed"'), "set 'engine.estop_pressed'"),
    (('"io.estop_pressed" = true', '"pile.car_can" = "wrong-dlc"'),
     "one of bus-off, wrong-dlc:NAME"),
    (("after_s = 30.0", "after_s = nan"), "must be finite"),
    (('name = "E-stop pressed"', 'name = "VPP dispatches 60 kW"'), "two steps are named"),
    (("charging_for_s = 5.0", 'at_site_time = "25:00"'), "is not HH:MM"),
    (('equals = "fault"', ""), "say equals, at_least, at_most, near or starts_with"),
    (("[scenario]", "[scenario\n"), "not TOML"),
])
def test_a_file_with_a_mistake_is_refused_with_where(
        tmp_path: Path, change: tuple[str, str], said: str) -> None:
    old, new = change
    assert old in V2G_ESTOP
    path = tmp_path / "mistake.toml"
    path.write_text(V2G_ESTOP.replace(old, new, 1))
    with pytest.raises(ScenarioError) as caught:
        load(path)
    assert said in str(caught.value), str(caught.value)
    assert str(path) in str(caught.value)


def test_the_line_named_is_the_line_that_is_wrong(tmp_path: Path) -> None:
    text = V2G_ESTOP.replace('measure = "safe_state_s"', 'measure = "safe_stat_s"')
    path = tmp_path / "line.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load(path)
    line = text.splitlines().index('measure = "safe_stat_s"') + 1
    assert f"line.toml:{line}:" in str(caught.value)


def test_every_built_in_scenario_is_a_valid_file() -> None:
    names = {load(p).name: p.stem for p in SCENARIO_DIR.glob("*.toml")}
    assert {"v2g-peak-shaving", "consent-withdrawn", "soc-floor", "direction-changes",
            "charge-only-car", "frequency-step", "upstream-lost", "vpp-peak-shaving-18h",
            "ocpp-offline-replay"} <= set(names)
    assert all(name == stem for name, stem in names.items())


def test_a_held_series_keeps_edges_and_ramps_not_time() -> None:
    s = HeldSeries(0.05)
    for k in range(100_000):  # 1000 s of a held 10 A at 10 ms
        s.add(k * 0.01, 10.0)
    assert len(s) == 2  # the first and the last
    s.add(1000.0, 0.0)  # a step down
    for k in range(1, 101):  # a ramp back up, 0.1 A per sample
        s.add(1000.0 + k * 0.01, k * 0.1)
    pts = list(s.points())
    assert (999.99, 10.0) in pts and (1000.0, 0.0) in pts  # the edge, exact
    assert len(pts) == 2 + 1 + 100
    assert s.value_at(500.0) == 10.0
    out = decimate(((k * 0.01, float(k % 7)) for k in range(1_000_000)), 10_000.0, 100)
    assert len(out) <= 200 and min(v for _t, v in out) == 0.0 and max(v for _t, v in out) == 6.0
    # A step down at one instant (a held value, then the new one) keeps its direction: a
    # plot of it falls, it does not spike back up (sorting by value drew 0 then 207).
    step = [(147.1, 206.7), (150.0, 206.7), (150.0, 0.0), (151.5, 0.0)]
    assert decimate(step, 165.0, 165) == step
