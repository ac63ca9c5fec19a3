"""One archive of what happened between two times, for whoever has to find out why:
`pile-agent diagnostics --since ... --until ...`, and the file OCPP GetLog uploads.

In the .tar.gz:
- MANIFEST.txt: the window, what is in the archive and what could not be had (and why);
- versions.json: the agent's and its libraries' versions, Python, the platform;
- config.json: the pile's configuration as the agent reads it, secrets redacted;
- ledger.json: the ledger's sessions and intervals that overlap the window;
- events.jsonl: the event records of the window ([traces] on: the agent keeps them);
- journal.jsonl: the unit's journal for the window, when journalctl has it;
- traces/: the CAN traces of the sessions of the window ([traces] on).
A SecurityLog holds the link and refusal records only, and no traces or ledger.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.ledger.store import Ledger, LedgerError
from agent.runtime.config import PileConfig
from agent.runtime.event_log import EVENTS_FILE
from agent.version import package_version

SECRET = re.compile(r"password|secret|token|key_file|private", re.IGNORECASE)
SECURITY_EVENTS = frozenset({"link_lost", "link_up", "refused", "endpoint_failed"})
PACKAGES = ("pile-agent", "python-can", "pymodbus", "ocpp", "websockets", "transitions",
            "cantools", "prometheus-client")
# A session's traces are named with its ledger key: gun<N>-<start, Unix time>-<random>.
_TRACE_START = re.compile(r"^gun\d+-(\d+(?:\.\d+)?)-")


def redacted(value: Any, key: str = "") -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: redacted(getattr(value, f.name), f.name)
                for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v, key) for v in value]
    if SECRET.search(key) and value:
        return "<redacted>"
    if isinstance(value, str):
        return re.sub(r"://[^/@\s]+@", "://<redacted>@", value)  # credentials in a URL
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        version = package_version(name)
        out[name] = "not installed" if version == "unknown" else version
    return out


def _overlaps(start: object, end: object, since: float, until: float) -> bool:
    s = float(start) if isinstance(start, int | float) else -math.inf
    e = float(end) if isinstance(end, int | float) else math.inf
    return s <= until and e >= since


def ledger_rows(path: str, since: float, until: float) -> tuple[dict[str, Any], str]:
    try:
        ledger = Ledger(path, read_only=True)
    except LedgerError as exc:
        return {}, f"ledger: {exc}"
    try:
        sessions = [r for r in ledger.sessions()
                    if _overlaps(r["start_wall"], r["end_wall"], since, until)]
        intervals = [r for r in ledger.intervals()
                     if _overlaps(r["start_wall"], r["end_wall"], since, until)]
    except LedgerError as exc:
        return {}, f"ledger: {exc}"
    finally:
        ledger.close()
    return {"sessions": sessions, "intervals": intervals}, ""


def event_lines(directory: Path, since: float, until: float,
                security_only: bool) -> Iterator[str]:
    files = sorted(directory.glob("events*.jsonl"), key=lambda p: p.stat().st_mtime)
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                    stamp = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn last line of a killed run
                if since <= stamp.timestamp() <= until and (
                        not security_only or record.get("event") in SECURITY_EVENTS):
                    yield line.rstrip("\n")


def trace_files(directory: Path, since: float, until: float) -> list[Path]:
    out = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        m = _TRACE_START.match(path.name)
        if m is None or not path.is_file():
            continue
        started, last_written = float(m.group(1)), path.stat().st_mtime
        if started <= until and last_written >= since:
            out.append(path)
    return out


def journal(unit: str, since: float, until: float) -> tuple[bytes, str]:
    if not unit:
        return b"", "journal: not asked for"
    tool = shutil.which("journalctl")
    if tool is None:
        return b"", "journal: journalctl is not on this machine"
    try:
        done = subprocess.run([tool, "-u", unit, "--since", f"@{since:.0f}", "--until",
                               f"@{until:.0f}", "-o", "json", "--no-pager"],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return b"", f"journal: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        return b"", f"journal: nothing for unit {unit} ({done.stderr.decode()[:200].strip()})"
    return done.stdout, ""


def build_archive(config: PileConfig, since: float, until: float, out: Path, *,
                  log_type: str = "DiagnosticsLog", unit: str = "pile-agent") -> Path:
    security = log_type == "SecurityLog"
    missing: list[str] = []
    contents: list[str] = []

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        contents.append(name)

    def dumps(doc: object) -> bytes:
        return json.dumps(doc, indent=2, default=str).encode()

    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        add(tar, "versions.json", dumps(versions()))
        add(tar, "config.json", dumps(redacted(config)))
        if not security:
            rows, why = ledger_rows(config.ledger.path, since, until)
            if why:
                missing.append(why)
            else:
                add(tar, "ledger.json", dumps(rows))
        directory = Path(config.traces.directory)
        if config.traces.enabled:
            lines = list(event_lines(directory, since, until, security))
            add(tar, "events.jsonl", "".join(f"{line}\n" for line in lines).encode())
            if not security:
                for path in trace_files(directory, since, until):
                    tar.add(path, arcname=f"traces/{path.name}")
                    contents.append(f"traces/{path.name}")
        else:
            missing.append(f"events and CAN traces: [traces] is off (the agent keeps "
                           f"{EVENTS_FILE} and each session's traces only with it on)")
        data, why = journal(unit, since, until)
        if why:
            missing.append(why)
        else:
            add(tar, "journal.jsonl", data)
        window = (f"{datetime.fromtimestamp(since).astimezone().isoformat()} to "
                  f"{datetime.fromtimestamp(until).astimezone().isoformat()}")
        manifest = [f"pile-agent {log_type}", f"window: {window}", "", "contents:",
                    *(f"  {name}" for name in [*contents, "MANIFEST.txt"]), "",
                    "not included:", *(f"  {why}" for why in missing or ["nothing"])]
        add(tar, "MANIFEST.txt", ("\n".join(manifest) + "\n").encode())
    return out


def parse_time(text: str) -> float:
    """ISO 8601 (a time without an offset is the controller's local time), or 'now'."""
    if text == "now":
        return time.time()
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (stamp if stamp.tzinfo else stamp.astimezone()).timestamp()
