"""`pile-agent sim --guns N --scenario FILE --report DIR`: a pile run drawn the way a gun's
run is (hil/report.py): each gun's module current, the current its agent commanded and
what the module pool gave it, the pile's import and export against the site's limits, and
each gun's states as a strip; the steps and group faults marked on every plot; JUnit XML
with a testcase per verdict (the invariants and each expectation per gun).

The series are held (a sample is kept when the value moves past a tolerance), so a long
run's memory stays flat, and each plot is cut to hil/report.py's PLOT_POINTS buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hil.report import RunSummary, decimate, html_page, junit_xml, plot, strip
from hil.scenario_engine import Recording, Verdict
from hil.series import EventSeries, HeldSeries

CURRENT_TOLERANCE_A = 0.2
POWER_TOLERANCE_KW = 0.2


@dataclass
class GunTrace:
    """One gun's series."""

    current_a: HeldSeries = field(default_factory=lambda: HeldSeries(CURRENT_TOLERANCE_A))
    commanded_a: HeldSeries = field(default_factory=lambda: HeldSeries(CURRENT_TOLERANCE_A))
    pool_a: HeldSeries = field(default_factory=lambda: HeldSeries(CURRENT_TOLERANCE_A))


@dataclass
class PileRecording:
    """What a pile run looked like, sampled at each of its instants."""

    guns: int
    traces: list[GunTrace] = field(init=False)
    import_kw: HeldSeries = field(default_factory=lambda: HeldSeries(POWER_TOLERANCE_KW))
    export_kw: HeldSeries = field(default_factory=lambda: HeldSeries(POWER_TOLERANCE_KW))
    end_s: float = 0.0

    def __post_init__(self) -> None:
        self.traces = [GunTrace() for _ in range(self.guns)]

    def observe(self, t: float, currents_a: Sequence[float], pool_a: Sequence[float | None],
                import_w: float, export_w: float) -> None:
        for trace, amps, given in zip(self.traces, currents_a, pool_a, strict=True):
            trace.current_a.add(t, amps)
            if given is not None:
                trace.pool_a.add(t, given)
        self.import_kw.add(t, import_w / 1000.0)
        self.export_kw.add(t, export_w / 1000.0)
        self.end_s = t

    def decided(self, gun: int, t: float, current_a: float) -> None:
        """A decision holds until the next one: the series steps, it does not slope."""
        series = self.traces[gun - 1].commanded_a
        if len(series):
            series.add(t, series.last())
        series.add(t, current_a)

    def close(self) -> None:
        for trace in self.traces:
            for series in (trace.current_a, trace.commanded_a, trace.pool_a):
                series.close()
        self.import_kw.close()
        self.export_kw.close()


@dataclass(frozen=True)
class PileReportInput:
    """Everything the page says besides the series."""

    summary: RunSummary
    verdicts: Sequence[Verdict]
    marks: Sequence[tuple[float, str, str]]  # (t, label, "step" | "fault")
    states: Sequence[Sequence[tuple[float, str]]]  # per gun
    grid_limit_w: float
    export_limit_w: float


def pile_plots(rec: PileRecording, what: PileReportInput) -> list[str]:
    t_end = max(rec.end_s, 1.0)
    marks = what.marks

    def per_gun(pick: str) -> list[tuple[str, list[tuple[float, float]]]]:
        return [(f"gun {g}", decimate(getattr(trace, pick).points(), t_end))
                for g, trace in enumerate(rec.traces, start=1)]

    site = [("import", decimate(rec.import_kw.points(), t_end)),
            ("export", decimate(rec.export_kw.points(), t_end))]
    for name, watts in (("grid limit", what.grid_limit_w),
                        ("export limit", what.export_limit_w)):
        if math.isfinite(watts):
            site.append((name, [(0.0, watts / 1000.0), (t_end, watts / 1000.0)]))
    plots = [
        plot("module current per gun (- = discharge)", "A", per_gun("current_a"), t_end,
             marks),
        plot("commanded current per gun", "A", per_gun("commanded_a"), t_end, marks),
        plot("what the module pool gave each gun", "A", per_gun("pool_a"), t_end, marks),
        plot("the pile's import and export", "kW", site, t_end, marks),
    ]
    for g, states in enumerate(what.states, start=1):
        changes = EventSeries()
        changes.add(0.0, "idle")
        for t, state in states:
            changes.add(t, state)
        plots.append(strip(f"gun {g}: state", changes, t_end, marks))
    return plots


def write_pile_report(directory: Path, rec: PileRecording, what: PileReportInput
                      ) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    junit = directory / "junit.xml"
    junit.write_bytes(junit_xml(what.summary, what.verdicts))
    page = directory / "report.html"
    page.write_text(html_page(what.summary, what.verdicts, Recording(),
                              plots=pile_plots(rec, what), heading="The pile"),
                    encoding="utf-8")
    return [junit, page]
