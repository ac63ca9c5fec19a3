"""python-can interface `udp_loopback`: a CAN bus between processes of one host.

Each member binds a UDP socket to 127.0.0.1 (never INADDR_ANY) and sends every frame as one
datagram to each other member of its channel (drivers/udp_loopback/roster.py). A socket
bound to a loopback address can neither receive from nor send to another interface (Linux
refuses a route off `lo` for a loopback source), so nothing of it leaves the host, unlike
python-can's `udp_multicast`, whose groups go out of the default route's interface.
Like a CAN bus: every member hears every frame but its own (unless `receive_own_messages`);
a frame is dropped, not queued, for a member whose receive buffer is full, and counted.

    can.Bus(interface="udp_loopback", channel="gun1")
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import can

from drivers.udp_loopback.datagram import ForeignDatagram, decode, encode
from drivers.udp_loopback.roster import LOOPBACK, Roster, channel_directory

_MAX_DATAGRAM = 128


class UdpLoopbackBus(can.BusABC):
    def __init__(self, channel: str = "can0", receive_own_messages: bool = False,
                 **kwargs: Any) -> None:
        try:
            directory = channel_directory(str(channel))
        except ValueError as exc:
            raise can.CanInitializationError(str(exc)) from None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((LOOPBACK, 0))
            self._sock.setblocking(False)
            self.roster = Roster(directory, self._sock.getsockname()[1])
            self.roster.join()
        except OSError as exc:
            self._sock.close()
            raise can.CanInitializationError(
                f"udp_loopback channel {channel!r} ({directory}): {exc}") from None
        self.channel_info = f"udp_loopback {channel} (127.0.0.1:{self.roster.own_port})"
        self._channel = str(channel)
        self._own: list[can.Message] = []
        self._receive_own = receive_own_messages
        self.dropped = 0  # frames a member could not take (its buffer full, or gone)
        self.foreign = 0  # datagrams on our port that were not frames
        super().__init__(channel=channel, **kwargs)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        try:
            datagram = encode(msg)
        except ValueError as exc:
            raise can.CanOperationError(str(exc)) from None
        for peer in self.roster.peers(time.monotonic()):
            try:
                self._sock.sendto(datagram, peer)
            except OSError:
                self.dropped += 1
        if self._receive_own:
            self._own.append(decode(datagram, time.time(), self._channel))

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if self._own:
            return self._own.pop(0), False
        try:
            datagram = self._sock.recv(_MAX_DATAGRAM)
        except BlockingIOError:
            if timeout is not None and timeout <= 0:
                return None, False
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if not ready:
                return None, False
            try:
                datagram = self._sock.recv(_MAX_DATAGRAM)
            except BlockingIOError:
                return None, False
        except OSError as exc:
            raise can.CanOperationError(f"udp_loopback receive: {exc}") from None
        try:
            return decode(datagram, time.time(), self._channel), False
        except ForeignDatagram:
            self.foreign += 1
            return None, False

    def shutdown(self) -> None:
        self.roster.leave()
        self._sock.close()
        super().shutdown()
