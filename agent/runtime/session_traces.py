"""Each session's CAN traffic in files of its own (`[traces]`): candump by default, and
Vector .asc / .blf through python-can's own loggers when asked; named with the ledger's
session id, so yesterday's failed session is found from its ledger row. The directory is
kept to `keep_days` and `keep_mb` (oldest files go first), pruned as each session's files
close.

The gun's CAN link writes every frame it sends and receives through a `TraceTee` (the
`--can-log` file too, when given); the tee asks the gun which session is running and
opens that session's files at its first frame.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import can

from drivers.gbt27930.candump import CandumpWriter

log = logging.getLogger("pile_agent.traces")

CHARGER_ADDRESS = 0x56  # GB/T 27930-2015: the charger's source address (our frames)
FORMATS = ("candump", "asc", "blf")
SUFFIX = {"candump": ".log", "asc": ".asc", "blf": ".blf"}


class FrameWriter(Protocol):
    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None: ...


@dataclass(frozen=True, slots=True)
class TraceSettings:
    directory: Path
    formats: tuple[str, ...] = ("candump",)
    keep_days: float = 30.0
    keep_mb: float = 500.0


class TraceFiles:
    """One session's open files: `<name>.log`, `.asc`, `.blf` as the settings ask (the HIL
    report writes a run's traffic with it too)."""

    def __init__(self, settings: TraceSettings, session_id: str, channel: str,
                 epoch: float) -> None:
        self.session_id = session_id
        self.epoch = epoch
        self.channel = channel
        def path(fmt: str) -> Path:  # the id has dots: a suffix is added, not replaced
            return settings.directory / f"{session_id}{SUFFIX[fmt]}"

        self._text: IO[str] | None = None
        self._candump: CandumpWriter | None = None
        self._loggers: list[can.Listener] = []
        if "candump" in settings.formats:
            self._text = open(path("candump"), "a")  # noqa: SIM115
            self._candump = CandumpWriter(self._text, channel=channel, epoch=epoch)
        if "asc" in settings.formats:
            self._loggers.append(can.ASCWriter(path("asc")))
        if "blf" in settings.formats:
            self._loggers.append(can.BLFWriter(path("blf")))

    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None:
        if self._candump is not None:
            self._candump.write(t, can_id, data, extended)
        if self._loggers:
            msg = can.Message(timestamp=self.epoch + t, arbitration_id=can_id, data=data,
                              is_extended_id=extended, channel=self.channel,
                              is_rx=(can_id & 0xFF) != CHARGER_ADDRESS)
            for logger in self._loggers:
                logger.on_message_received(msg)

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        for logger in self._loggers:
            with contextlib.suppress(Exception):
                logger.stop()


class SessionTraces:
    """The trace files of one gun: its running session's, and the directory's upkeep."""

    def __init__(self, settings: TraceSettings, channel: str, epoch: float,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.channel = channel
        self.epoch = epoch
        self.wall = wall
        self._open: TraceFiles | None = None
        self.failed = ""  # why the directory could not be written (said once)

    def write(self, session_id: str | None, t: float, can_id: int, data: bytes,
              extended: bool) -> None:
        if session_id is None:
            self.close()
            return
        if self._open is None or self._open.session_id != session_id:
            self.close()
            try:
                self.settings.directory.mkdir(parents=True, exist_ok=True)
                self._open = TraceFiles(self.settings, session_id, self.channel,
                                           self.epoch)
            except (OSError, ValueError) as exc:
                if not self.failed:
                    self.failed = str(exc)
                    log.error("CAN traces: cannot write in %s: %s", self.settings.directory,
                              exc)
                return
        self._open.write(t, can_id, data, extended)

    def close(self) -> None:
        """The running session's files closed (the gun is idle again), then the
        directory pruned."""
        if self._open is None:
            return
        self._open.close()
        self._open = None
        prune(self.settings, self.wall())


def prune(settings: TraceSettings, now: float) -> list[Path]:
    """Files older than keep_days go, then the oldest until the directory holds at most
    keep_mb; what went."""
    try:
        files = sorted((p for p in settings.directory.iterdir() if p.is_file()),
                       key=lambda p: p.stat().st_mtime)
    except OSError:
        return []
    gone: list[Path] = []
    total = sum(p.stat().st_size for p in files)
    for p in files:
        st = p.stat()
        if now - st.st_mtime > settings.keep_days * 86_400 or total > settings.keep_mb * 1e6:
            with contextlib.suppress(OSError):
                p.unlink()
                gone.append(p)
                total -= st.st_size
    return gone


class TraceTee:
    """What a gun's CAN link writes to: the `--can-log` file and the session's traces."""

    def __init__(self, log_file: FrameWriter | None, traces: SessionTraces | None,
                 session_id: Callable[[], str | None]) -> None:
        self.log_file = log_file
        self.traces = traces
        self.session_id = session_id

    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None:
        if self.log_file is not None:
            self.log_file.write(t, can_id, data, extended)
        if self.traces is not None:
            self.traces.write(self.session_id(), t, can_id, data, extended)
