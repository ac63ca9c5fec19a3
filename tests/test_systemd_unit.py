"""The shipped unit file says what docs/OPERATIONS.md promises, and the notifier speaks
sd_notify(3): one datagram per message to NOTIFY_SOCKET (a path or an abstract name),
nothing at all without it, the watchdog period from WATCHDOG_USEC for this process only."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from agent.runtime.sd_notify import SdNotifier

UNIT = Path(__file__).resolve().parents[1] / "docs" / "pile-agent.service"


def _unit() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return sections


def test_the_unit_is_a_notify_service_with_a_watchdog_and_bounded_restarts() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    # Pinged every second: the watchdog must allow several missed pings, and more than the
    # 3 s after which a hung gun loop withholds them.
    assert int(service["WatchdogSec"]) >= 6
    assert service["Restart"] == "on-failure"
    assert int(unit["Unit"]["StartLimitBurst"]) <= 10
    assert int(unit["Unit"]["StartLimitIntervalSec"]) >= 60
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 5  # the agent's own stop takes <= 5 s
    assert " run --config " in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_sd_notify_sends_one_datagram_per_message(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        n = SdNotifier({"NOTIFY_SOCKET": path})
        assert n.enabled and n.watchdog_s is None
        assert n.notify("READY=1", "STATUS=gun 1: available, idle")
        assert sock.recv(4096) == b"READY=1\nSTATUS=gun 1: available, idle"
        n.close()


def test_sd_notify_to_an_abstract_socket() -> None:
    name = f"pile-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        n = SdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_no_socket_no_messages_and_the_watchdog_only_for_this_process() -> None:
    assert not SdNotifier({}).notify("READY=1")
    assert SdNotifier({"WATCHDOG_USEC": "4000000"}).watchdog_s == 4.0
    pid = str(os.getpid())
    assert SdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}).watchdog_s == 4.0
    assert SdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert SdNotifier({"WATCHDOG_USEC": "0"}).watchdog_s is None
    assert SdNotifier({"WATCHDOG_USEC": "soon"}).watchdog_s is None
    # A socket that is gone is a logged failure, not an exception.
    n = SdNotifier({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert not n.notify("READY=1")
    n.close()
