"""Faults of the car's CAN side, as a scenario step sets them (`set = { "pile.car_can" =
"wrong-dlc:BCL" }`): what a broken BMS, a bad harness or a controller gone bus-off puts on
the wire. The charger must treat each as it treats a message that never came.

    bus-off          the car's controller leaves the bus: nothing out, nothing in
    wrong-dlc:NAME   NAME goes out two bytes short (its DLC wrong)
    garbage:NAME     NAME goes out as all 0xFF (every field invalid, GB/T 27930 §7.9)
    tp-abort:NAME    NAME, a multi-packet message, is aborted (TP.Conn_Abort) at its start
"""

from __future__ import annotations

from agent.core.messages import GbtMessage
from drivers.gbt27930.codec import encode, priority_of
from drivers.gbt27930.link import GbtLink
from drivers.gbt27930.tp import PGN_TP_CM

KINDS = ("bus-off", "wrong-dlc", "garbage", "tp-abort")
ABORT_TIMEOUT = 3  # J1939-21 Conn_Abort reason 3: a timeout


def problem(spec: str) -> str | None:
    """Why `spec` is no car CAN fault (None: it is one)."""
    kind, _sep, target = spec.partition(":")
    if spec in ("", "bus-off"):
        return None
    if kind not in KINDS or not target:
        return f"car_can {spec!r}: one of bus-off, wrong-dlc:NAME, garbage:NAME, tp-abort:NAME"
    return None


def send(link: GbtLink, message: GbtMessage, t: float, spec: str) -> None:
    """Send `message` as a car with this fault would (spec "" : as it is)."""
    kind, _sep, target = spec.partition(":")
    if target != type(message).__name__:
        link.send(message, t)
        return
    pgn, payload = encode(message)
    if kind == "wrong-dlc":
        link.send_payload(pgn, payload[:max(len(payload) - 2, 1)], t, priority_of(message))
    elif kind == "garbage":
        link.send_payload(pgn, b"\xff" * len(payload), t, priority_of(message))
    elif kind == "tp-abort":
        abort = bytes([0xFF, ABORT_TIMEOUT, 0xFF, 0xFF, 0xFF]) + pgn.to_bytes(3, "little")
        link.send_payload(PGN_TP_CM, abort, t, 7)
    else:
        link.send(message, t)
