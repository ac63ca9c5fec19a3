"""Who is on a channel: a directory with one file per member, named by the member's UDP
port on 127.0.0.1 and holding its process id. A member joins by writing its file (atomically)
and leaves by removing it; the file of a member that was killed is removed by the next member
that finds its process gone. The directory is re-read when it changes and at least once a
second, so a send costs one stat of it."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

LOOPBACK = "127.0.0.1"
PRUNE_PERIOD_S = 1.0  # how often the roster looks for members whose process is gone
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BASE_ENV = "PILE_AGENT_CAN_DIR"


def channel_directory(channel: str) -> Path:
    """The directory of a channel: an absolute path as given, or a name (letters, digits,
    `.`, `_`, `-`; up to 64) under $PILE_AGENT_CAN_DIR or the temporary directory."""
    if os.path.isabs(channel):
        return Path(channel)
    if not _NAME.fullmatch(channel):
        raise ValueError(f"udp_loopback channel {channel!r}: a name of letters, digits, '.', "
                         "'_' and '-' (up to 64), or an absolute directory path")
    base = os.environ.get(BASE_ENV) or os.path.join(tempfile.gettempdir(),
                                                    f"pile-agent-can-{os.getuid()}")
    return Path(base) / channel


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


class Roster:
    def __init__(self, directory: Path, own_port: int) -> None:
        self.directory = directory
        self.own_port = own_port
        self._file = directory / str(own_port)
        self._seen_mtime = -1
        self._pruned_at = -PRUNE_PERIOD_S
        self._peers: list[tuple[str, int]] = []

    def join(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = self.directory / f".{self.own_port}.joining"
        staging.write_text(f"{os.getpid()}\n")
        os.replace(staging, self._file)

    def leave(self) -> None:
        with contextlib.suppress(OSError):  # gone already
            self._file.unlink()
        with contextlib.suppress(OSError):  # other members remain in the directory
            self.directory.rmdir()

    def peers(self, now: float) -> list[tuple[str, int]]:
        """Every other member's address (always on 127.0.0.1)."""
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            mtime = -2  # the directory went away: nobody to send to
        if mtime != self._seen_mtime or now - self._pruned_at >= PRUNE_PERIOD_S:
            self._seen_mtime, self._pruned_at = mtime, now
            self._peers = self._read() if mtime >= 0 else []
        return self._peers

    def _read(self) -> list[tuple[str, int]]:
        peers = []
        for entry in os.scandir(self.directory):
            if not entry.name.isdigit() or int(entry.name) == self.own_port:
                continue
            try:
                pid = int(Path(entry.path).read_text().strip() or "0")
            except (OSError, ValueError):
                continue
            if pid <= 0 or not _alive(pid):
                Path(entry.path).unlink(missing_ok=True)  # a member killed without leaving
                continue
            port = int(entry.name)
            if 0 < port < 65536:
                peers.append((LOOPBACK, port))
        return peers
