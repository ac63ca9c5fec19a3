"""The diagnostics archive (issue 22): `pile-agent diagnostics` over a window of a real
service run (events, the session's CAN traces, the ledger's rows, the config with its
password redacted, versions), and OCPP GetLog building the same archive and uploading it
to an HTTP server on loopback, each step in a LogStatusNotification; refused for FTP,
UploadFailure for a server that says no (a raw-websocket central system written from
OCPP-J, tests/test_ocpp_frames.py)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import websockets

from agent.cli import main
from agent.core.states import State
from hil.ev_bms import VehicleConfig
from tests.served_service import served, until
from tests.test_ocpp_frames import RawCsms, _now

SHORT = VehicleConfig(start_soc_pct=79.5, target_soc_pct=80.0)
PASSWORD = "diagnostics-secret-1"


class Uploads(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []
    refuse = False

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.refuse:
            self.send_response(500)
        else:
            self.received.append((self.path, body))
            self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upload_server() -> Iterator[tuple[str, type[Uploads]]]:
    handler = type("Handler", (Uploads,), {"received": [], "refuse": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/logs/", handler
    finally:
        server.shutdown()


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


class RecordingCsms(RawCsms):
    """The raw central system, also keeping the station's CALLs (each answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[Any]] = []

    async def handler(self, ws: Any) -> None:
        self.ws = ws
        self.connected.set()
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] != 2:
                await self.frames.put(msg)
                continue
            answers = {"BootNotification": {"currentTime": _now(), "interval": 300,
                                            "status": "Accepted"},
                       "Heartbeat": {"currentTime": _now()},
                       "NotifyEVChargingNeeds": {"status": "Accepted"}}
            await ws.send(json.dumps([3, msg[1], answers.get(msg[2], {})]))
            if msg[2] not in ("BootNotification", "Heartbeat"):
                self.calls.append(msg)


async def _csms_frame(csms: RecordingCsms, action: str, timeout: float = 20.0) -> list[Any]:
    """The next CALL of `action` the station sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in list(csms.calls):
            if frame[2] == action:
                csms.calls.remove(frame)
                return frame
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {action}")


def test_diagnostics_and_get_log(tmp_path: Path, upload_server: tuple[str, type[Uploads]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    base_url, uploads = upload_server
    csms = RecordingCsms()

    traces = tmp_path / "traces"
    toml_doc: dict[str, Any] = {}

    async def scenario() -> None:
        async with websockets.serve(csms.handler, "127.0.0.1", 0,
                                    subprotocols=["ocpp2.1"]) as server:  # type: ignore[list-item]
            port = server.sockets[0].getsockname()[1]
            extra = {"status": {"enabled": False},
                     "traces": {"enabled": True, "directory": str(traces)},
                     "ocpp": {"enabled": True, "url": f"ws://127.0.0.1:{port}/ocpp",
                              "station_id": "DIAG", "password": PASSWORD}}
            async with served(tmp_path, [SHORT], extra, doc=toml_doc) as (service, _pile):
                await asyncio.wait_for(csms.connected.wait(), 20.0)
                await until(lambda: service.gun(1).session.state is State.FINISHED, 60.0,
                            "the session's end")
                await asyncio.sleep(0.5)
                # GetLog to the loopback upload server: Accepted, Uploading, Uploaded.
                await csms.ws.send(json.dumps([2, "g1", "GetLog", {
                    "logType": "DiagnosticsLog", "requestId": 41,
                    "log": {"remoteLocation": base_url}}]))
                answer = await asyncio.wait_for(csms.frames.get(), 10.0)
                assert answer[2]["status"] == "Accepted", answer
                name = answer[2]["filename"]
                for status in ("Uploading", "Uploaded"):
                    frame = await _csms_frame(csms, "LogStatusNotification")
                    assert frame[3] == {"status": status, "requestId": 41}, frame
                assert [path for path, _b in uploads.received] == [f"/logs/{name}"]
                # An FTP location: Rejected; a server that says no: UploadFailure.
                await csms.ws.send(json.dumps([2, "g2", "GetLog", {
                    "logType": "SecurityLog", "requestId": 42,
                    "log": {"remoteLocation": "ftp://127.0.0.1/logs/"}}]))
                answer = await asyncio.wait_for(csms.frames.get(), 10.0)
                assert answer[2]["status"] == "Rejected", answer
                uploads.refuse = True
                await csms.ws.send(json.dumps([2, "g3", "GetLog", {
                    "logType": "SecurityLog", "requestId": 43, "retries": 0,
                    "log": {"remoteLocation": base_url}}]))
                answer = await asyncio.wait_for(csms.frames.get(), 10.0)
                assert answer[2]["status"] == "Accepted", answer
                assert (await _csms_frame(csms, "LogStatusNotification"))[3]["status"] \
                    == "Uploading"
                failed = await _csms_frame(csms, "LogStatusNotification")
                assert failed[3]["status"] == "UploadFailure" and "500" in json.dumps(failed)

    asyncio.run(scenario())
    archive = _members(uploads.received[0][1])
    assert {"MANIFEST.txt", "versions.json", "config.json", "ledger.json",
            "events.jsonl"} <= archive.keys()
    assert any(name.startswith("traces/") and name.endswith(".log") for name in archive)
    ledger = json.loads(archive["ledger.json"])
    assert len(ledger["sessions"]) == 1 and ledger["intervals"]
    assert PASSWORD not in archive["config.json"].decode()
    assert json.loads(archive["config.json"])["ocpp"]["password"] == "<redacted>"
    events = [json.loads(line) for line in archive["events.jsonl"].decode().splitlines()]
    assert any(e["event"] == "session" for e in events)
    assert "pile-agent" in json.loads(archive["versions.json"])

    # The same from the command line, over a window that holds the session.
    config_file = tmp_path / "pile.toml"
    config_file.write_text(_toml(toml_doc))
    out = tmp_path / "diag.tar.gz"
    assert main(["diagnostics", "--config", str(config_file), "--since",
                 time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600)),
                 "--out", str(out), "--unit", ""]) == 0
    cli = _members(out.read_bytes())
    assert json.loads(cli["ledger.json"])["sessions"] == ledger["sessions"]
    assert "journal: not asked for" in cli["MANIFEST.txt"].decode()
    # A window before anything happened holds no session.
    assert main(["diagnostics", "--config", str(config_file), "--since", "2020-01-01T00:00",
                 "--until", "2020-01-02T00:00", "--out", str(out), "--unit", ""]) == 0
    assert json.loads(_members(out.read_bytes())["ledger.json"])["sessions"] == []
    assert main(["diagnostics", "--config", str(config_file), "--since", "yesterday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def _toml(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    return str(value)
