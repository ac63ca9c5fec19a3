"""Every frame a central system sends gets an answer (issue 21): a raw-websocket central
system, written here from OCPP-J (OCPP 2.1 Part 4) with `websockets` and `json` only (not the
`ocpp` package the station uses), sends malformed frames, unknown and unimplemented actions
and schema-breaking payloads, and checks each CALLERROR's code; a SEND gets no answer; no
traceback reaches stderr (one log line per bad frame)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import websockets

from agent.ledger.outbox import Outbox
from drivers.ocpp.client import OcppClient, OcppSettings

CASES: list[tuple[str, str | bytes, str, str]] = [
    # (what, the frame, the errorCode expected, the MessageId expected in the answer)
    ("not JSON", "this is not json", "RpcFrameworkError", "-1"),
    ("binary frame", b"\x02\x00\xff", "RpcFrameworkError", "-1"),
    ("not an array", '{"a": 1}', "RpcFrameworkError", "-1"),
    ("CALL of 3 members", '[2, "m1", "Reset"]', "RpcFrameworkError", "m1"),
    ("CALL with a list payload", '[2, "m2", "Reset", []]', "RpcFrameworkError", "m2"),
    ("unknown type 9", '[9, "m3", "Reset", {}]', "MessageTypeNotSupported", "m3"),
    ("MessageId of 37", '[2, "' + "x" * 37 + '", "Reset", {"type": "OnIdle"}]',
     "RpcFrameworkError", "-1"),
    ("unknown action", '[2, "m4", "MakeCoffee", {}]', "NotImplemented", "m4"),
    ("GetCompositeSchedule", '[2, "m5", "GetCompositeSchedule", {"duration": 60, "evseId": 1}]',
     "NotSupported", "m5"),
    ("GetBaseReport", '[2, "m6", "GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"}]',
     "NotSupported", "m6"),
    ("ClearCache", '[2, "m7", "ClearCache", {}]', "NotSupported", "m7"),
    ("UnlockConnector", '[2, "m8", "UnlockConnector", {"evseId": 1, "connectorId": 1}]',
     "NotSupported", "m8"),
    ("DataTransfer", '[2, "m9", "DataTransfer", {"vendorId": "x"}]', "NotSupported", "m9"),
    ("AFRRSignal", '[2, "m10", "AFRRSignal", {"timestamp": "2026-12-06T09:00:00Z", '
     '"signal": 1}]', "NotSupported", "m10"),
    ("required field missing", '[2, "m11", "Reset", {}]', "OccurrenceConstraintViolation",
     "m11"),
    ("enum outside", '[2, "m12", "Reset", {"type": "Sometime"}]',
     "PropertyConstraintViolation", "m12"),
    ("wrong type", '[2, "m13", "Reset", {"type": 7}]', "TypeConstraintViolation", "m13"),
]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class RawCsms:
    """A central system of a few lines: answers the station's CALLs it needs for boot and
    keeps every other frame the station sends."""

    def __init__(self) -> None:
        self.ws: Any = None
        self.connected = asyncio.Event()
        self.frames: asyncio.Queue[list[Any]] = asyncio.Queue()

    async def handler(self, ws: Any) -> None:
        self.ws = ws
        self.connected.set()
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 2:  # the station's CALL: answer what boot needs
                answers = {"BootNotification": {"currentTime": _now(), "interval": 300,
                                                "status": "Accepted"},
                           "Heartbeat": {"currentTime": _now()}}
                await ws.send(json.dumps([3, msg[1], answers.get(msg[2], {})]))
            else:
                await self.frames.put(msg)

    async def answer_to(self, frame: str | bytes, timeout: float = 3.0) -> list[Any] | None:
        await self.ws.send(frame)
        try:
            return await asyncio.wait_for(self.frames.get(), timeout)
        except TimeoutError:
            return None


@contextlib.asynccontextmanager
async def station_and_csms() -> AsyncIterator[RawCsms]:
    csms = RawCsms()
    async with websockets.serve(csms.handler, "127.0.0.1", 0,
                                subprotocols=["ocpp2.1"]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        client = OcppClient(OcppSettings(url=f"ws://127.0.0.1:{port}/ocpp", station_id="RAW",
                                         reconnect_s=0.1), Outbox(":memory:"),
                            lambda: datetime.now(UTC).timestamp())
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(csms.connected.wait(), 10.0)
            await asyncio.sleep(0.3)  # boot and the first status are through
            csms.client, csms.task = client, task  # type: ignore[attr-defined]
            yield csms
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_every_bad_frame_gets_its_callerror(capfd: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> list[tuple[str, list[Any] | None]]:
        got = []
        async with station_and_csms() as csms:
            for what, frame, _code, _mid in CASES:
                got.append((what, await csms.answer_to(frame)))
            # 2.1's SEND is never answered, whatever its action.
            got.append(("SEND", await csms.answer_to('[6, "s1", "NotifyPeriodicEventStream", '
                                                      '{}]', timeout=0.5)))
            # The link survived all of it: a good CALL is still answered.
            got.append(("good", await csms.answer_to('[2, "ok", "Reset", {"type": "OnIdle"}]')))
        return got

    with caplog.at_level(logging.INFO):
        got = asyncio.run(run())
    answers = dict(got)
    for what, _frame, code, mid in CASES:
        answer = answers[what]
        assert answer is not None, f"{what}: no answer"
        assert answer[0] == 4 and answer[1] == mid and answer[2] == code, (what, answer)
        assert len(answer) == 5 and isinstance(answer[3], str) and answer[4] == {}, answer
    assert answers["SEND"] is None
    good = answers["good"]
    assert good is not None and good[:2] == [3, "ok"], good
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    lines = [r for r in caplog.records if r.name == "pile_agent.ocpp"
             and "refused a frame" in r.getMessage()]
    assert len(lines) == len(CASES), [r.getMessage() for r in lines]


# ---- what the station sends conforms ------------------------------------------------------

def _as_sent(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as it goes on the wire (the client hands snake_case to the package)."""
    from ocpp.charge_point import snake_to_camel_case
    return snake_to_camel_case(payload)  # type: ignore[no-any-return]


def test_transaction_events_meet_the_schema_and_say_discharge_and_remote_stop() -> None:
    from agent.core.events import ModuleStatus, VehicleConnected
    from agent.core.ratings import GunRatings
    from agent.core.session import GunSession
    from agent.core.states import State
    from agent.runtime.ocpp_bridge import OcppBridge
    from drivers.ocpp import rpc_frames
    from drivers.ocpp.client import StopTransaction

    session = GunSession(GunRatings(max_discharge_current_a=200.0,
                                    max_discharge_power_w=100_000.0))
    session.handle(VehicleConnected(0.0, wall_clock_s=1_796_550_000.0))
    session.handle(ModuleStatus(t=0.1, output_voltage_v=400.0, output_current_a=-100.0,
                                gun_voltage_v=400.0, temperature_c=40.0,
                                contactors_closed=True, contactors_any_closed=True,
                                fault_word=0))
    outbox = Outbox(":memory:")
    client = OcppClient(OcppSettings(url="ws://127.0.0.1:9/ocpp", station_id="T"), outbox,
                        lambda: 1_796_550_000.0)
    bridge = OcppBridge(client, session, lambda: 1_796_550_000.0)
    bridge.events(0.2)  # Started
    client.requests.append(StopTransaction(bridge.transaction_id or ""))
    bridge.events(0.3)  # the central system's stop, handed to the session
    session.state = State.FINISHED  # as the stop sequence would end
    bridge.events(0.4)  # Ended
    sent = [payload for _row, payload in outbox.pending()]
    assert [p["event_type"] for p in sent] == ["Started", "Ended"], sent
    for payload in sent:
        frame = rpc_frames.Frame(rpc_frames.CALL, "x", "TransactionEvent", _as_sent(payload))
        assert rpc_frames.schema_error(frame) is None, (rpc_frames.schema_error(frame), payload)
        for value in payload["meter_value"][0]["sampled_value"]:
            assert value["value"] >= 0 and value["unit_of_measure"]["unit"], value
    started = {v["measurand"]: v for v in sent[0]["meter_value"][0]["sampled_value"]}
    assert started["Power.Active.Export"]["value"] == pytest.approx(40_000.0)
    assert started["Power.Active.Import"]["value"] == 0.0
    assert started["Power.Active.Export"]["context"] == "Transaction.Begin"
    ended = sent[1]
    assert ended["trigger_reason"] == "RemoteStop"
    assert ended["transaction_info"]["stopped_reason"] == "Remote"


def test_boot_names_the_serial_number_and_firmware() -> None:
    client = OcppClient(OcppSettings(url="ws://127.0.0.1:9/ocpp", station_id="SZ-0042-1"),
                        Outbox(":memory:"), lambda: 0.0)
    station = client._station_type()
    assert station.serial_number == "SZ-0042-1"
    assert station.firmware_version and station.firmware_version != "unknown"


def _set(client: OcppClient, component: str, variable: str, value: str) -> str:
    result = client.set_variable({"component": {"name": component},
                                  "variable": {"name": variable}, "attribute_value": value})
    return str(result.attribute_status)


def _get(client: OcppClient, component: str, variable: str) -> tuple[str, str | None]:
    result = client.get_variable({"component": {"name": component},
                                  "variable": {"name": variable}})
    return str(result.attribute_status), result.attribute_value


def test_the_device_model_serves_its_variables_and_each_setting_acts() -> None:
    from agent.core.events import ModuleStatus, VehicleConnected
    from agent.core.ratings import GunRatings
    from agent.core.session import GunSession
    from agent.core.upstream import SetpointRatings
    from agent.runtime.ocpp_bridge import OcppBridge

    outbox = Outbox(":memory:")
    client = OcppClient(OcppSettings(url="ws://127.0.0.1:9/ocpp", station_id="SZ-1",
                                     reconnect_s=2.0,
                                     ratings=SetpointRatings(250.0, 150e3, 200.0, 100e3)),
                        outbox, lambda: 1_796_550_000.0)
    assert _get(client, "V2XChargingCtrlr", "SupportedEnergyTransferModes") == \
        ("Accepted", "DC,DC_BPT")
    assert _get(client, "ChargingStation", "SerialNumber") == ("Accepted", "SZ-1")
    assert _get(client, "SmartChargingCtrlr", "PeriodsPerSchedule")[0] == "Accepted"
    assert _get(client, "OCPPCommCtrlr", "RetryBackOffWaitMinimum") == ("Accepted", "2")
    # Read-only ones refuse a write; nonsense is refused.
    assert _set(client, "ChargingStation", "SerialNumber", "X") == "Rejected"
    assert _set(client, "SampledDataCtrlr", "TxUpdatedMeasurands", "Voltage") == "Rejected"
    assert _set(client, "SampledDataCtrlr", "TxUpdatedInterval", "0") == "Rejected"
    # The back-off: 2 s doubled up to RepeatTimes, plus up to RandomRange.
    assert _set(client, "OCPPCommCtrlr", "RetryBackOffRepeatTimes", "2") == "Accepted"
    assert _set(client, "OCPPCommCtrlr", "RetryBackOffRandomRange", "3") == "Accepted"
    waits = [client.backoff_s(lambda: 0.5) for _ in range(4)]
    assert waits == [3.5, 5.5, 9.5, 9.5], waits
    assert _set(client, "OCPPCommCtrlr", "MessageTimeout", "12") == "Accepted"
    assert client.message_timeout_s == 12.0
    # SampledDataCtrlr: the interval and the measurands of Updated events.
    session = GunSession(GunRatings(max_discharge_current_a=200.0,
                                    max_discharge_power_w=100_000.0))
    session.handle(VehicleConnected(0.0, wall_clock_s=1_796_550_000.0))
    session.handle(ModuleStatus(t=0.1, output_voltage_v=400.0, output_current_a=50.0,
                                gun_voltage_v=400.0, temperature_c=40.0,
                                contactors_closed=True, contactors_any_closed=True,
                                fault_word=0))
    bridge = OcppBridge(client, session, lambda: 1_796_550_000.0, meter_interval_s=60.0)
    assert _get(client, "SampledDataCtrlr", "TxUpdatedInterval") == ("Accepted", "60")
    assert _set(client, "SampledDataCtrlr", "TxUpdatedInterval", "5") == "Accepted"
    assert _set(client, "SampledDataCtrlr", "TxUpdatedMeasurands",
                "Power.Active.Import") == "Accepted"
    bridge.events(0.2)  # Started; the next Updated 5 s on
    bridge.events(4.0)
    bridge.events(5.3)
    sent = [payload for _row, payload in outbox.pending()]
    assert [p["event_type"] for p in sent] == ["Started", "Updated"], sent
    updated = sent[1]["meter_value"][0]["sampled_value"]
    assert [v["measurand"] for v in updated] == ["Power.Active.Import"], updated


def test_a_profile_beyond_the_schedule_limits_is_rejected() -> None:
    from drivers.ocpp.client import PERIODS_PER_SCHEDULE, PROFILE_STACK_LEVEL
    client = OcppClient(OcppSettings(url="ws://127.0.0.1:9/ocpp", station_id="T"),
                        Outbox(":memory:"), lambda: 1_796_550_000.0)
    periods = [{"start_period": i * 60, "limit": 10_000.0}
               for i in range(PERIODS_PER_SCHEDULE + 1)]
    raw = {"id": 1, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
           "charging_profile_kind": "Relative",
           "charging_schedule": [{"id": 1, "charging_rate_unit": "W",
                                  "charging_schedule_period": periods}]}
    assert client.set_profile(1, raw).status == "Rejected"
    raw["charging_schedule"][0]["charging_schedule_period"] = periods[:2]  # type: ignore[index]
    raw["stack_level"] = PROFILE_STACK_LEVEL + 1
    assert client.set_profile(1, raw).status == "Rejected"
    raw["stack_level"] = PROFILE_STACK_LEVEL
    assert client.set_profile(1, raw).status == "Accepted"


def test_a_central_system_s_bad_answer_ends_the_connection_not_the_client() -> None:
    """A CALLRESULT the schema refuses (NotifyEVChargingNeeds answered without its status)
    raises in the `ocpp` package: the station says so, reconnects, and goes on."""
    async def main() -> None:
        async with station_and_csms() as csms:
            client = csms.client  # type: ignore[attr-defined]
            task = csms.task  # type: ignore[attr-defined]
            client.ev_charging_needs({"requested_energy_transfer": "DC",
                                      "dc_charging_parameters": {"ev_max_current": 200.0,
                                                                 "ev_max_voltage": 450.0}})
            deadline = asyncio.get_running_loop().time() + 10.0
            while not any("broke the session" in line for line in client.log):
                assert asyncio.get_running_loop().time() < deadline, list(client.log)
                await asyncio.sleep(0.05)
            assert not task.done()
            while not client.online:
                assert asyncio.get_running_loop().time() < deadline + 10.0
                await asyncio.sleep(0.05)

    asyncio.run(main())
