"""A HIL run's report (`pile-agent sim --report DIR`): JUnit XML for CI, one self-contained
HTML page for a person, and the CAN traffic (written during the run by `TraceFiles`).

The page draws each plot as inline SVG (no network, no script needed to see it): the gun's
current (measured and commanded), voltage, power, SOC and module temperature over time,
the upstream setpoint and the binding limit as strips, the steps and faults as marks on
every plot, and each expectation with PASS / FAIL / N/A and its figure. A series is cut to
at most PLOT_POINTS buckets (each keeps its minimum and maximum), so a night's run draws as
fast as a minute's.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hil.scenario_engine import Recording, Verdict
from hil.series import EventSeries

PLOT_POINTS = 1200
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 960, 200, 64, 16, 14, 26
LEGEND_PER_ROW = 6  # a strip's labels, 150 px apart
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
           "#7f7f7f")


@dataclass(frozen=True)
class RunSummary:
    scenario: str
    description: str
    outcome: str
    reason: str
    sim_s: float
    wall_s: float
    states: Sequence[tuple[float, str]]
    notes: Sequence[str]
    files: Sequence[str]
    lead: str = "session"  # how the page names the outcome


def write(directory: Path, run: RunSummary, verdicts: Sequence[Verdict],
          rec: Recording) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    junit = directory / "junit.xml"
    junit.write_bytes(junit_xml(run, verdicts))
    page = directory / "report.html"
    page.write_text(html_page(run, verdicts, rec), encoding="utf-8")
    return [junit, page]


# ---- JUnit XML ------------------------------------------------------------------------

def junit_xml(run: RunSummary, verdicts: Sequence[Verdict]) -> bytes:
    """One testsuite per run, one testcase per expectation, its figure as a property
    (the schema Jenkins, GitLab and pytest's junitxml share)."""
    failures = sum(1 for v in verdicts if v.status == "FAIL")
    skipped = sum(1 for v in verdicts if v.status == "N/A")
    suites = ET.Element("testsuites", name="pile-agent hil", tests=str(len(verdicts)),
                        failures=str(failures), skipped=str(skipped), errors="0",
                        time=f"{run.wall_s:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=run.scenario, tests=str(len(verdicts)),
                          failures=str(failures), skipped=str(skipped), errors="0",
                          time=f"{run.wall_s:.3f}")
    props = ET.SubElement(suite, "properties")
    for name, value in (("description", run.description), ("outcome", run.outcome),
                        ("reason", run.reason), ("simulated_s", f"{run.sim_s:.1f}")):
        ET.SubElement(props, "property", name=name, value=value)
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"hil.{run.scenario}",
                             name=v.name, time="0")
        cprops = ET.SubElement(case, "properties")
        ET.SubElement(cprops, "property", name="measure", value=v.measure)
        ET.SubElement(cprops, "property", name="measured", value=v.measured)
        if v.source:
            ET.SubElement(cprops, "property", name="source", value=v.source)
        if v.status == "FAIL":
            ET.SubElement(case, "failure", message=v.detail, type="ExpectationFailed").text = \
                v.detail
        elif v.status == "N/A":
            ET.SubElement(case, "skipped", message=v.detail)
        ET.SubElement(case, "system-out").text = v.detail
    ET.indent(suites)
    text: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return text


# ---- the page -------------------------------------------------------------------------------

def decimate(points: Iterable[tuple[float, float]], t_end: float,
             buckets: int = PLOT_POINTS) -> list[tuple[float, float]]:
    """At most two points per bucket of time (its minimum and maximum), in the order they
    came: a step (two values at one instant) keeps its direction."""
    width = max(t_end, 1e-9) / buckets
    out: list[tuple[float, float]] = []
    current: int | None = None
    low = high = (0, 0.0, 0.0)  # (arrival, t, value)

    def flush() -> None:
        out.extend((t, v) for _n, t, v in sorted({low, high}))

    for n, (t, v) in enumerate(points):
        k = min(int(t / width), buckets - 1)
        if k != current:
            if current is not None:
                flush()
            current, low, high = k, (n, t, v), (n, t, v)
            continue
        if v < low[2]:
            low = (n, t, v)
        if v > high[2]:
            high = (n, t, v)
    if current is not None:
        flush()
    return out


class _Axes:
    def __init__(self, t_end: float, lo: float, hi: float) -> None:
        if hi - lo < 1e-9:
            lo, hi = lo - 1.0, hi + 1.0
        pad = (hi - lo) * 0.05
        self.t_end, self.lo, self.hi = max(t_end, 1e-9), lo - pad, hi + pad

    def x(self, t: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * t / self.t_end

    def y(self, v: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (self.hi - v) / (self.hi - self.lo)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    return [lo + (hi - lo) * k / n for k in range(n + 1)]


def _marks(ax: _Axes, marks: Sequence[tuple[float, str, str]]) -> list[str]:
    """A dashed line at each step (numbered as the report's list of steps), fault and
    state change; its name shows on hover."""
    out, n = [], 0
    for t, label, kind in marks:
        x = ax.x(t)
        out.append(f'<line class="mark {kind}" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                   f'y2="{HEIGHT - BOTTOM}"><title>{html.escape(label)} @ {t:.1f} s'
                   '</title></line>')
        if kind != "state":
            n += 1
            out.append(f'<text class="tick marknum" x="{x + 2:.1f}" y="{TOP + 8}">{n}</text>')
    return out


def seconds(t: float) -> str:
    return f"{t:.0f} s"


def plot(title: str, unit: str, series: Sequence[tuple[str, list[tuple[float, float]]]],
         t_end: float, marks: Sequence[tuple[float, str, str]],
         time_label: Callable[[float], str] = seconds) -> str:
    values = [v for _name, pts in series for _t, v in pts]
    ax = _Axes(t_end, min(values, default=0.0), max(values, default=1.0))
    parts = [f'<svg class="plot" data-title="{html.escape(title)}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             'xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{LEFT}" y="11" class="title">{html.escape(title)} ({unit})</text>']
    for v in _ticks(ax.lo, ax.hi):
        y = ax.y(v)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 4}" y="{y + 3:.1f}" '
                     f'text-anchor="end">{v:.4g}</text>')
    for t in _ticks(0.0, ax.t_end, 6):
        parts.append(f'<text class="tick" x="{ax.x(t):.1f}" y="{HEIGHT - 8}" '
                     f'text-anchor="middle">{time_label(t)}</text>')
    parts += _marks(ax, marks)
    for k, (name, pts) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        coords = " ".join(f"{ax.x(t):.1f},{ax.y(v):.1f}" for t, v in pts)
        parts.append(f'<polyline class="series" data-name="{html.escape(name)}" '
                     f'data-points="{len(pts)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.4" points="{coords}"><title>{html.escape(name)}'
                     '</title></polyline>')
        parts.append(f'<text class="legend" x="{WIDTH - RIGHT - 4}" y="{24 + 12 * k}" '
                     f'text-anchor="end" fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def strip(title: str, changes: EventSeries, t_end: float,
          marks: Sequence[tuple[float, str, str]]) -> str:
    """A value that changes at moments (the binding limit, the setpoint) as coloured spans."""
    ax = _Axes(t_end, 0.0, 1.0)
    h = 40
    items = changes.items
    rows = max(1, -(-len({str(v) for _t, v in items}) // LEGEND_PER_ROW))
    height = h + 16 + 14 * rows
    parts = [f'<svg class="plot strip" data-title="{html.escape(title)}" '
             f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{LEFT}" y="11" class="title">{html.escape(title)}</text>']
    labels: dict[str, str] = {}
    for k, (t, value) in enumerate(items):
        end = items[k + 1][0] if k + 1 < len(items) else t_end
        label = str(value)
        colour = labels.setdefault(label, COLOURS[len(labels) % len(COLOURS)])
        x0, x1 = ax.x(t), ax.x(end)
        parts.append(f'<rect class="span" x="{x0:.1f}" y="16" width="{max(x1 - x0, 0.5):.1f}" '
                     f'height="{h - 16}" fill="{colour}" opacity="0.55"><title>'
                     f'{html.escape(label)} from {t:.1f} s</title></rect>')
    for k, (label, colour) in enumerate(labels.items()):
        row, col = divmod(k, LEGEND_PER_ROW)
        parts.append(f'<text class="legend" x="{LEFT + 150 * col}" y="{h + 24 + 14 * row}" '
                     f'fill="{colour}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1 .PASS,td.PASS{color:#1a7f37}h1 .FAIL,td.FAIL{color:#c62828}td.NA{color:#777}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}svg.plot{display:block;margin:4px 0 10px}
.grid{stroke:#eee}.tick{font-size:10px;fill:#666}.title{font-size:12px;font-weight:600}
.legend{font-size:11px}.mark{stroke:#999;stroke-dasharray:3 3}.mark.fault{stroke:#c62828}
.mark.state{stroke:#bbb;stroke-dasharray:1 4}pre{background:#f6f6f6;padding:8px}
"""

# After layout, each plot says how many of its lines have a drawn length, so a test (or a
# person with the inspector) can tell an empty frame from a drawn one.
_SCRIPT = """
document.querySelectorAll('svg.plot').forEach(function (svg) {
  var lines = svg.querySelectorAll('polyline.series, rect.span');
  var drawn = 0;
  lines.forEach(function (el) {
    var box = el.getBBox();
    if (box.width > 0 || box.height > 0) { drawn += 1; }
  });
  svg.setAttribute('data-drawn', String(drawn));
});
document.body.setAttribute('data-ready', '1');
"""


def _marks_of(rec: Recording, run: RunSummary) -> list[tuple[float, str, str]]:
    marks = [(t, name, "fault" if "fault" in name.lower() else "step")
             for t, name in rec.marks]
    marks += [(t, f"state {s}", "fault" if s == "fault" else "state")
              for t, s in run.states if s in ("charging", "fault", "finished", "stopping")]
    return marks


def html_page(run: RunSummary, verdicts: Sequence[Verdict], rec: Recording,
              plots: Sequence[str] | None = None, heading: str = "The day") -> str:
    """The page; `plots` (SVG) under `heading` instead of the gun's, for a run that drew
    its own."""
    failed = any(v.status == "FAIL" for v in verdicts)
    verdict = "FAIL" if failed else "PASS"
    t_end = max(rec.end_s, 1.0)
    marks = _marks_of(rec, run)
    samples = rec.samples()
    power = [(t, i * v / 1000.0) for t, i, v in samples]
    rows = "".join(
        f'<tr><td class="{v.status.replace("/", "")}">{v.status}</td>'
        f"<td>{html.escape(v.name)}</td><td>{html.escape(v.measured)}</td>"
        f"<td>{html.escape(v.detail)}</td><td>{html.escape(v.source)}</td></tr>"
        for v in verdicts)
    gun_plots = [
        plot("current", "A", [("measured", decimate(rec.current_a.points(), t_end)),
                              ("commanded", decimate(rec.commanded_a.points(), t_end))],
             t_end, marks),
        plot("voltage", "V", [("measured", decimate(rec.voltage_v.points(), t_end))],
             t_end, marks),
        plot("DC power (- = discharge)", "kW", [("power", decimate(power, t_end))],
             t_end, marks),
        plot("state of charge", "%", [("SOC", decimate(rec.soc_pct.points(), t_end))],
             t_end, marks),
        plot("module temperature", "°C", [("module", decimate(rec.module_c.points(),
                                                                t_end))], t_end, marks),
        strip("upstream setpoint", rec.setpoint, t_end, marks),
        strip("binding limit", rec.bound_by, t_end, marks),
    ]
    if plots is None:  # a run with no plant recorded (the car against a charger): none
        plots = gun_plots if samples else []
    steps = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
    files = "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>'
                    for f in run.files)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(run.scenario)}: {verdict}</title><style>{_STYLE}</style>"
            f'</head><body data-verdict="{verdict}"><h1>{html.escape(run.scenario)}: '
            f'<span class="{verdict}">{verdict}</span></h1>'
            f"<p>{html.escape(run.description)}</p>"
            f"<p>{html.escape(run.lead)} {html.escape(run.outcome)}: "
            f"{html.escape(run.reason)}; "
            f"{run.sim_s:.0f} s simulated in {run.wall_s:.1f} s</p>"
            "<h2>Expectations</h2><table><tr><th>verdict</th><th>expectation</th>"
            f"<th>measured</th><th>detail</th><th>source</th></tr>{rows}</table>"
            + (f"<h2>{'Gun 1' if plots is gun_plots else html.escape(heading)}</h2>"
               f"{''.join(plots)}"
               if plots else "")
            + f"<h2>Steps</h2><ol>{steps}</ol><h2>Files</h2><ul>{files}</ul>"
            f"<script>{_SCRIPT}</script></body></html>")
