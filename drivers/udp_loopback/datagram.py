"""One CAN frame as one UDP datagram: a 4-byte magic, flags, the identifier, the DLC and
the data. Pure; the bus stamps a frame with its own receive time, as a CAN controller does."""

from __future__ import annotations

import struct

import can

MAGIC = b"PCL1"
_HEADER = struct.Struct("!4sBIB")  # magic, flags, arbitration id, dlc
MAX_DATA = 64  # CAN FD's largest frame

_EXTENDED, _REMOTE, _ERROR, _FD, _BRS, _ESI = (1 << i for i in range(6))


class ForeignDatagram(ValueError):
    """A datagram that is not a frame of this transport (a port reused by someone else)."""


def encode(msg: can.Message) -> bytes:
    data = bytes(msg.data)
    if len(data) > MAX_DATA:
        raise ValueError(f"CAN frame of {len(data)} bytes (at most {MAX_DATA})")
    flags = ((_EXTENDED if msg.is_extended_id else 0) | (_REMOTE if msg.is_remote_frame else 0)
             | (_ERROR if msg.is_error_frame else 0) | (_FD if msg.is_fd else 0)
             | (_BRS if msg.bitrate_switch else 0) | (_ESI if msg.error_state_indicator else 0))
    return _HEADER.pack(MAGIC, flags, msg.arbitration_id, msg.dlc) + data


def decode(datagram: bytes, timestamp: float, channel: str) -> can.Message:
    if len(datagram) < _HEADER.size:
        raise ForeignDatagram(f"{len(datagram)} bytes, shorter than a frame header")
    magic, flags, arbitration_id, dlc = _HEADER.unpack_from(datagram)
    data = datagram[_HEADER.size:]
    if magic != MAGIC or len(data) > MAX_DATA or arbitration_id >= 1 << 29:
        raise ForeignDatagram("not a udp_loopback CAN frame")
    return can.Message(timestamp=timestamp, arbitration_id=arbitration_id,
                       is_extended_id=bool(flags & _EXTENDED),
                       is_remote_frame=bool(flags & _REMOTE),
                       is_error_frame=bool(flags & _ERROR), is_fd=bool(flags & _FD),
                       bitrate_switch=bool(flags & _BRS),
                       error_state_indicator=bool(flags & _ESI), dlc=dlc, data=data,
                       channel=channel, check=False)
