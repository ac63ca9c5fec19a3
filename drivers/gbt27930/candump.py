"""candump log format: `(1703560121.247259) can0 1826F456#010100`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_LINE = re.compile(
    r"^\((\d+(?:\.\d+)?)\)\s+(\S+)\s+([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#([0-9A-Fa-f]*)$"
)


class CandumpWriter:
    """Writes frames with `epoch + t` timestamps, t being the session clock."""

    def __init__(self, out: IO[str], channel: str = "can0", epoch: float = 0.0) -> None:
        self.out = out
        self.channel = channel
        self.epoch = epoch

    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None:
        ident = f"{can_id:08X}" if extended else f"{can_id:03X}"
        self.out.write(f"({self.epoch + t:.6f}) {self.channel} {ident}#{data.hex().upper()}\n")


def parse_candump_line(line: str) -> tuple[float, int, bytes] | None:
    m = _LINE.match(line.strip())
    if m is None or len(m.group(4)) % 2:
        return None
    return float(m.group(1)), int(m.group(3), 16), bytes.fromhex(m.group(4))


def read_candump(path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp, CAN id, data) per well-formed line; other lines are skipped."""
    with open(path) as fh:
        for line in fh:
            frame = parse_candump_line(line)
            if frame is not None:
                yield frame
