"""`pile-agent status --config pile.toml [--json]`: each gun of the running agent, read
from its status endpoint (`[status]`, GET /status on loopback by default)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import IO, Any

from agent.runtime.config import ConfigError, load_config
from agent.runtime.http_endpoint import url_host

TIMEOUT_S = 3.0


def status_url(host: str, port: int) -> str:
    """The endpoint's address as a client reaches it (a wildcard listen: loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{url_host(host)}:{port}/status"


def _num(value: float | None, unit: str, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:{'+' if sign else ''}.{digits}f} {unit}"


def gun_line(g: dict[str, Any]) -> str:
    power_kw = None if g["power_w"] is None else g["power_w"] / 1000
    upstream = f"{g['upstream_source']} ({_num(g['upstream_age_s'], 's', 0)})" \
        if g["upstream_source"] else "fallback"
    faults = ", ".join(g["faults"]) or "-"
    return (f"gun {g['gun']}: {g['status']}, {g['state']}; {_num(power_kw, 'kW', 1, True)} "
            f"({g['direction']}), {_num(g['current_a'], 'A', 1, True)} at "
            f"{_num(g['voltage_v'], 'V')}; SOC {_num(g['soc_pct'], '%', 0)}; bound by "
            f"{g['bound_by'] or '-'}; session {g['session_charged_kwh']:.2f} kWh in, "
            f"{g['session_discharged_kwh']:.2f} kWh out; upstream {upstream}; "
            f"faults {faults}")


def status_text(doc: dict[str, Any]) -> str:
    o, e = doc["ocpp"], doc["ems"]
    head = f"pile-agent {doc['version']}, up {doc['uptime_s']:.0f} s"
    if o["enabled"]:
        head += f"; OCPP {'online' if o['online'] else 'offline'} (outbox {o['outbox']})"
    if e["enabled"]:
        age = e["heartbeat_age_s"]
        head += "; EMS " + ("heartbeat lost" if e["heartbeat_lost"] else
                            f"heartbeat {age:.0f} s ago" if age is not None else "no heartbeat")
    return "\n".join([head, *(gun_line(g) for g in doc["guns"])])


def run_status(config_path: str, as_json: bool, out: IO[str] | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"pile-agent status: bad config: {exc}", file=sys.stderr)
        return 2
    if not config.status.enabled:
        print("pile-agent status: [status] enabled = false in the config: the agent serves "
              "no status", file=sys.stderr)
        return 2
    url = status_url(config.status.host, config.status.port)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            body = answer.read()
        doc = json.loads(body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"pile-agent status: no answer from {url} ({exc}); is `pile-agent run "
              f"--config {config_path}` running?", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if as_json else status_text(doc), file=out or sys.stdout)
    return 0
