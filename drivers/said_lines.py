"""What a driver says about refusals and losses (a refused profile or write, a failed login
or TLS check, a dropped link, a lost heartbeat, a lapsed setpoint): the last lines are kept
for status and tests, and each is also one log record, so nothing stays in memory only."""

from __future__ import annotations

import logging
from collections import deque


class SaidLines(deque[str]):
    def __init__(self, logger: str, maxlen: int = 200) -> None:
        super().__init__(maxlen=maxlen)
        self._logger = logging.getLogger(logger)

    def append(self, line: str, level: int = logging.WARNING, event: str = "") -> None:
        """event: what kind of record it is (refused, link_lost, link_up, ...) for a
        structured log; the line is the reason."""
        super().append(line)
        self._logger.log(level, line, extra={"event": event} if event else None)
