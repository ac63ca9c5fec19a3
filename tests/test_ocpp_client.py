"""The OCPP 2.1 client against a central system written in the tests (tests/ocpp_csms.py),
over a real websocket on loopback: boot, status, heartbeat, smart charging with the V2X
operation modes and the spec's rejections, device-model variables, remote stop, reset,
trigger, allowed energy transfer, and transaction events through the durable outbox."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from ocpp.v21 import call

from agent.ledger.outbox import Outbox
from drivers.ocpp.client import (
    ChangeAvailability,
    EvseSettings,
    OcppClient,
    OcppSettings,
    Reset,
    SampledValue,
    StopTransaction,
)
from drivers.ocpp.profiles import (
    MODES,
    MODES_BY_PURPOSE,
    Rejection,
    parse_profile,
)
from hil.csms_sim import Csms


def profile(pid: int, purpose: str, periods: list[dict[str, Any]], *, unit: str = "W",
            stack: int = 0, kind: str = "Absolute", tx: str | None = None,
            start: str | None = "2020-01-01T00:00:00Z", duration: int | None = None,
            **extra: Any) -> dict[str, Any]:
    sched: dict[str, Any] = {"id": pid, "charging_rate_unit": unit,
                             "charging_schedule_period": periods}
    if start is not None:
        sched["start_schedule"] = start
    if duration is not None:
        sched["duration"] = duration
    out = {"id": pid, "stack_level": stack, "charging_profile_purpose": purpose,
           "charging_profile_kind": kind, "charging_schedule": [sched], **extra}
    if tx is not None:
        out["transaction_id"] = tx
    return out


def period(mode: str, **fields: Any) -> dict[str, Any]:
    return {"start_period": 0, "operation_mode": mode, **fields}


# ---- the profile rules, without a socket ------------------------------------------------

REJECTED = [
    (period("CentralSetpoint", setpoint=-40_000.0, discharge_limit=-30_000.0),
     "outside [dischargeLimit, limit]"),
    (period("CentralSetpoint", setpoint=50_000.0, limit=40_000.0), "outside"),
    (period("CentralSetpoint"), "needs a setpoint"),
    (period("CentralFrequency", limit=1.0), "needs a setpoint"),
    (period("Idle", limit=0.0), "Idle takes no"),
    (period("Idle", setpoint=0.0), "Idle takes no"),
    (period("ChargingOnly"), "needs a limit"),
    (period("ChargingOnly", limit=10.0, setpoint=5.0), "needs a limit and no setpoint"),
    (period("ChargingOnly", limit=10.0, discharge_limit=-5.0), "no setpoint or dischargeLimit"),
    (period("LocalFrequency"), "v2xFreqWattCurve"),
    (period("Turbo", limit=1.0), "unknown operationMode"),
    (period("ExternalLimits", limit=-1.0), "limit below 0"),
    (period("ExternalLimits", discharge_limit=5.0), "dischargeLimit above 0"),
    (period("CentralSetpoint", setpoint=float("nan")), "not a finite number"),
    (period("CentralSetpoint", setpoint=float("inf")), "not a finite number"),
]


@pytest.mark.parametrize(("p", "why"), REJECTED)
def test_the_spec_rejects_what_each_mode_forbids(p: dict[str, Any], why: str) -> None:
    got = parse_profile(profile(1, "TxDefaultProfile", [p]), 0.0, None)
    assert isinstance(got, Rejection) and why in got.info, got


@pytest.mark.parametrize("purpose", list(MODES_BY_PURPOSE))
@pytest.mark.parametrize("mode", MODES)
def test_a_purpose_takes_only_its_modes(purpose: str, mode: str) -> None:
    fields: dict[str, Any] = {
        "Idle": {}, "ChargingOnly": {"limit": 10.0},
        "CentralSetpoint": {"setpoint": 5.0}, "CentralFrequency": {"setpoint": 5.0},
        "LocalFrequency": {"v2x_freq_watt_curve": [{"frequency": 49.8, "power": -1000.0},
                                                   {"frequency": 50.2, "power": 1000.0}]},
    }.get(mode, {"limit": 10.0})
    got = parse_profile(profile(1, purpose, [period(mode, **fields)],
                                tx="tx1" if purpose == "TxProfile" else None), 0.0, "tx1")
    if mode in MODES_BY_PURPOSE[purpose]:
        assert not isinstance(got, Rejection), got
    else:
        assert isinstance(got, Rejection) and "not allowed for" in got.info


def test_a_tx_profile_needs_its_transaction() -> None:
    p = profile(1, "TxProfile", [period("ChargingOnly", limit=10.0)], tx="tx-other")
    assert isinstance(parse_profile(p, 0.0, "tx1"), Rejection)
    assert isinstance(parse_profile(p, 0.0, None), Rejection)
    assert not isinstance(parse_profile(p, 0.0, "tx-other"), Rejection)


# ---- over a websocket ---------------------------------------------------------------------

@contextlib.asynccontextmanager
async def station(tmp_path: Path, csms: Csms, port: int,
                  **settings: Any) -> AsyncIterator[OcppClient]:
    outbox = Outbox(tmp_path / "ledger.sqlite")
    scheme = "wss" if csms.tls else "ws"
    client = OcppClient(OcppSettings(url=f"{scheme}://127.0.0.1:{port}/ocpp",
                                     station_id="CP-1", reconnect_s=0.2,
                                     rated_power_w=120_000.0, **settings), outbox, time.time)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outbox.close()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


def test_boot_status_smart_charging_and_the_device_model(tmp_path: Path) -> None:
    async def run() -> None:
        csms = Csms()
        port = await csms.start()
        try:
            async with station(tmp_path, csms, port) as client:
                await csms.wait_for("StatusNotification")
                boot = csms.of("BootNotification")[0]
                assert boot["charging_station"]["vendor_name"] == "pile-agent"
                side = csms.stations["CP-1"]
                client.transaction_event("Started", "CablePluggedIn", "tx-1")
                await csms.wait_for("TransactionEvent")

                # CentralSetpoint: discharge 20 kW within a 30 kW discharge limit.
                r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                    7, "TxProfile", [period("CentralSetpoint", setpoint=-20_000.0,
                                            discharge_limit=-30_000.0, limit=50_000.0)],
                    tx="tx-1")))
                assert r.status == "Accepted", r
                [offer] = [o for o in client.offers() if o.source == "ocpp:tx"]
                assert (offer.setpoint, offer.charge_limit, offer.discharge_limit, offer.unit) \
                    == (-20_000.0, 50_000.0, 30_000.0, "W")
                # A second TxProfile for the EVSE within the second: RateLimitExceeded
                # (OCPP 2.1); the rate is per EVSE and purpose, so the station's maximum
                # profile right after it is taken (at the rating: it limits nothing here).
                r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                    10, "TxProfile", [period("ChargingOnly", limit=90_000.0)], tx="tx-1")))
                assert r.status == "Rejected" and r.status_info["reason_code"] == \
                    "RateLimitExceeded"
                r = await side.call(call.SetChargingProfile(evse_id=0, charging_profile=profile(
                    11, "ChargingStationMaxProfile", [period("ChargingOnly", limit=1e6)])))
                assert r.status == "Accepted", r
                await asyncio.sleep(1.05)
                r = await side.call(call.SetChargingProfile(evse_id=0, charging_profile=profile(
                    8, "ChargingStationMaxProfile", [period("CentralSetpoint", setpoint=1.0)])))
                assert r.status == "Rejected" and "not allowed for" in \
                    r.status_info["additional_info"]
                await asyncio.sleep(1.05)
                r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                    9, "TxDefaultProfile", [period("CentralSetpoint", setpoint=-50_000.0,
                                                   discharge_limit=-30_000.0)])))
                assert r.status == "Rejected" and r.status_info["reason_code"] == "InvalidValue"

                # Variables: known, unknown, read-only, out of range.
                r = await side.call(call.GetVariables(get_variable_data=[
                    {"component": {"name": "V2XChargingCtrlr"},
                     "variable": {"name": "SupportedOperationModes"}},
                    {"component": {"name": "V2XChargingCtrlr"}, "variable": {"name": "Nope"}},
                    {"component": {"name": "Nope"}, "variable": {"name": "Nope"}}]))
                statuses = [x["attribute_status"] for x in r.get_variable_result]
                assert statuses == ["Accepted", "UnknownVariable", "UnknownComponent"]
                assert "LocalFrequency" in r.get_variable_result[0]["attribute_value"]
                r = await side.call(call.SetVariables(set_variable_data=[
                    {"component": {"name": "OCPPCommCtrlr"},
                     "variable": {"name": "HeartbeatInterval"}, "attribute_value": "60"},
                    {"component": {"name": "OCPPCommCtrlr"},
                     "variable": {"name": "HeartbeatInterval"}, "attribute_value": "-5"},
                    {"component": {"name": "SecurityCtrlr"},
                     "variable": {"name": "SecurityProfile"}, "attribute_value": "0"}]))
                assert [x["attribute_status"] for x in r.set_variable_result] == \
                    ["Accepted", "Rejected", "Rejected"]
                assert client.heartbeat_s == 60.0

                # NotifyAllowedEnergyTransfer without DC_BPT: no discharge from anyone.
                r = await side.call(call.NotifyAllowedEnergyTransfer(
                    transaction_id="tx-1", allowed_energy_transfer=["DC"]))
                assert r.status == "Accepted"
                assert any(o.source == "ocpp:allowed" and o.discharge_limit == 0.0
                           for o in client.offers())

                # UpdateDynamicSchedule needs a Dynamic profile.
                r = await side.call(call.UpdateDynamicSchedule(
                    charging_profile_id=7, schedule_update={"setpoint": -10_000.0}))
                assert r.status == "Rejected"

                # Remote stop, reset, trigger.
                r = await side.call(call.RequestStopTransaction(transaction_id="nope"))
                assert r.status == "Rejected"
                r = await side.call(call.RequestStopTransaction(transaction_id="tx-1"))
                assert r.status == "Accepted"
                r = await side.call(call.Reset(type="OnIdle"))
                assert r.status == "Scheduled"
                assert client.drain_requests() == [StopTransaction("tx-1"), Reset("OnIdle")]
                beats = len(csms.of("Heartbeat"))
                r = await side.call(call.TriggerMessage(requested_message="Heartbeat"))
                assert r.status == "Accepted"
                await csms.wait_for("Heartbeat", beats + 1)

                client.transaction_event("Ended", "StopAuthorized", "tx-1",
                                         meter=[SampledValue("Energy.Active.Import.Register",
                                                             1234.5, "Wh", "Transaction.End"),
                                                SampledValue("Energy.Active.Export.Register",
                                                             321.0, "Wh", "Transaction.End")],
                                         stopped_reason="Remote")
                await csms.wait_for("TransactionEvent", 2)
                assert not [o for o in client.offers() if o.source == "ocpp:tx"], \
                    "a TxProfile outlived its transaction"
                ended = csms.of("TransactionEvent")[-1]
                assert ended["seq_no"] == 1 and ended["event_type"] == "Ended"
                values = {v["measurand"]: v["value"]
                          for v in ended["meter_value"][0]["sampled_value"]}
                assert values == {"Energy.Active.Import.Register": 1234.5,
                                  "Energy.Active.Export.Register": 321.0}
        finally:
            await csms.stop()

    asyncio.run(run())


def test_dynamic_profiles_and_local_frequency(tmp_path: Path) -> None:
    async def run() -> None:
        csms = Csms()
        port = await csms.start()
        try:
            async with station(tmp_path, csms, port) as client:
                await csms.wait_for("BootNotification")
                side = csms.stations["CP-1"]
                r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                    3, "TxDefaultProfile", [period("CentralFrequency", setpoint=-5_000.0,
                                                   discharge_limit=-60_000.0)],
                    kind="Dynamic", start=None, duration=300)))
                assert r.status == "Accepted", r
                r = await side.call(call.UpdateDynamicSchedule(
                    charging_profile_id=3, schedule_update={"setpoint": -45_000.0}))
                assert r.status == "Accepted", r
                [offer] = client.offers()
                assert offer.setpoint == -45_000.0 and offer.mode == "CentralFrequency"
                r = await side.call(call.UpdateDynamicSchedule(
                    charging_profile_id=3, schedule_update={"setpoint": -70_000.0}))
                assert r.status == "Rejected"  # beyond its own dischargeLimit
                await asyncio.sleep(1.05)
                curve = [{"frequency": 49.5, "power": -60_000.0},
                         {"frequency": 50.0, "power": 0.0}]
                r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                    3, "TxDefaultProfile", [period("LocalFrequency", v2x_baseline=-1_000.0,
                                                   v2x_freq_watt_curve=curve)])))
                assert r.status == "Accepted", r
                [offer] = client.offers()
                assert offer.curve == ((49.5, -60_000.0), (50.0, 0.0))
                assert offer.baseline == -1_000.0 and offer.setpoint is None
                r = await side.call(call.ClearChargingProfile(charging_profile_id=3))
                assert r.status == "Accepted" and client.offers() == []
                r = await side.call(call.ClearChargingProfile(charging_profile_criteria={
                    "charging_profile_purpose": "TxDefaultProfile"}))
                assert r.status == "Unknown"
        finally:
            await csms.stop()

    asyncio.run(run())


def test_offline_events_are_replayed_in_order_and_max_offline_duration_lapses(
        tmp_path: Path) -> None:
    async def run() -> None:
        csms = Csms()
        port = await csms.start()
        async with station(tmp_path, csms, port) as client:
            await csms.wait_for("BootNotification")
            client.transaction_event("Started", "CablePluggedIn", "tx-9")
            await csms.wait_for("TransactionEvent")
            side = csms.stations["CP-1"]
            r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                4, "TxProfile", [period("CentralSetpoint", setpoint=-10_000.0)], tx="tx-9",
                max_offline_duration=1)))
            assert r.status == "Accepted", r
            await csms.stop()  # the central system goes away
            await until(lambda: not client.online)
            for i in range(20):
                client.transaction_event("Updated", "MeterValuePeriodic", "tx-9",
                                         meter=[SampledValue("Energy.Active.Export.Register",
                                                             float(i), "Wh",
                                                             "Sample.Periodic")])
            assert any(o.source == "ocpp:tx" for o in client.offers())  # within 1 s
            await asyncio.sleep(1.2)
            assert not any(o.source == "ocpp:tx" for o in client.offers()), \
                "a profile outlived its maxOfflineDuration"
            await csms.start(port)
            await csms.wait_for("TransactionEvent", 21)
            events = csms.of("TransactionEvent")
            assert [e["seq_no"] for e in events] == list(range(21))
            assert all(e["offline"] for e in events[1:])
            # Marked sent once each answer is back (the last may still be on its way).
            await until(lambda: client.outbox.counts() == (21, 0))
        await csms.stop()

    asyncio.run(run())


def test_authorize_online_then_from_the_cache_offline(tmp_path: Path) -> None:
    async def run() -> None:
        csms = Csms()
        csms.accepted_tokens["CARD-V2G"] = ["DC", "DC_BPT"]
        csms.accepted_tokens["CARD-DC"] = ["DC"]
        port = await csms.start()
        async with station(tmp_path, csms, port) as client:
            await csms.wait_for("BootNotification")
            assert await client.authorize("CARD-V2G")
            assert client.allowed_transfer == ("DC", "DC_BPT")
            assert not await client.authorize("STOLEN")
            assert await client.authorize("CARD-DC")
            assert client.allowed_transfer == ("DC",)  # this driver may not discharge
            assert any(o.source == "ocpp:allowed" and o.discharge_limit == 0.0
                       for o in client.offers())
            await csms.stop()
            await until(lambda: not client.online)
            assert await client.authorize("CARD-V2G")  # the cache, offline
            assert not await client.authorize("STOLEN")
            assert not await client.authorize("NEVER-SEEN")
        assert len(csms.of("Authorize")) == 3

    asyncio.run(run())


def test_wrong_basic_auth_never_boots(tmp_path: Path) -> None:
    async def run() -> None:
        csms = Csms(password="s3cret-s3cret-s3cret")
        port = await csms.start()
        try:
            async with station(tmp_path, csms, port, password="wrong"):
                await until(lambda: len(csms.refused) >= 2)
            assert not csms.of("BootNotification")
            async with station(tmp_path, csms, port, password="s3cret-s3cret-s3cret"):
                await csms.wait_for("BootNotification")
        finally:
            await csms.stop()

    asyncio.run(run())


def test_nan_and_inf_never_become_an_offer() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        got = parse_profile(profile(1, "TxDefaultProfile",
                                    [period("ExternalLimits", limit=bad)]), 0.0, None)
        assert isinstance(got, Rejection)


# ---- security profiles 2 and 3: certificates made here ------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, a CSMS certificate for 127.0.0.1 and a station certificate (CN = its id)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
             cwd=d)
    for name, subject, ext in (("csms", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                               ("station", "/CN=CP-1/O=pile-agent", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)


def test_security_profiles_2_and_3_over_tls(tmp_path: Path) -> None:
    make_pki(tmp_path)

    def server_tls(client_certs: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tmp_path / "csms.pem", tmp_path / "csms.key")
        if client_certs:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(tmp_path / "ca.pem")
        return ctx

    async def run() -> None:
        # Profile 2: TLS with the CSMS's certificate, basic auth.
        csms = Csms(password="s3cret-s3cret-s3cret", tls=server_tls(False))
        port = await csms.start()
        try:
            async with station(tmp_path, csms, port, password="s3cret-s3cret-s3cret",
                               ca_file=str(tmp_path / "ca.pem")) as client:
                await csms.wait_for("BootNotification")
                assert client.settings.security_profile == 2
            # A station that does not trust the CSMS's CA never connects.
            async with station(tmp_path, csms, port, password="s3cret-s3cret-s3cret") as c:
                await until(lambda: any("SSL" in line or "certificate" in line
                                        for line in c.log))
            assert len(csms.of("BootNotification")) == 1
        finally:
            await csms.stop()
        # Profile 3: the station proves itself with its certificate.
        csms = Csms(tls=server_tls(True))
        port = await csms.start()
        try:
            async with station(tmp_path, csms, port, ca_file=str(tmp_path / "ca.pem"),
                               cert_file=str(tmp_path / "station.pem"),
                               key_file=str(tmp_path / "station.key")) as client:
                await csms.wait_for("BootNotification")
                assert client.settings.security_profile == 3
            async with station(tmp_path, csms, port, ca_file=str(tmp_path / "ca.pem")) as c:
                await until(lambda: len(c.log) >= 2)
            assert len(csms.of("BootNotification")) == 1, "booted without a certificate"
        finally:
            await csms.stop()

    asyncio.run(run())


def test_one_connection_an_evse_per_gun(tmp_path: Path) -> None:
    """A pile of two guns is one station with EVSEs 1 and 2: a status and a transaction per
    EVSE, TxDefaultProfile per EVSE (else the station's), the station's maximum only at
    evseId 0 (shared among the guns by the pile), requests routed to the EVSE they name,
    one BootNotification for the station however often it reconnects."""
    async def run() -> None:
        csms = Csms()
        port = await csms.start()
        try:
            evses = (EvseSettings(1), EvseSettings(2))
            async with station(tmp_path, csms, port, evses=evses) as client:
                await csms.wait_for("StatusNotification", 2)
                assert {s["evse_id"] for s in csms.of("StatusNotification")} == {1, 2}
                side = csms.stations["CP-1"]
                client.transaction_event("Started", "CablePluggedIn", "tx-2", evse_id=2)
                client.set_connector_status("Occupied", 2)
                await csms.wait_for("TransactionEvent")
                assert csms.of("TransactionEvent")[0]["evse"] == {"id": 2, "connector_id": 1}
                await until(lambda: ("Occupied", 2) in {
                    (s["connector_status"], s["evse_id"]) for s in csms.of("StatusNotification")})
                r = await side.call(call.SetChargingProfile(evse_id=2, charging_profile=profile(
                    1, "TxDefaultProfile", [period("ChargingOnly", limit=20_000.0)])))
                assert r.status == "Accepted"
                r = await side.call(call.SetChargingProfile(evse_id=0, charging_profile=profile(
                    2, "TxDefaultProfile", [period("ChargingOnly", limit=30_000.0)])))
                assert r.status == "Accepted"
                assert [o.charge_limit for o in client.evse_offers(2)] == [20_000.0]
                assert [o.charge_limit for o in client.evse_offers(1)] == [30_000.0]
                r = await side.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                    3, "ChargingStationMaxProfile", [period("ChargingOnly", limit=1e5)])))
                assert r.status == "Rejected"  # the station's maximum is the station's
                r = await side.call(call.SetChargingProfile(evse_id=0, charging_profile=profile(
                    3, "ChargingStationMaxProfile", [period("ChargingOnly", limit=1e5)])))
                assert r.status == "Accepted"
                assert [o.source for o in client.station_offers()] == ["ocpp:max"]
                assert all(o.source == "ocpp:tx" for o in client.evse_offers(1))
                r = await side.call(call.SetChargingProfile(evse_id=3, charging_profile=profile(
                    4, "TxDefaultProfile", [period("ChargingOnly", limit=1.0)])))
                assert r.status == "Rejected" and r.status_info["reason_code"] == "UnknownEvse"
                r = await side.call(call.RequestStopTransaction(transaction_id="tx-2"))
                assert r.status == "Accepted"
                assert client.drain_requests(2) == [StopTransaction("tx-2")]
                assert client.drain_requests(1) == []
                r = await side.call(call.ChangeAvailability(
                    operational_status="Inoperative", evse={"id": 2}))
                assert r.status == "Scheduled"  # its transaction runs on to its end
                assert client.drain_requests(2) == [ChangeAvailability(False)]
                r = await side.call(call.Reset(type="OnIdle"))
                assert r.status == "Scheduled"
                assert client.drain_requests(1) == [Reset("OnIdle")]
                assert client.drain_requests(2) == [Reset("OnIdle")]
                # A reconnect does not boot again; it sends every connector's status.
                statuses = len(csms.of("StatusNotification"))
                await side.ws.close()
                await until(lambda: len(csms.of("StatusNotification")) >= statuses + 2)
                assert len(csms.of("BootNotification")) == 1
        finally:
            await csms.stop()

    asyncio.run(run())


def test_a_stop_that_meets_a_queued_message_ends_the_client(tmp_path: Path) -> None:
    """The owner cancels the client as a transaction event wakes its loop (a service that
    stops at a session's end). Python 3.11's asyncio.wait_for returns the woken wait and drops
    that cancel: the loop ran on, reconnecting for ever, and the owner's await hung (a
    20-minute hang of test_one_connection_an_evse_per_gun)."""
    async def run() -> str:
        csms = Csms()
        port = await csms.start()
        client = OcppClient(OcppSettings(url=f"ws://127.0.0.1:{port}/ocpp", station_id="CP-1",
                                         reconnect_s=0.2, rated_power_w=120_000.0),
                            Outbox(tmp_path / "ledger.sqlite"), time.time)
        task = asyncio.create_task(client.run())
        try:
            await csms.wait_for("StatusNotification")
            await asyncio.sleep(0.05)  # the loop waits on its wake-up
            client.transaction_event("Started", "CablePluggedIn", "tx-1")
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
            return "cancelled" if task.cancelled() else \
                "ended otherwise" if task.done() else "still running"
        finally:
            for _ in range(10):  # a client that dropped the cancel: cancelled until it ends
                if task.done():
                    break
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            client.outbox.close()
            await csms.stop()

    assert asyncio.run(run()) == "cancelled"
