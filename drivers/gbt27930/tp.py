"""SAE J1939-21 connection-mode transport protocol (RTS/CTS), sans-I/O.

GB/T 27930-2015 §6.5 carries messages of 9-1785 bytes this way. Both ends are plain
objects: feed them TP.CM / TP.DT payloads and the time, take the payloads they want
sent. Problems (aborts, timeouts, bad sequence) are returned, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
CM_RTS = 0x10
CM_CTS = 0x11
CM_EOM_ACK = 0x13
CM_BAM = 0x20
CM_ABORT = 0xFF
MAX_SIZE = 1785  # 255 packets x 7 bytes, J1939-21 §5.10
MIN_SIZE = 9  # shorter messages go in one frame

# SAE J1939-21 §5.10.2.4 timers, as used by GB/T 27930-2015 §6.5 [V]:
T1_S = 0.750  # receiver: max gap between two DT packets
T2_S = 1.250  # receiver: after sending CTS, until the first DT
T3_S = 1.250  # sender: after the last DT (or RTS), until CTS / EndOfMsgAck
T4_S = 1.050  # sender: after a CTS(0) "hold", until the next CTS

ABORT_BUSY = 1  # already in one or more connection-managed sessions
ABORT_TIMEOUT = 3
ABORT_BAD_SEQUENCE = 7  # J1939-21 Table 7: bad sequence number


def _pgn_bytes(pgn: int) -> bytes:
    return pgn.to_bytes(3, "little")


def abort_payload(pgn: int, reason: int) -> bytes:
    return bytes([CM_ABORT, reason, 0xFF, 0xFF, 0xFF]) + _pgn_bytes(pgn)


@dataclass
class TpResult:
    """What one call produced: payloads to send and what completed or failed."""

    cm_out: list[bytes] = field(default_factory=list)  # TP.CM payloads to send
    dt_out: list[bytes] = field(default_factory=list)  # TP.DT payloads to send
    completed: tuple[int, bytes] | None = None  # (PGN, message) received whole
    sent: int | None = None  # PGN whose transfer the peer acknowledged
    problem: str | None = None


class TpReceiver:
    """Reassembles one message at a time from a peer."""

    def __init__(self) -> None:
        self._pgn: int | None = None
        self._size = 0
        self._packets = 0
        self._data = bytearray()
        self._next_seq = 1
        self._deadline = 0.0

    @property
    def busy(self) -> bool:
        return self._pgn is not None

    def on_cm(self, data: bytes, t: float) -> TpResult:
        res = TpResult()
        if len(data) < 8:
            res.problem = f"TP.CM frame of {len(data)} bytes"
            return res
        pgn = int.from_bytes(data[5:8], "little")
        if data[0] == CM_RTS:
            size, packets = int.from_bytes(data[1:3], "little"), data[3]
            if not (MIN_SIZE <= size <= MAX_SIZE and packets == -(-size // 7)):
                res.cm_out.append(abort_payload(pgn, ABORT_BAD_SEQUENCE))
                res.problem = f"RTS for PGN 0x{pgn:04X}: size {size} / {packets} packets"
                return res
            if self._pgn is not None:
                res.problem = f"RTS for 0x{pgn:04X} replaced unfinished 0x{self._pgn:04X}"
            self._pgn, self._size, self._packets = pgn, size, packets
            self._data, self._next_seq = bytearray(), 1
            self._deadline = t + T2_S
            res.cm_out.append(bytes([CM_CTS, packets, 1, 0xFF, 0xFF]) + _pgn_bytes(pgn))
        elif data[0] == CM_ABORT and pgn == self._pgn:
            res.problem = f"peer aborted PGN 0x{pgn:04X} (reason {data[1]})"
            self._pgn = None
        elif data[0] == CM_BAM:
            res.problem = "BAM is not used point-to-point by GB/T 27930; ignored"
        return res

    def on_dt(self, data: bytes, t: float) -> TpResult:
        res = TpResult()
        if self._pgn is None or len(data) < 2:
            return res  # stray DT: nothing to attach it to
        pgn = self._pgn
        if data[0] != self._next_seq:
            res.cm_out.append(abort_payload(pgn, ABORT_BAD_SEQUENCE))
            res.problem = (f"DT sequence {data[0]} where {self._next_seq} was due "
                           f"(PGN 0x{pgn:04X}); aborted")
            self._pgn = None
            return res
        self._data += data[1:8]
        self._next_seq += 1
        self._deadline = t + T1_S
        if self._next_seq > self._packets:
            if len(self._data) < self._size:
                res.problem = f"PGN 0x{pgn:04X}: DT frames shorter than announced"
                self._pgn = None
                return res
            res.cm_out.append(bytes([CM_EOM_ACK]) + self._size.to_bytes(2, "little")
                              + bytes([self._packets, 0xFF]) + _pgn_bytes(pgn))
            res.completed = (pgn, bytes(self._data[: self._size]))
            self._pgn = None
        return res

    def on_time(self, t: float) -> TpResult:
        res = TpResult()
        if self._pgn is not None and t > self._deadline:
            res.cm_out.append(abort_payload(self._pgn, ABORT_TIMEOUT))
            res.problem = f"TP receive of PGN 0x{self._pgn:04X} timed out (J1939-21 T1/T2)"
            self._pgn = None
        return res


class TpSender:
    """Sends one message at a time to a peer; a newer message of the same PGN waits."""

    def __init__(self) -> None:
        self._pgn: int | None = None
        self._data = b""
        self._deadline = 0.0
        self._queue: list[tuple[int, bytes]] = []

    @property
    def busy(self) -> bool:
        return self._pgn is not None

    def send(self, pgn: int, data: bytes, t: float) -> TpResult:
        res = TpResult()
        if not MIN_SIZE <= len(data) <= MAX_SIZE:
            res.problem = f"TP cannot carry {len(data)} bytes"
            return res
        if self._pgn is not None:
            # Only the newest pending copy matters for periodic status messages.
            self._queue = [(p, d) for p, d in self._queue if p != pgn] + [(pgn, data)]
            return res
        return self._start(pgn, data, t)

    def _start(self, pgn: int, data: bytes, t: float) -> TpResult:
        self._pgn, self._data, self._deadline = pgn, data, t + T3_S
        packets = -(-len(data) // 7)
        rts = bytes([CM_RTS]) + len(data).to_bytes(2, "little") + bytes([packets, 0xFF])
        return TpResult(cm_out=[rts + _pgn_bytes(pgn)])

    def _finish(self, t: float, res: TpResult) -> TpResult:
        self._pgn = None
        if self._queue:
            nxt = self._start(*self._queue.pop(0), t)
            res.cm_out += nxt.cm_out
        return res

    def on_cm(self, data: bytes, t: float) -> TpResult:
        res = TpResult()
        if len(data) < 8 or self._pgn is None:
            return res
        pgn = int.from_bytes(data[5:8], "little")
        if pgn != self._pgn:
            return res
        if data[0] == CM_CTS:
            count, first = data[1], data[2]
            if count == 0:
                self._deadline = t + T4_S  # hold: the receiver is not ready yet
                return res
            for seq in range(first, min(first + count, 256)):
                chunk = self._data[(seq - 1) * 7: seq * 7]
                if not chunk:
                    break
                res.dt_out.append(bytes([seq]) + chunk.ljust(7, b"\xff"))
            self._deadline = t + T3_S
        elif data[0] == CM_EOM_ACK:
            res.sent = pgn
            return self._finish(t, res)
        elif data[0] == CM_ABORT:
            res.problem = f"peer aborted our PGN 0x{pgn:04X} (reason {data[1]})"
            return self._finish(t, res)
        return res

    def on_time(self, t: float) -> TpResult:
        res = TpResult()
        if self._pgn is not None and t > self._deadline:
            res.cm_out.append(abort_payload(self._pgn, ABORT_TIMEOUT))
            res.problem = f"TP send of PGN 0x{self._pgn:04X} timed out (J1939-21 T3/T4)"
            return self._finish(t, res)
        return res
