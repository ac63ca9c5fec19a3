"""OCPP-J framing, checked before the `ocpp` package sees a frame: every frame the central
system sends gets an answer (or, for a SEND, deliberately none), never silence and never a
traceback. Written from OCPP 2.1 Part 4 (OCPP-J) as this project reads it; [V] marks what
to check against the spec's text.

Frames (a JSON array; the MessageId a string of at most 36 characters):
  CALL             [2, id, action, payload]      answered by CALLRESULT or CALLERROR
  CALLRESULT       [3, id, payload]
  CALLERROR        [4, id, errorCode, errorDescription, errorDetails]
  CALLRESULTERROR  [5, id, errorCode, errorDescription, errorDetails]   (2.1: a bad result)
  SEND             [6, id, action, payload]      (2.1: unconfirmed, never answered)

What is answered with which CALLERROR (errorCode as the spec names them):
- not text, not JSON, not an array, no readable MessageTypeId or MessageId, wrong arity
  or member types: RpcFrameworkError (MessageId "-1" when it cannot be read [V]);
- a MessageTypeId this implementation does not know: MessageTypeNotSupported;
- an action OCPP 2.1 does not define: NotImplemented; one it defines that this station does
  not implement: NotSupported;
- a payload that fails the action's JSON schema: OccurrenceConstraintViolation (a required
  field missing), TypeConstraintViolation (a wrong type), PropertyConstraintViolation (an
  enum, range or length outside what is allowed), FormatViolation (anything else).

The `ocpp` 2.1.0 package stays silent on unknown actions for "2.1" and answers schema errors
with ProtocolError or FormatViolation; this module covers that (issue 21).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft6Validator
from jsonschema.exceptions import ValidationError
from ocpp.v21.enums import Action

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND = 2, 3, 4, 5, 6
ARITY = {CALL: 4, CALLRESULT: 3, CALLERROR: 5, CALLRESULTERROR: 5, SEND: 4}
MAX_MESSAGE_ID = 36
UNKNOWN_ID = "-1"
ACTIONS_2_1 = frozenset(a.value for a in Action)

_PROPERTY = {"enum", "const", "maxLength", "minLength", "maximum", "minimum",
             "exclusiveMaximum", "exclusiveMinimum", "maxItems", "minItems", "pattern",
             "multipleOf"}


@dataclass(frozen=True, slots=True)
class Frame:
    type_id: int
    message_id: str
    action: str  # CALL and SEND; "" otherwise
    payload: Any


@dataclass(frozen=True, slots=True)
class FrameError:
    message_id: str
    code: str
    description: str

    def call_error(self) -> str:
        """The CALLERROR frame that answers it."""
        return json.dumps([CALLERROR, self.message_id, self.code, self.description[:255], {}])


def parse(raw: str | bytes) -> Frame | FrameError:
    """One websocket frame as OCPP-J reads it, or the error it is answered with."""
    if isinstance(raw, bytes):
        return FrameError(UNKNOWN_ID, "RpcFrameworkError", "a binary frame: OCPP-J is text")
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        return FrameError(UNKNOWN_ID, "RpcFrameworkError", f"not JSON: {exc}")
    if not isinstance(msg, list) or len(msg) < 2:
        return FrameError(UNKNOWN_ID, "RpcFrameworkError", "not an OCPP-J array")
    type_id, message_id = msg[0], msg[1]
    if not isinstance(message_id, str) or not message_id \
            or len(message_id) > MAX_MESSAGE_ID:
        return FrameError(UNKNOWN_ID, "RpcFrameworkError",
                          f"MessageId must be a string of 1-{MAX_MESSAGE_ID} characters")
    if isinstance(type_id, bool) or not isinstance(type_id, int):
        return FrameError(message_id, "RpcFrameworkError", "MessageTypeId is not a number")
    if type_id not in ARITY:
        return FrameError(message_id, "MessageTypeNotSupported",
                          f"MessageTypeId {type_id} is not supported")
    if len(msg) != ARITY[type_id]:
        return FrameError(message_id, "RpcFrameworkError",
                          f"MessageTypeId {type_id} takes {ARITY[type_id]} members, "
                          f"got {len(msg)}")
    if type_id in (CALL, SEND):
        action, payload = msg[2], msg[3]
        if not isinstance(action, str) or not isinstance(payload, dict):
            return FrameError(message_id, "RpcFrameworkError",
                              "a CALL carries an action name and a payload object")
        return Frame(type_id, message_id, action, payload)
    if type_id == CALLRESULT:
        if not isinstance(msg[2], dict):
            return FrameError(message_id, "RpcFrameworkError", "a CALLRESULT's payload object")
        return Frame(type_id, message_id, "", msg[2])
    return Frame(type_id, message_id, "", msg[2:])


def action_error(frame: Frame, implemented: set[str] | frozenset[str]) -> FrameError | None:
    """NotImplemented / NotSupported for a CALL's action, or a schema error, or None."""
    if frame.action not in ACTIONS_2_1:
        return FrameError(frame.message_id, "NotImplemented",
                          f"{frame.action} is not an OCPP 2.1 action")
    if frame.action not in implemented:
        return FrameError(frame.message_id, "NotSupported",
                          f"{frame.action} is not supported by this station")
    return schema_error(frame)


def schema_error(frame: Frame) -> FrameError | None:
    """The first way the payload breaks its action's JSON schema (OCPP 2.1's own schema
    files, as the `ocpp` package ships them), as the error code OCPP-J names for it."""
    validator = _validator(f"{frame.action}Request")
    if validator is None:
        return None
    error = min(validator.iter_errors(frame.payload), key=_depth, default=None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    return FrameError(frame.message_id, _code(error), f"{where}: {error.message}")


def _depth(error: ValidationError) -> int:
    return len(error.absolute_path)


def _code(error: ValidationError) -> str:
    if error.validator == "required":
        return "OccurrenceConstraintViolation"
    if error.validator == "type":
        return "TypeConstraintViolation"
    if error.validator in _PROPERTY:
        return "PropertyConstraintViolation"
    return "FormatViolation"


@cache
def _validator(name: str) -> Draft6Validator | None:
    try:
        text = resources.files("ocpp.v21").joinpath("schemas", f"{name}.json").read_text(
            encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    return Draft6Validator(json.loads(text))  # the schemas' own draft
