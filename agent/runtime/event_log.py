"""What happened, as one record an event: every state change, notice, refusal, link loss
and fault, with its time, gun, session id, event and reason.

Human-readable lines by default (the lines `pile-agent run` has always printed); one JSON
object a line with `--log-format json`. Under systemd (stdout connected to the journal,
`JOURNAL_STREAM` set) each line starts with its syslog priority (`<3>` error, `<4>`
warning, `<6>` info), which journald takes as the record's level (SyslogLevelPrefix).

Python's own log records (`pile_agent.*` loggers: a contained exception, a refused OCPP
frame) go through the same writer (`LogRecordBridge`): a traceback stays inside its one
JSON record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

Level = Literal["error", "warning", "info", "debug"]
_PRIORITY = {"error": 3, "warning": 4, "info": 6, "debug": 7}

# Notices that say no to someone (an upstream offer, a start, a service request).
REFUSALS = frozenset({"setpoint_rejected", "start_refused", "owner_policy_rejected",
                      "faults_not_cleared"})


@dataclass(frozen=True, slots=True)
class Record:
    event: str  # state, fault, notice, refused, session, link_lost, link_up, agent, log ...
    reason: str
    t: float | None = None  # the agent's monotonic clock (s); None: not on it
    wall: float = 0.0  # Unix time
    gun: int | None = None
    session: str | None = None
    level: Level = "info"
    fields: dict[str, object] = field(default_factory=dict)
    text: str = ""  # the human line, when it has one of its own

    def as_json(self) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(self.wall, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": self.level, "event": self.event}
        if self.t is not None:
            doc["t"] = round(self.t, 3)
        if self.gun is not None:
            doc["gun"] = self.gun
        if self.session is not None:
            doc["session"] = self.session
        doc["reason"] = self.reason
        doc.update({k: _plain(v) for k, v in self.fields.items()})
        return json.dumps(doc, ensure_ascii=False)


def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class EventLog:
    """Writes each record as a line; listeners (metrics, the status page) see each too."""

    def __init__(self, out: IO[str] | None = None, *, json_lines: bool = False,
                 wall: Callable[[], float] = time.time, journal: bool | None = None,
                 gun_prefix: bool = True) -> None:
        self.out = out if out is not None else sys.stdout
        self.json_lines = json_lines
        self.wall = wall
        self.journal = "JOURNAL_STREAM" in os.environ if journal is None else journal
        self.gun_prefix = gun_prefix  # "gun N: " before a gun's lines (a pile of several)
        self.listeners: list[Callable[[Record], None]] = []

    def emit(self, event: str, reason: str, *, t: float | None = None, gun: int | None = None,
             session: str | None = None, level: Level = "info", text: str = "",
             **fields: object) -> Record:
        record = Record(event, reason, t, self.wall(), gun, session, level, dict(fields), text)
        self.publish(record)
        return record

    def publish(self, record: Record) -> None:
        self.write(record)
        for listener in self.listeners:
            listener(record)

    def write(self, record: Record) -> None:
        line = record.as_json() if self.json_lines else self._text(record)
        if self.journal:
            # journald reads the priority from each line's prefix; a multi-line record's
            # other lines get the same one.
            prefix = f"<{_PRIORITY[record.level]}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        with contextlib.suppress(OSError, ValueError):  # a closed or full stdout must not
            print(line, file=self.out, flush=True)  # stop the pile

    def who(self, gun: int | None) -> str:
        return f"gun {gun}: " if gun is not None and self.gun_prefix else ""

    def _text(self, r: Record) -> str:
        if r.text:
            return r.text
        stamp = f"[{r.t:9.3f} s] " if r.t is not None else ""
        return f"{stamp}{self.who(r.gun)}{r.event}: {r.reason}"


EVENTS_FILE = "events.jsonl"


class EventsFile:
    """Every record also as a JSON line in `directory/events.jsonl` (with [traces] on): what
    `pile-agent diagnostics` and OCPP GetLog put in their archive. Rotated at max_bytes
    (events.1.jsonl ... events.<keep>.jsonl, the oldest dropped)."""

    def __init__(self, directory: Path, max_bytes: int = 10_000_000, keep: int = 5) -> None:
        self.path = directory / EVENTS_FILE
        self.max_bytes = max_bytes
        self.keep = keep
        self.failed = False

    def __call__(self, record: Record) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                self._rotate()
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(record.as_json() + "\n")
        except OSError:
            self.failed = True  # said by the traces' own error; the pile goes on

    def _rotate(self) -> None:
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"events.{n}.jsonl")
            if older.exists():
                older.replace(self.path.with_name(f"events.{n + 1}.jsonl"))
        self.path.replace(self.path.with_name("events.1.jsonl"))


class LogRecordBridge(logging.Handler):
    """Python log records (the `pile_agent` loggers) as event records: the event a driver
    named (`extra={"event": ...}`: refused, link_lost, link_up ...) or "log", the logger's
    name and, in JSON, the traceback inside the one record."""

    def __init__(self, events: EventLog) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: Level = "error" if record.levelno >= logging.ERROR else \
                "warning" if record.levelno >= logging.WARNING else "info"
            message = record.getMessage()
            fields: dict[str, object] = {"logger": record.name}
            text = f"{record.name}: {message}"
            if record.exc_info:
                trace = logging.Formatter().formatException(record.exc_info)
                fields["traceback"] = trace
                text += "\n" + trace
            event = getattr(record, "event", "") or "log"
            self.events.publish(Record(event, message, wall=record.created, level=level,
                                       fields=fields, text=text))
        except Exception:
            self.handleError(record)


def route_python_logging(events: EventLog) -> LogRecordBridge:
    """The agent's loggers through `events`; libraries' only from WARNING up."""
    bridge = LogRecordBridge(events)
    agent = logging.getLogger("pile_agent")
    agent.addHandler(bridge)
    agent.setLevel(logging.INFO)
    agent.propagate = False
    return bridge
