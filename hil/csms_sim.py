"""A central system (CSMS) simulator written from OCPP-J (OCPP 2.1 Part 4) with
`websockets` and `json` only: not the `ocpp` package the station's client is built on, so
a fault in that package's framing, case conversion or validation is not shared by both
ends of the tests (issue 25). Real websocket on loopback, with optional basic auth
(security profiles 1/2) and TLS with or without client certificates (2/3). It records
what it received (payloads with snake_case keys) and can send requests.

Requests to the station are given as the `ocpp` package's request dataclasses (plain data
holders) or as (action, payload); their keys are converted to camelCase here, and each
answer comes back as an object with snake_case attributes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
import ssl
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from drivers.task_end import within

CALL, CALLRESULT, CALLERROR = 2, 3, 4
# OCPP 2.1's acronyms in field names, as its schemas spell them (evMaxV2XEnergyRequest,
# maxSoC, ocppCsmsUrl is the one exception left as written).
_ACRONYMS = {"v2x": "V2X", "v2g": "V2G", "soc": "SoC", "url": "URL"}
_TOKEN = re.compile(r"V2X|V2G|SoC|URL|CSMS|[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(_ACRONYMS.get(t, t[:1].upper() + t[1:]) for t in rest)


def snake(key: str) -> str:
    return "_".join(t.lower() for t in _TOKEN.findall(key))


def keys(data: Any, convert: Any) -> Any:
    if isinstance(data, dict):
        return {convert(k): keys(v, convert) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [keys(v, convert) for v in data]
    return data


def _namespace(data: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**keys(data, snake))


class StationSide:
    """One connected station: its CALLs answered, and requests sent to it."""

    def __init__(self, csms: Csms, station_id: str, ws: ServerConnection) -> None:
        self.csms, self.id, self.ws = csms, station_id, ws
        self._waiting: dict[str, asyncio.Future[list[Any]]] = {}

    async def call(self, request: Any, payload: dict[str, Any] | None = None,
                   timeout: float = 10.0) -> SimpleNamespace:
        """A request (an `ocpp` request dataclass, or an action name with its snake_case
        payload); its CALLRESULT's payload as attributes, or RuntimeError on a CALLERROR."""
        if isinstance(request, str):
            action, body = request, payload or {}
        else:
            action, body = type(request).__name__, dataclasses.asdict(request)
        message_id = str(uuid.uuid4())
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = answer
        await self.ws.send(json.dumps([CALL, message_id, action, keys(body, camel)]))
        try:
            frame = await within(answer, timeout)
        finally:
            self._waiting.pop(message_id, None)
        if frame[0] == CALLERROR:
            raise RuntimeError(f"{action}: CALLERROR {frame[2]}: {frame[3]}")
        return _namespace(frame[2])

    async def serve(self) -> None:
        async for raw in self.ws:
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(frame, list) or len(frame) < 3:
                continue
            if frame[0] in (CALLRESULT, CALLERROR):
                waiting = self._waiting.get(frame[1])
                if waiting is not None and not waiting.done():
                    waiting.set_result(frame)
                continue
            if frame[0] == CALL and len(frame) == 4:
                answer = self.csms.answer(frame[2], keys(frame[3], snake))
                reply = [CALLRESULT, frame[1], answer] if answer is not None else \
                    [CALLERROR, frame[1], "NotImplemented", f"{frame[2]} unknown here", {}]
                await self.ws.send(json.dumps(reply))


class Csms:
    def __init__(self, password: str | None = None, tls: ssl.SSLContext | None = None,
                 heartbeat_s: int = 300) -> None:
        self.password = password
        self.tls = tls
        self.heartbeat_s = heartbeat_s
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.stations: dict[str, StationSide] = {}
        self.refused: list[str] = []
        # idToken -> the energy transfers it may use (Authorize's allowedEnergyTransfer).
        self.accepted_tokens: dict[str, list[str]] = {}
        self.booted = asyncio.Event()
        self._server: Server | None = None

    def record(self, action: str, payload: dict[str, Any]) -> None:
        self.received.append((action, payload))
        if action == "BootNotification":
            self.booted.set()

    def of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.received if a == action]

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The CALLRESULT payload (camelCase, as sent) for a station's CALL; None: not
        implemented here."""
        answers: dict[str, Any] = {
            "BootNotification": lambda: {"currentTime": now_iso(),
                                         "interval": self.heartbeat_s, "status": "Accepted"},
            "Heartbeat": lambda: {"currentTime": now_iso()},
            "StatusNotification": dict,
            "TransactionEvent": dict,
            "MeterValues": dict,
            "NotifyEVChargingNeeds": lambda: {"status": "Accepted"},
            "LogStatusNotification": dict,
            "Authorize": lambda: self._authorize(payload),
        }
        make = answers.get(action)
        if make is None:
            return None
        self.record(action, payload)
        result: dict[str, Any] = make()
        return result

    def _authorize(self, payload: dict[str, Any]) -> dict[str, Any]:
        token = str(payload.get("id_token", {}).get("id_token"))
        ok = token in self.accepted_tokens
        out: dict[str, Any] = {"idTokenInfo": {"status": "Accepted" if ok else "Invalid"}}
        if ok and self.accepted_tokens[token]:
            out["allowedEnergyTransfer"] = self.accepted_tokens[token]
        return out

    async def start(self, port: int = 0) -> int:
        self._server = await serve(self._handler, "127.0.0.1", port, subprotocols=["ocpp2.1"],  # type: ignore[list-item]
                                   process_request=self._check, ssl=self.tls)
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.password is None:
            return None
        station = request.path.rstrip("/").split("/")[-1]
        expected = "Basic " + base64.b64encode(f"{station}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            self.refused.append(station)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        station_id = ws.request.path.rstrip("/").split("/")[-1]
        side = StationSide(self, station_id, ws)
        self.stations[station_id] = side
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await side.serve()

    async def wait_for(self, action: str, count: int = 1, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.of(action)) < count:
                await asyncio.sleep(0.02)
        await within(enough(), timeout)
