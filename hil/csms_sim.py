"""A central system (CSMS) simulator: the `ocpp` package's v21 on the CSMS side, over a real
websocket on loopback, with optional basic auth (security profiles 1/2) and TLS with or
without client certificates (2/3). It records what it received and can send requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v21 import ChargePoint, call_result
from ocpp.v21.enums import Action
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class CsmsSide(ChargePoint):  # type: ignore[misc]
    csms: Csms

    @on(Action.boot_notification)  # type: ignore[untyped-decorator]
    def _boot(self, **kw: Any) -> call_result.BootNotification:
        self.csms.record("BootNotification", kw)
        return call_result.BootNotification(current_time=now_iso(),
                                            interval=self.csms.heartbeat_s, status="Accepted")

    @on(Action.heartbeat)  # type: ignore[untyped-decorator]
    def _heartbeat(self, **kw: Any) -> call_result.Heartbeat:
        self.csms.record("Heartbeat", kw)
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)  # type: ignore[untyped-decorator]
    def _status(self, **kw: Any) -> call_result.StatusNotification:
        self.csms.record("StatusNotification", kw)
        return call_result.StatusNotification()

    @on(Action.transaction_event)  # type: ignore[untyped-decorator]
    def _tx(self, **kw: Any) -> call_result.TransactionEvent:
        self.csms.record("TransactionEvent", kw)
        return call_result.TransactionEvent()

    @on(Action.authorize)  # type: ignore[untyped-decorator]
    def _authorize(self, id_token: dict[str, Any], **kw: Any) -> call_result.Authorize:
        self.csms.record("Authorize", {"id_token": id_token, **kw})
        token = str(id_token.get("id_token"))
        ok = token in self.csms.accepted_tokens
        return call_result.Authorize(
            id_token_info={"status": "Accepted" if ok else "Invalid"},
            allowed_energy_transfer=self.csms.accepted_tokens.get(token) if ok else None)

    @on(Action.notify_ev_charging_needs)  # type: ignore[untyped-decorator]
    def _needs(self, **kw: Any) -> call_result.NotifyEVChargingNeeds:
        self.csms.record("NotifyEVChargingNeeds", kw)
        return call_result.NotifyEVChargingNeeds(status="Accepted")


class Csms:
    def __init__(self, password: str | None = None, tls: ssl.SSLContext | None = None,
                 heartbeat_s: int = 300) -> None:
        self.password = password
        self.tls = tls
        self.heartbeat_s = heartbeat_s
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.stations: dict[str, CsmsSide] = {}
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
        side = CsmsSide(station_id, ws)
        side.csms = self
        self.stations[station_id] = side
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await side.start()

    async def wait_for(self, action: str, count: int = 1, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.of(action)) < count:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(enough(), timeout)
