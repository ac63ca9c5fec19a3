"""GB/T 27930 over python-can: frames ⇄ message dataclasses, with J1939 TP.

Thin: it sends what it is given and reports what it receives; session decisions are
the core's. `poll` drains the bus without blocking; the runtime calls it when a frame
has arrived (rx_notify.py) and at the session's deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import can

from agent.core.events import DriverError, Event, VehicleDataNotice, VehicleMessage
from agent.core.messages import BmsMessage, ChargerMessage, GbtMessage
from drivers.gbt27930.codec import (
    DecodeError,
    EncodeError,
    UnknownPgn,
    decode_noting,
    encode,
    name_of,
    priority_of,
)
from drivers.gbt27930.tp import PGN_TP_CM, PGN_TP_DT, TpReceiver, TpResult, TpSender

CHARGER_ADDRESS = 0x56  # GB/T 27930-2015 §6.2
BMS_ADDRESS = 0xF4
TP_PRIORITY = 7  # J1939-21: TP.CM / TP.DT at priority 7


class Role(Enum):
    CHARGER = "charger"
    BMS = "bms"


@dataclass(frozen=True, slots=True)
class LinkProblem:
    detail: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class LinkNotice:
    """What the peer sent that was not a clean message, for the core to count and show:
    kind "rejected" (a field the charger acts on is out of range: the message is dropped),
    "unknown_pgn" (not a GB/T 27930-2015 message), or "oddity" (an informational field
    that did not decode, or reserved bits that are not 1: the message is still used)."""

    kind: str
    message: str
    field: str
    raw: bytes
    detail: str


Received = GbtMessage | LinkProblem | LinkNotice


def can_id(priority: int, pgn: int, destination: int, source: int) -> int:
    """29-bit PDU1 identifier: P | R=0 | DP=0 | PF | PS=destination | SA."""
    return (priority & 0x7) << 26 | ((pgn >> 8) & 0xFF) << 16 | destination << 8 | source


class FrameLog(Protocol):
    """Where the link writes each frame it sends and receives (a candump file, a
    session's traces)."""

    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None: ...


class FrameBus(Protocol):
    """What the link needs of a bus: a python-can bus, or one read for it as frames arrive
    (drivers/gbt27930/rx_notify.py)."""

    def send(self, msg: can.Message, timeout: float | None = None) -> None: ...

    def recv(self, timeout: float | None = None) -> can.Message | None: ...


class GbtLink:
    def __init__(self, bus: FrameBus, role: Role, log: FrameLog | None = None) -> None:
        self.bus = bus
        self.role = role
        self.log = log
        self.own = CHARGER_ADDRESS if role is Role.CHARGER else BMS_ADDRESS
        self.peer = BMS_ADDRESS if role is Role.CHARGER else CHARGER_ADDRESS
        self._rx = TpReceiver()
        self._tx = TpSender()
        self._t = 0.0
        self._problems: list[LinkProblem] = []
        self.frames_sent = 0  # the simulator wakes the peer when this moves
        self.frames_received = 0  # from the peer (metrics)
        self.frames_rejected = 0  # of which undecodable or out of range (metrics)

    # ---- sending -------------------------------------------------------------------

    def send(self, message: GbtMessage, t: float) -> None:
        """Send now, or start a TP transfer for a message over 8 bytes."""
        pgn, payload = encode(message)
        self.send_payload(pgn, payload, t, priority_of(message))

    def send_payload(self, pgn: int, payload: bytes, t: float, priority: int) -> None:
        """Send a message's bytes as they are (the replaying BMS sends what a car sent)."""
        self._t = t
        if len(payload) > 8:
            self._apply(self._tx.send(pgn, payload, t))
        else:
            self._frame(can_id(priority, pgn, self.peer, self.own), payload)

    def _frame(self, arbitration_id: int, data: bytes) -> None:
        msg = can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=True)
        try:
            self.bus.send(msg)
        except can.CanError as exc:
            self._problems.append(LinkProblem(f"CAN send failed: {exc}", fatal=True))
            return
        self.frames_sent += 1
        if self.log is not None:
            self.log.write(self._t, arbitration_id, data)

    def _apply(self, res: TpResult) -> None:
        for cm in res.cm_out:
            self._frame(can_id(TP_PRIORITY, PGN_TP_CM, self.peer, self.own), cm)
        for dt in res.dt_out:
            self._frame(can_id(TP_PRIORITY, PGN_TP_DT, self.peer, self.own), dt)
        if res.problem:
            self._problems.append(LinkProblem(res.problem))

    # ---- receiving -----------------------------------------------------------------

    def poll(self, t: float) -> list[Received]:
        """Everything that arrived since the last poll, decoded; never raises."""
        self._t = t
        out: list[Received] = []
        while True:
            try:
                frame = self.bus.recv(timeout=0)
            except (can.CanError, OSError, ValueError) as exc:
                self._problems.append(LinkProblem(f"CAN receive failed: {exc}", fatal=True))
                break
            if frame is None:
                break
            received = self._on_frame(frame, t)
            for item in received:
                if isinstance(item, LinkNotice) and item.kind in ("rejected", "unknown_pgn"):
                    self.frames_rejected += 1
            out.extend(received)
        self._apply(self._rx.on_time(t))
        self._apply(self._tx.on_time(t))
        out.extend(self._problems)
        self._problems = []
        return out

    def poll_events(self, t: float) -> list[Event]:
        """`poll`, as the core's events (the charger side's entry point)."""
        return events_from(t, self.poll(t))

    def _on_frame(self, frame: can.Message, t: float) -> list[Received]:
        ident = frame.arbitration_id
        if not frame.is_extended_id or frame.is_remote_frame or frame.is_error_frame:
            return []
        source, destination, pf = ident & 0xFF, (ident >> 8) & 0xFF, (ident >> 16) & 0xFF
        if source != self.peer or destination != self.own:
            return []
        self.frames_received += 1
        data = bytes(frame.data)
        if self.log is not None:
            self.log.write(t, ident, data)
        pgn = pf << 8
        if pgn == PGN_TP_CM:
            return self._tp_cm(data, t)
        if pgn == PGN_TP_DT:
            return self._tp_result(self._rx.on_dt(data, t))
        return decode_received(pgn, data)

    def _tp_cm(self, data: bytes, t: float) -> list[Received]:
        if data[:1] in (b"\x11", b"\x13") or (data[:1] == b"\xff" and self._tx.busy):
            self._apply(self._tx.on_cm(data, t))  # answers to our own transfer
            return []
        return self._tp_result(self._rx.on_cm(data, t))

    def _tp_result(self, res: TpResult) -> list[Received]:
        self._apply(res)
        if res.completed is None:
            return []
        return decode_received(*res.completed)


def events_from(t: float, items: list[Received]) -> list[Event]:
    """What the link received -> core events: messages, notices, problems. A message of the
    charger's own kind from the vehicle is a driver problem, not a message."""
    events: list[Event] = []
    for item in items:
        if isinstance(item, BmsMessage):
            events.append(VehicleMessage(t, item))
        elif isinstance(item, LinkNotice):
            events.append(VehicleDataNotice(t, item.kind, item.message, item.field,
                                            item.raw.hex().upper(), item.detail))
        elif isinstance(item, ChargerMessage):
            events.append(DriverError(t, "can", f"charger message from the vehicle: {item}"))
        else:
            events.append(DriverError(t, "can", item.detail, fatal=item.fatal))
    return events


def decode_received(pgn: int, data: bytes) -> list[Received]:
    """A whole message's bytes -> the message and its notices, or a notice alone."""
    try:
        message, notes = decode_noting(pgn, data)
    except UnknownPgn as exc:
        return [LinkNotice("unknown_pgn", name_of(pgn), "", data, str(exc))]
    except DecodeError as exc:
        return [LinkNotice("rejected", name_of(pgn), "", data, str(exc))]
    return [message, *(LinkNotice("oddity", n.message, n.field, n.raw, n.detail)
                       for n in notes)]


__all__ = ["EncodeError", "GbtLink", "LinkNotice", "LinkProblem", "Received", "Role", "can_id",
           "decode_received", "events_from"]
