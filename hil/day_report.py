"""`pile-agent station-day --report DIR`: the day drawn the way a scenario's run is
(hil/report.py): the station's import and export per quarter hour against the grid and
export limits, the VPP's dispatch window marked, the guns transferring, and what bound the
guns' currents most in each quarter hour; JUnit XML with the day's checks."""

from __future__ import annotations

from pathlib import Path

from hil.report import RunSummary, html_page, junit_xml, plot, strip
from hil.scenario_engine import Recording, Verdict
from hil.series import EventSeries
from hil.site_clock import hhmm
from hil.station_day import BUCKET_S, DayResult


def day_verdicts(r: DayResult) -> list[Verdict]:
    def check(name: str, bad: int, detail: str, source: str) -> Verdict:
        return Verdict(name, "station", "FAIL" if bad else "PASS", str(bad), detail, source)

    return [
        check("import within the grid limit", r.above_grid_steps,
              f"steps above {r.grid_limit_kw:.0f} kW: {r.above_grid_steps} (peak "
              f"{r.peak_import_kw:.1f} kW)", "invariant I2: the site's grid connection"),
        check("export within the export limit", r.above_export_steps,
              f"steps above {r.export_limit_kw:.0f} kW: {r.above_export_steps} (peak "
              f"{r.peak_export_kw:.1f} kW)", "the site's export contract"),
        check("no gun above its rating", r.above_gun_rating_steps,
              f"gun-steps above a gun's rating: {r.above_gun_rating_steps}", "invariant I1"),
        check("no group switched under load", len(r.switched_under_load),
              "; ".join(r.switched_under_load[:3]) or "none",
              "docs/PILE.md: a group moves only at <= 5 A"),
    ]


def write_day_report(directory: Path, r: DayResult) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    o = r.options
    quarter = [(k * BUCKET_S, k) for k in range(len(r.import_kw))]
    t_end = max(len(r.import_kw) * BUCKET_S, BUCKET_S)

    def steps(values: list[float]) -> list[tuple[float, float]]:
        pts = []
        for t, k in quarter:
            pts += [(t, values[k]), (t + BUCKET_S, values[k])]
        return pts

    marks = [(o.dispatch.from_s, f"VPP dispatch from {hhmm(o.dispatch.from_s)}", "fault"),
             (o.dispatch.until_s, f"VPP dispatch until {hhmm(o.dispatch.until_s)}", "fault")]
    bound = EventSeries()
    for t, k in quarter:
        tally = r.bound_per_quarter[k] if k < len(r.bound_per_quarter) else {}
        bound.add(t, max(tally, key=tally.__getitem__) if tally else "idle")
    plots = [
        plot("station import per quarter hour", "kW",
             [("import", steps(r.import_kw)),
              ("grid limit", [(0.0, r.grid_limit_kw), (t_end, r.grid_limit_kw)])],
             t_end, marks, hhmm),
        plot("station export per quarter hour", "kW",
             [("export", steps(r.export_kw)),
              ("export limit", [(0.0, r.export_limit_kw), (t_end, r.export_limit_kw)])],
             t_end, marks, hhmm),
        plot("guns transferring", "guns", [("busy", steps(r.busy_guns))], t_end, marks,
             hhmm),
        strip("what bound the guns most (per quarter hour)", bound, t_end, marks),
    ]
    verdicts = day_verdicts(r)
    s = r.summary()
    money = s["settlement_cny"]
    summary = RunSummary(
        f"station-day: {o.guns} guns, {r.sim_s / 3600:.1f} h", s["model"],
        f"{s['charged_kwh']} kWh charged, {s['discharged_kwh']} kWh discharged",
        f"settlement {money['charging_cost']} CNY for charging, {money['discharge_paid']} "
        f"CNY paid for discharge", r.sim_s, r.wall_s, (),
        [f"cars: {dict(s['cars'])}", f"pool: {s['pool_moves']} group moves, "
         f"{len(s['group_faults'])} group faults",
         "bound by: " + ", ".join(f"{k} {v:.1%}" for k, v in s["bound_by_share"].items())],
        [], lead="the day:")
    junit = directory / "junit.xml"
    junit.write_bytes(junit_xml(summary, verdicts))
    page = directory / "report.html"
    page.write_text(html_page(summary, verdicts, Recording(), plots=plots), encoding="utf-8")
    return [junit, page]
