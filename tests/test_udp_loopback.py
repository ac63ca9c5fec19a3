"""The `udp_loopback` CAN interface (drivers/udp_loopback): a bus between processes that
never leaves loopback. Frames reach every other member whole; every socket it holds is bound
to 127.0.0.1 and sends only to members on 127.0.0.1; the socket audit the bench relies on
flags a socket that could reach another interface."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import can
import pytest

from agent.runtime.config import ConfigError, parse_config
from drivers.gbt27930.rx_notify import NotifiedBus
from drivers.udp_loopback.datagram import MAGIC
from drivers.udp_loopback.roster import channel_directory
from hil.socket_audit import inet_sockets, off_loopback


def _channel() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _bus(channel: str, **kwargs: object) -> can.BusABC:
    return can.Bus(interface="udp_loopback", channel=channel, **kwargs)


def test_every_member_hears_every_frame_but_its_own() -> None:
    channel = _channel()
    a, b, c = _bus(channel), _bus(channel), _bus(channel)
    try:
        frames = [can.Message(arbitration_id=0x1826F456, data=bytes(range(8)), is_extended_id=True),
                  can.Message(arbitration_id=0x123, data=b"", is_extended_id=False),
                  can.Message(arbitration_id=0x7FF, is_remote_frame=True, dlc=4,
                              is_extended_id=False),
                  can.Message(arbitration_id=0x18FF50E5, data=bytes(64), is_fd=True,
                              bitrate_switch=True, is_extended_id=True)]
        for frame in frames:
            a.send(frame)
        for member in (b, c):
            for sent in frames:
                got = member.recv(2.0)
                assert got is not None, sent
                assert got.equals(sent, timestamp_delta=None, check_channel=False), (got, sent)
                assert got.channel == channel
        assert a.recv(0.05) is None  # no echo unless asked
        b.send(frames[0])
        assert a.recv(2.0) is not None and c.recv(2.0) is not None
    finally:
        for member in (a, b, c):
            member.shutdown()
    assert not channel_directory(channel).exists()  # the last member tidies its channel


def test_channels_are_apart_and_own_messages_on_request() -> None:
    a, b = _bus(_channel(), receive_own_messages=True), _bus(_channel())
    try:
        a.send(can.Message(arbitration_id=0x1, data=b"\x01"))
        own = a.recv(1.0)
        assert own is not None and bytes(own.data) == b"\x01"
        assert b.recv(0.1) is None
    finally:
        a.shutdown()
        b.shutdown()


def test_sockets_are_bound_to_and_send_to_loopback_only() -> None:
    channel = _channel()
    a, b = _bus(channel), _bus(channel)
    try:
        for member in (a, b):
            sock = socket.socket(fileno=os.dup(member.fileno()))
            try:
                assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
                assert sock.getsockname()[0] == "127.0.0.1"
            finally:
                sock.close()
            peers = member.roster.peers(0.0)  # type: ignore[attr-defined]
            assert peers and all(host == "127.0.0.1" for host, _ in peers), peers
        ports = {a.roster.own_port, b.roster.own_port}  # type: ignore[attr-defined]
        held = [s for s in inet_sockets() if int(s.local.rsplit(":", 1)[1]) in ports]
        assert len(held) == 2 and all(s.on_loopback() for s in held), held
    finally:
        a.shutdown()
        b.shutdown()


def test_the_audit_flags_a_socket_that_could_leave_the_host() -> None:
    """The check the bench's figures rest on can fail: a socket on every interface (as
    python-can's multicast interface binds) is named; loopback sockets and connections are not."""
    wide = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wide.bind(("0.0.0.0", 0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    try:
        flagged = off_loopback()
        port = wide.getsockname()[1]
        assert f"udp 0.0.0.0:{port} -> 0.0.0.0:0" in flagged, flagged
        assert not any(str(listener.getsockname()[1]) in line for line in flagged), flagged
        assert not any(f":{client.getsockname()[1]} " in line for line in flagged), flagged
    finally:
        for sock in (wide, listener, client):
            sock.close()


def test_a_process_on_the_bus_holds_no_socket_off_loopback() -> None:
    """A process that opens the harness's pile of simulators on udp_loopback, as the bench
    does, and talks on it, holds no internet socket that is not on loopback."""
    done = subprocess.run([sys.executable, "-m", "tests.loopback_probe"], capture_output=True,
                          text=True, timeout=60, check=False,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["off"] == [] and out["n"] >= 10, out  # 4 buses, 6 Modbus servers
    assert out["heard"] == [True, True], out  # each car answered the CHM with its BHM


def test_a_member_killed_without_leaving_is_forgotten() -> None:
    channel = _channel()
    a = _bus(channel)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        stale = channel_directory(channel) / "9"
        stale.write_text(dead.stdout)
        assert a.roster.peers(1e9) == []  # type: ignore[attr-defined]
        assert not stale.exists()
    finally:
        a.shutdown()


def test_a_foreign_datagram_is_counted_not_a_frame() -> None:
    channel = _channel()
    a = _bus(channel)
    try:
        port = a.roster.own_port  # type: ignore[attr-defined]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"hello", ("127.0.0.1", port))
            other.sendto(MAGIC + b"\x00", ("127.0.0.1", port))
        assert a.recv(0.3) is None
        assert a.foreign == 2  # type: ignore[attr-defined]
    finally:
        a.shutdown()


def test_notifier_reads_it_on_the_event_loop() -> None:
    """The agent's reader (drivers/gbt27930/rx_notify.py) wakes on a frame through the
    socket's descriptor: no reader thread."""
    channel = _channel()

    async def run() -> bytes:
        woke = asyncio.Event()
        bus, sender = _bus(channel), _bus(channel)
        notified = NotifiedBus(bus, asyncio.get_running_loop(), woke.set)
        try:
            sender.send(can.Message(arbitration_id=0x1826F456, data=b"\x10\x01"))
            await asyncio.wait_for(woke.wait(), 2.0)
            frame = notified.recv()
            assert frame is not None
            return bytes(frame.data)
        finally:
            notified.close()
            bus.shutdown()
            sender.shutdown()

    assert asyncio.run(run()) == b"\x10\x01"


@pytest.mark.parametrize("channel", ["", "a b", "../up", "x" * 65])
def test_a_bad_channel_is_a_config_error(channel: str) -> None:
    with pytest.raises(ConfigError, match=r"can\.channel: udp_loopback channel"):
        parse_config({"can": {"interface": "udp_loopback", "channel": channel}})
    with pytest.raises(can.CanInitializationError, match="udp_loopback channel"):
        _bus(channel)
