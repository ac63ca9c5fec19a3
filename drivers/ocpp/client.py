"""OCPP 2.1 charging-station client (the `ocpp` package's v21 over `websockets`).

Thin: each CSMS request is checked and answered here as the spec says (smart charging by
`profiles.py`), and what it asks of the pile is queued for the runtime (`requests`);
offers for the core's upstream arbiter come from `offers`. Transaction events go through
the durable outbox (`agent/ledger/outbox.py`) and are sent in order, again after every
reconnect. Security profiles: 1 (ws, basic auth), 2 (wss + basic auth), 3 (wss with a
client certificate), set by the URL scheme and the settings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v21 import ChargePoint, call, call_result
from ocpp.v21.datatypes import (
    ChargingStationType,
    GetVariableResultType,
    SetVariableResultType,
    StatusInfoType,
)
from ocpp.v21.enums import Action

from agent.core.upstream import SetpointRatings, setpoint_problem
from agent.ledger.outbox import Outbox
from drivers.ocpp import rpc_frames
from drivers.ocpp.profiles import Offer, ProfileStore, Rejection, parse_profile
from drivers.said_lines import SaidLines

log = logging.getLogger("pile_agent.ocpp")
# What the station can sample (SampledDataCtrlr's measurands) and what it accepts of a
# schedule (SmartChargingCtrlr.PeriodsPerSchedule, ProfileStackLevel): this station's own
# limits, advertised read-only in its device model as OCPP 2.1 asks a station to (48: a
# day in half hours; 8 stack levels), and enforced (Rejected beyond them).
MEASURANDS = ("Energy.Active.Import.Register", "Energy.Active.Export.Register",
              "Power.Active.Import", "Power.Active.Export", "SoC")
PERIODS_PER_SCHEDULE = 48
PROFILE_STACK_LEVEL = 8
SUBPROTOCOL = "ocpp2.1"


@dataclass(frozen=True, slots=True)
class OcppSettings:
    url: str  # ws://host:port/path or wss://...; the station id is appended
    station_id: str
    password: str | None = None  # basic auth (security profiles 1 and 2)
    ca_file: str | None = None  # the CSMS's CA (wss)
    cert_file: str | None = None  # client certificate (security profile 3)
    key_file: str | None = None
    evse_id: int = 1
    reconnect_s: float = 2.0
    vendor: str = "pile-agent"
    model: str = "V2G DC pile"
    serial_number: str = ""  # BootNotification serialNumber (default: the station id)
    firmware_version: str = field(default_factory=lambda: _package_version())
    rated_power_w: float = 0.0
    # The gun's ratings per direction: a setpoint beyond them is Rejected, as the core's
    # arbiter would refuse it (agent/core/upstream.py setpoint_problem).
    ratings: SetpointRatings = field(default_factory=SetpointRatings)
    # More SetChargingProfile requests per second than this: RateLimitExceeded (2.1).
    profiles_per_s: float = 1.0

    @property
    def security_profile(self) -> int:
        if self.url.startswith("wss://"):
            return 3 if self.cert_file else 2
        return 1 if self.password else 0


@dataclass(frozen=True, slots=True)
class SampledValue:
    """One OCPP 2.1 SampledValueType: a measurand, its value (never negative for the
    Import/Export pairs), its unit of measure and its reading context."""

    measurand: str
    value: float
    unit: str
    context: str


@dataclass(frozen=True, slots=True)
class StopTransaction:
    transaction_id: str


@dataclass(frozen=True, slots=True)
class Reset:
    kind: str  # Immediate or OnIdle


@dataclass(frozen=True, slots=True)
class RemoteStart:
    id_token: str
    remote_start_id: int


Request = StopTransaction | Reset | RemoteStart


def _package_version() -> str:
    try:
        return metadata.version("pile-agent")
    except metadata.PackageNotFoundError:  # a source tree never installed
        return "unknown"


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


class _Station(ChargePoint):  # type: ignore[misc]
    """The ocpp handlers; the state lives in the client."""

    owner: OcppClient

    async def route_message(self, raw: str | bytes) -> None:
        """Every frame answered (drivers/ocpp/rpc_frames.py): a bad frame, an action this
        station does not implement or a payload its schema refuses gets its CALLERROR and
        one log line; a SEND gets none; a handler's own failure is an InternalError."""
        frame = rpc_frames.parse(raw)
        if isinstance(frame, rpc_frames.Frame) and frame.type_id == rpc_frames.CALL:
            frame = rpc_frames.action_error(frame, frozenset(self.route_map)) or frame
        if isinstance(frame, rpc_frames.FrameError):
            log.warning("refused a frame: %s: %s", frame.code, frame.description)
            await self._send(frame.call_error())
            return
        if frame.type_id in (rpc_frames.SEND, rpc_frames.CALLRESULTERROR):
            log.info("frame %d (%s) from the central system: nothing to answer",
                     frame.type_id, frame.action or frame.message_id)
            return
        try:
            await super().route_message(raw)
        except Exception as exc:  # a handler's bug must not end the link or go unanswered
            log.error("handling %s failed: %s: %s", frame.action or frame.message_id,
                      type(exc).__name__, exc)
            if frame.type_id == rpc_frames.CALL:
                await self._send(rpc_frames.FrameError(
                    frame.message_id, "InternalError", f"{type(exc).__name__}").call_error())

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    def _set_profile(self, evse_id: int, charging_profile: dict[str, Any],
                     **_: Any) -> call_result.SetChargingProfile:
        return self.owner.set_profile(evse_id, charging_profile)

    @on(Action.clear_charging_profile)  # type: ignore[untyped-decorator]
    def _clear_profile(self, charging_profile_id: int | None = None,
                       charging_profile_criteria: dict[str, Any] | None = None,
                       **_: Any) -> call_result.ClearChargingProfile:
        c = charging_profile_criteria or {}
        found = self.owner.store.clear(charging_profile_id, c.get("charging_profile_purpose"),
                                       c.get("stack_level"))
        return call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(Action.update_dynamic_schedule)  # type: ignore[untyped-decorator]
    def _update_dynamic(self, charging_profile_id: int, schedule_update: dict[str, Any],
                        **_: Any) -> call_result.UpdateDynamicSchedule:
        problem = self.owner.store.update_dynamic(charging_profile_id, schedule_update,
                                                  self.owner.wall())
        if problem is not None:
            return call_result.UpdateDynamicSchedule(
                status="Rejected", status_info=StatusInfoType(problem.reason_code, problem.info))
        return call_result.UpdateDynamicSchedule(status="Accepted")

    @on(Action.get_variables)  # type: ignore[untyped-decorator]
    def _get_variables(self, get_variable_data: list[dict[str, Any]],
                       **_: Any) -> call_result.GetVariables:
        return call_result.GetVariables(
            get_variable_result=[self.owner.get_variable(d) for d in get_variable_data])

    @on(Action.set_variables)  # type: ignore[untyped-decorator]
    def _set_variables(self, set_variable_data: list[dict[str, Any]],
                       **_: Any) -> call_result.SetVariables:
        return call_result.SetVariables(
            set_variable_result=[self.owner.set_variable(d) for d in set_variable_data])

    @on(Action.request_start_transaction)  # type: ignore[untyped-decorator]
    def _remote_start(self, id_token: dict[str, Any], remote_start_id: int,
                      **_: Any) -> call_result.RequestStartTransaction:
        self.owner.requests.append(RemoteStart(str(id_token.get("id_token")), remote_start_id))
        return call_result.RequestStartTransaction(
            status="Accepted", transaction_id=self.owner.transaction_id)

    @on(Action.request_stop_transaction)  # type: ignore[untyped-decorator]
    def _remote_stop(self, transaction_id: str,
                     **_: Any) -> call_result.RequestStopTransaction:
        if transaction_id != self.owner.transaction_id:
            return call_result.RequestStopTransaction(
                status="Rejected", status_info=StatusInfoType("TxNotFound"))
        self.owner.requests.append(StopTransaction(transaction_id))
        return call_result.RequestStopTransaction(status="Accepted")

    @on(Action.reset)  # type: ignore[untyped-decorator]
    def _reset(self, type: str, **_: Any) -> call_result.Reset:
        self.owner.requests.append(Reset(type))
        busy = self.owner.transaction_id is not None
        return call_result.Reset(status="Scheduled" if busy and type == "OnIdle"
                                 else "Accepted")

    @on(Action.trigger_message)  # type: ignore[untyped-decorator]
    def _trigger(self, requested_message: str, **_: Any) -> call_result.TriggerMessage:
        if requested_message not in ("BootNotification", "Heartbeat", "StatusNotification"):
            return call_result.TriggerMessage(status="NotImplemented")
        self.owner.triggered.append(requested_message)
        return call_result.TriggerMessage(status="Accepted")

    @on(Action.notify_allowed_energy_transfer)  # type: ignore[untyped-decorator]
    def _allowed(self, transaction_id: str, allowed_energy_transfer: list[str],
                 **_: Any) -> call_result.NotifyAllowedEnergyTransfer:
        if transaction_id != self.owner.transaction_id:
            return call_result.NotifyAllowedEnergyTransfer(
                status="Rejected", status_info=StatusInfoType("TxNotFound"))
        self.owner.allowed_transfer = tuple(allowed_energy_transfer)
        return call_result.NotifyAllowedEnergyTransfer(status="Accepted")


@dataclass
class OcppClient:
    settings: OcppSettings
    outbox: Outbox
    wall: Callable[[], float]
    store: ProfileStore = field(default_factory=ProfileStore)
    requests: list[Request] = field(default_factory=list)
    triggered: list[str] = field(default_factory=list)
    online: bool = False
    offline_since: float | None = None
    transaction_id: str | None = None
    allowed_transfer: tuple[str, ...] = ("DC", "DC_BPT")
    heartbeat_s: float = 300.0
    connector_status: str = "Available"
    log: SaidLines = field(default_factory=lambda: SaidLines("pile_agent.ocpp"))
    variables: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)
    needs: dict[str, Any] | None = None  # NotifyEVChargingNeeds waiting to be sent
    auth_cache: dict[str, bool] = field(default_factory=dict)
    # The device model's settable variables (each changes what the station does):
    tx_updated_interval_s: float = 60.0  # SampledDataCtrlr.TxUpdatedInterval
    measurands: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        ctx: MEASURANDS for ctx in ("TxStartedMeasurands", "TxUpdatedMeasurands",
                                    "TxEndedMeasurands")})
    retry_random_range_s: float = 0.0  # OCPPCommCtrlr.RetryBackOffRandomRange
    retry_repeat_times: int = 0  # OCPPCommCtrlr.RetryBackOffRepeatTimes (0: no doubling)
    # OCPPCommCtrlr.MessageTimeout: 30 s, the `ocpp` package's own call timeout (OCPP 2.1
    # leaves the value to the station [V])
    message_timeout_s: float = 30.0
    retry_wait_min_s: float = -1.0  # OCPPCommCtrlr.RetryBackOffWaitMinimum (-1: reconnect_s)
    _attempts: int = 0
    _profile_times: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _cp: _Station | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.variables = {  # (component, variable) -> (value, writable)
            ("OCPPCommCtrlr", "HeartbeatInterval"): (str(int(self.heartbeat_s)), True),
            ("SmartChargingCtrlr", "Enabled"): ("true", False),
            ("SmartChargingCtrlr", "RateUnit"): ("A,W", False),
            ("V2XChargingCtrlr", "Enabled"): ("true", False),
            ("V2XChargingCtrlr", "SupportedOperationModes"): (
                "Idle,ChargingOnly,CentralSetpoint,ExternalSetpoint,ExternalLimits,"
                "CentralFrequency,LocalFrequency,LocalLoadBalancing", False),
            ("SecurityCtrlr", "SecurityProfile"): (str(s.security_profile), False),
            ("SecurityCtrlr", "Identity"): (s.station_id, False),
            ("EVSE", "Power"): (f"{s.rated_power_w:.0f}", False),
            ("ChargingStation", "Model"): (s.model, False),
            ("ChargingStation", "VendorName"): (s.vendor, False),
            ("ChargingStation", "SerialNumber"): (s.serial_number or s.station_id, False),
            ("ChargingStation", "FirmwareVersion"): (s.firmware_version, False),
            ("V2XChargingCtrlr", "SupportedEnergyTransferModes"): (
                "DC,DC_BPT" if s.ratings.discharge_a > 0 else "DC", False),
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): (str(PERIODS_PER_SCHEDULE), False),
            ("SmartChargingCtrlr", "ProfileStackLevel"): (str(PROFILE_STACK_LEVEL), False),
            # A (re)connect always resends every connector's status: no threshold.
            ("OCPPCommCtrlr", "OfflineThreshold"): ("0", False),
        }
        if self.retry_wait_min_s < 0:
            self.retry_wait_min_s = s.reconnect_s
        for name, value in (("TxUpdatedInterval", f"{self.tx_updated_interval_s:.0f}"),
                            *((ctx, ",".join(m)) for ctx, m in self.measurands.items())):
            self.variables[("SampledDataCtrlr", name)] = (value, True)
        for name, number in (("RetryBackOffWaitMinimum", self.retry_wait_min_s),
                             ("RetryBackOffRandomRange", self.retry_random_range_s),
                             ("RetryBackOffRepeatTimes", float(self.retry_repeat_times)),
                             ("MessageTimeout", self.message_timeout_s)):
            self.variables[("OCPPCommCtrlr", name)] = (f"{number:g}", True)

    # ---- CSMS requests -----------------------------------------------------------------

    def set_profile(self, evse_id: int, raw: dict[str, Any]) -> call_result.SetChargingProfile:
        now = self.wall()
        # Per EVSE and purpose (a station maximum and a TxProfile back to back are two
        # streams, not one too fast).
        key = (evse_id, str(raw.get("charging_profile_purpose", "")))
        times = [t for t in self._profile_times.get(key, []) if now - t < 1.0]
        self._profile_times[key] = times
        if len(times) >= self.settings.profiles_per_s:
            return _rejected("RateLimitExceeded",
                             f"more than {self.settings.profiles_per_s:g} {key[1]} a second "
                             f"for EVSE {evse_id}")
        if evse_id not in (0, self.settings.evse_id):
            return _rejected("UnknownEvse", f"EVSE {evse_id}")
        profile = parse_profile(raw, now, self.transaction_id)
        if isinstance(profile, Rejection):
            self.log.append(f"profile rejected: {profile.reason_code}: {profile.info}")
            return _rejected(profile.reason_code, profile.info)
        if evse_id == 0 and profile.purpose.startswith("Tx"):
            return _rejected("InvalidValue", "a Tx profile needs an EVSE")
        if len(profile.periods) > PERIODS_PER_SCHEDULE or \
                profile.stack_level > PROFILE_STACK_LEVEL:
            why = (f"{len(profile.periods)} periods (at most {PERIODS_PER_SCHEDULE}) or stack "
                   f"level {profile.stack_level} (at most {PROFILE_STACK_LEVEL})")
            self.log.append(f"profile rejected: InvalidValue: {why}")
            return _rejected("InvalidValue", why)
        beyond = next((why for q in profile.periods
                       if (why := setpoint_problem(q.setpoint, profile.unit,
                                                   self.settings.ratings))), "")
        if beyond:
            self.log.append(f"profile rejected: InvalidValue: {beyond}")
            return _rejected("InvalidValue", beyond)
        times.append(now)
        self.store.set(profile)
        return call_result.SetChargingProfile(status="Accepted")

    def get_variable(self, d: dict[str, Any]) -> GetVariableResultType:
        comp, var = d["component"], d["variable"]
        key = (comp["name"], var["name"])
        value = self.variables.get(key)
        status = "Accepted" if value is not None else (
            "UnknownVariable" if any(c == key[0] for c, _ in self.variables)
            else "UnknownComponent")
        return GetVariableResultType(attribute_status=status, component=comp, variable=var,
                                     attribute_value=value[0] if value else None)

    def set_variable(self, d: dict[str, Any]) -> SetVariableResultType:
        comp, var = d["component"], d["variable"]
        key = (comp["name"], var["name"])
        current = self.variables.get(key)
        if current is None:
            status = "UnknownVariable" if any(c == key[0] for c, _ in self.variables) \
                else "UnknownComponent"
        elif not current[1] or key not in self._setters():
            status = "Rejected"
        else:
            parse, apply = self._setters()[key]
            value = parse(str(d.get("attribute_value", "")))
            status = "Rejected" if value is None else "Accepted"
            if value is not None:
                apply(value)
                self.variables[key] = (str(d["attribute_value"]), True)
        if status == "Rejected":
            self.log.append(f"SetVariables {key[0]}.{key[1]} = {d.get('attribute_value')!r} "
                            "rejected")
        return SetVariableResultType(attribute_status=status, component=comp, variable=var)

    def _setters(self) -> dict[tuple[str, str], tuple[Callable[[str], Any], Callable[[Any],
                                                                                     None]]]:
        """Each settable variable: its parser (None: rejected) and what setting it does."""
        def whole(low: int, high: int) -> Callable[[str], int | None]:
            def parse(text: str) -> int | None:
                try:
                    n = int(text)
                except ValueError:
                    return None
                return n if low <= n <= high else None
            return parse

        def measurands(text: str) -> tuple[str, ...] | None:
            names = tuple(m.strip() for m in text.split(",") if m.strip())
            return names if names and all(m in MEASURANDS for m in names) else None

        def set_timeout(n: int) -> None:
            self.message_timeout_s = float(n)
            if self._cp is not None:
                self._cp._response_timeout = float(n)

        out: dict[tuple[str, str], tuple[Callable[[str], Any], Callable[[Any], None]]] = {
            ("OCPPCommCtrlr", "HeartbeatInterval"): (
                whole(1, 86_400), lambda n: setattr(self, "heartbeat_s", float(n))),
            ("SampledDataCtrlr", "TxUpdatedInterval"): (
                whole(1, 86_400), lambda n: setattr(self, "tx_updated_interval_s", float(n))),
            ("OCPPCommCtrlr", "RetryBackOffWaitMinimum"): (
                whole(0, 3_600), lambda n: setattr(self, "retry_wait_min_s", float(n))),
            ("OCPPCommCtrlr", "RetryBackOffRandomRange"): (
                whole(0, 3_600), lambda n: setattr(self, "retry_random_range_s", float(n))),
            ("OCPPCommCtrlr", "RetryBackOffRepeatTimes"): (
                whole(0, 10), lambda n: setattr(self, "retry_repeat_times", n)),
            ("OCPPCommCtrlr", "MessageTimeout"): (whole(1, 600), set_timeout),
        }
        for ctx in self.measurands:
            out[("SampledDataCtrlr", ctx)] = (measurands, partial(self.measurands.__setitem__,
                                                                  ctx))
        return out

    def use_tx_updated_interval(self, seconds: float) -> None:
        """The configured interval of Updated meter values (the central system may change
        it through SampledDataCtrlr.TxUpdatedInterval)."""
        self.tx_updated_interval_s = seconds
        self.variables[("SampledDataCtrlr", "TxUpdatedInterval")] = (f"{seconds:g}", True)

    def backoff_s(self, rand: Callable[[], float] = random.random) -> float:
        """The wait before the next connection attempt (OCPPCommCtrlr RetryBackOff*): the
        minimum, doubled per failed attempt up to RepeatTimes, plus a random part of up to
        RandomRange. Counts the attempt."""
        doubled = self.retry_wait_min_s * float(2 ** min(self._attempts,
                                                           self.retry_repeat_times))
        self._attempts += 1
        return float(doubled + rand() * self.retry_random_range_s)

    # ---- what the pile takes from it ------------------------------------------------------

    def offers(self) -> list[Offer]:
        now = self.wall()
        offline_s = now - self.offline_since if self.offline_since is not None else 0.0
        out = self.store.offers(now, offline_s)
        if "DC_BPT" not in self.allowed_transfer:
            # NotifyAllowedEnergyTransfer without bidirectional DC: no discharge offer.
            out.append(Offer("ocpp:allowed", "A", now + 60.0, None, math.inf, 0.0))
        return out

    def drain_requests(self) -> list[Request]:
        out, self.requests = self.requests, []
        return out

    # ---- authorisation -----------------------------------------------------------------

    async def authorize(self, id_token: str, kind: str = "ISO14443") -> bool:
        """Authorize online (C01); the answer is cached (C10) and used while offline.
        The answer's allowedEnergyTransfer says whether this driver may discharge (Q01)."""
        cp = self._cp
        if cp is not None and self.online:
            try:
                r = await asyncio.wait_for(cp.call(call.Authorize(
                    id_token={"id_token": id_token, "type": kind})), 10.0)
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException):
                r = None
            if r is not None:
                ok = bool(r.id_token_info["status"] == "Accepted")
                self.auth_cache[id_token] = ok
                if ok and r.allowed_energy_transfer:
                    self.allowed_transfer = tuple(r.allowed_energy_transfer)
                return ok
        return self.auth_cache.get(id_token, False)

    # ---- transactions: through the durable outbox ----------------------------------------

    def transaction_event(self, event_type: str, trigger: str, transaction_id: str,
                          meter: list[SampledValue] | None = None, stopped_reason: str = "",
                          charging_state: str | None = None) -> int:
        now = self.wall()
        tx: dict[str, Any] = {"transaction_id": transaction_id}
        if charging_state:
            tx["charging_state"] = charging_state
        if stopped_reason:
            tx["stopped_reason"] = stopped_reason
        payload: dict[str, Any] = {
            "event_type": event_type, "timestamp": iso(now), "trigger_reason": trigger,
            "transaction_info": tx, "offline": not self.online,
            "evse": {"id": self.settings.evse_id, "connector_id": 1},
        }
        if meter:
            payload["meter_value"] = [{"timestamp": iso(now), "sampled_value": [
                {"value": round(v.value, 3), "measurand": v.measurand, "context": v.context,
                 "unit_of_measure": {"unit": v.unit}} for v in meter]}]
        if event_type == "Started":
            self.transaction_id = transaction_id
            self.store.transaction_started = now  # Relative profiles count from here
        seq = self.outbox.enqueue(transaction_id, payload, now)
        if event_type == "Ended":
            self.transaction_id = None
            self.store.end_transaction()
        self._wake.set()
        return seq

    # ---- the link ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, boot, replay the outbox, beat; reconnect for ever."""
        while True:
            try:
                async with self._connect() as ws:
                    cp = _Station(self.settings.station_id, ws)
                    cp._response_timeout = self.message_timeout_s
                    cp.owner = self
                    self._cp = cp
                    reader = asyncio.create_task(cp.start())
                    # A closed link is noticed at once, not at the next beat of the loop:
                    # maxOfflineDuration counts from here.
                    reader.add_done_callback(lambda _task: self._wake.set())
                    try:
                        await self._session(cp, reader)
                    finally:
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await reader
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
                self.log.append(f"link: {type(exc).__name__}: {exc}")
            self._cp = None
            if self.online:
                self.online, self.offline_since = False, self.wall()
            elif self.offline_since is None:
                self.offline_since = self.wall()
            await asyncio.sleep(self.backoff_s())

    def _connect(self) -> Any:
        s = self.settings
        headers = {}
        if s.password is not None:
            token = base64.b64encode(f"{s.station_id}:{s.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        context = None
        if s.url.startswith("wss://"):
            context = ssl.create_default_context(cafile=s.ca_file)
            if s.cert_file:
                context.load_cert_chain(s.cert_file, s.key_file)
        return websockets.connect(f"{s.url.rstrip('/')}/{s.station_id}",
                                  subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                  additional_headers=headers, ssl=context, open_timeout=5)

    async def _session(self, cp: _Station, reader: asyncio.Task[None]) -> None:
        boot = await cp.call(call.BootNotification(
            charging_station=self._station_type(), reason="PowerUp"))
        if boot is None or boot.status != "Accepted":
            raise OSError(f"boot not accepted: {boot}")
        self.heartbeat_s = float(boot.interval or self.heartbeat_s)
        self.online, self.offline_since, self._attempts = True, None, 0
        await self._status(cp)
        next_beat = self.wall() + self.heartbeat_s
        while not reader.done():
            await self._flush(cp)
            for what in self.triggered:
                if what == "Heartbeat":
                    await cp.call(call.Heartbeat())
                elif what == "StatusNotification":
                    await self._status(cp)
                else:
                    await cp.call(call.BootNotification(
                        charging_station=self._station_type(), reason="Triggered"))
            self.triggered.clear()
            if self.needs is not None:
                needs, self.needs = self.needs, None
                await cp.call(call.NotifyEVChargingNeeds(evse_id=self.settings.evse_id,
                                                         charging_needs=needs))
            if self.wall() >= next_beat:
                await cp.call(call.Heartbeat())
                next_beat = self.wall() + self.heartbeat_s
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.2)
        raise OSError("connection closed")

    def _station_type(self) -> ChargingStationType:
        s = self.settings
        return ChargingStationType(model=s.model, vendor_name=s.vendor,
                                   serial_number=(s.serial_number or s.station_id)[:25],
                                   firmware_version=s.firmware_version[:50])

    async def _status(self, cp: _Station) -> None:
        await cp.call(call.StatusNotification(
            timestamp=iso(self.wall()), connector_status=self.connector_status,
            evse_id=self.settings.evse_id, connector_id=1))

    async def _flush(self, cp: _Station) -> None:
        for row_id, payload in self.outbox.pending():
            result = await cp.call(call.TransactionEvent(**payload))
            if result is None:
                raise OSError("TransactionEvent answered with an error")
            self.outbox.mark_sent(row_id, self.wall())

    def ev_charging_needs(self, needs: dict[str, Any]) -> None:
        """Queue a NotifyEVChargingNeeds (snake_case ChargingNeedsType), sent when online."""
        self.needs = needs
        self._wake.set()

    def set_connector_status(self, status: str) -> None:
        if status != self.connector_status:
            self.connector_status = status
            self.triggered.append("StatusNotification")
            self._wake.set()


def _rejected(code: str, info: str) -> call_result.SetChargingProfile:
    return call_result.SetChargingProfile(status="Rejected",
                                          status_info=StatusInfoType(code, info[:1024]))
