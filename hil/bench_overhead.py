"""`pile-agent bench --overhead GUNS`: what watching the pile costs (issue 22). The agent
(`pile-agent run`, own process) on GUNS charging guns, alternately with its metrics and
status endpoints off and stdout discarded, and with both endpoints on and scraped every
second and its event records as JSON lines to a file (hil/bench_scale.py --observe); each
pair run `trials` times. Prints JSON: every run, and per mode the medians of the agent's
CPU (% of one core) and of the CCS period's p99, and their ratios on / off."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any


def _run(guns: int, observe: bool) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "hil.bench_scale", str(guns),
                           *(["--observe"] if observe else [])],
                          capture_output=True, text=True, timeout=600)
    try:
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (done.stderr or done.stdout)[-500:]}
    return figures


def _median(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return round(statistics.median(values), 2) if values else None


def overhead(guns: int, trials: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(trials):
        for mode in ("off", "on"):  # alternating: a drift in the machine's load hits both
            runs[mode].append(_run(guns, mode == "on"))
    out: dict[str, Any] = {"guns": guns, "trials": trials, "runs": runs}
    for mode in ("off", "on"):
        out[f"{mode}_cpu_pct_median"] = _median(runs[mode], "agent_cpu_pct_of_one_core")
        out[f"{mode}_ccs_p99_ms_median"] = _median(runs[mode], "ccs_period_ms", "p99")
    for figure in ("cpu_pct", "ccs_p99_ms"):
        off, on = out[f"off_{figure}_median"], out[f"on_{figure}_median"]
        out[f"{figure}_ratio_on_off"] = round(on / off, 3) if off and on else None
    return out


def main(guns: int, trials: int, pretty: bool) -> int:
    print(json.dumps(overhead(guns, trials), indent=2 if pretty else None))
    return 0
