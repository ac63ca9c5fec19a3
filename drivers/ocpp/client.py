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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
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
from agent.version import package_version
from drivers.ocpp import rpc_frames
from drivers.ocpp.log_upload import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_INTERVAL_S,
    put,
    target_url,
    timestamp,
    unsupported,
)
from drivers.ocpp.profiles import Offer, ProfileStore, Rejection, parse_profile
from drivers.said_lines import SaidLines
from drivers.task_end import reap, within

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
# The closing handshake waits this long for the central system's Close frame, then drops
# the TCP connection (RFC 6455 §7.1.1 lets an endpoint do so). websockets waits 10 s by
# default: at an agent stop that alone overran the 5 s exit budget (the soak's agent was
# killed 15 s after SIGTERM with every session already ended).
CLOSE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class EvseSettings:
    """One EVSE of the station (a gun): its id (the gun's charger number) and the ratings
    a setpoint on it is checked against."""

    id: int
    ratings: SetpointRatings = field(default_factory=SetpointRatings)


@dataclass(frozen=True, slots=True)
class OcppSettings:
    url: str  # ws://host:port/path or wss://...; the station id is appended
    station_id: str
    password: str | None = None  # basic auth (security profiles 1 and 2)
    ca_file: str | None = None  # the CSMS's CA (wss)
    cert_file: str | None = None  # client certificate (security profile 3)
    key_file: str | None = None
    evse_id: int = 1
    reconnect_s: float = 2.0  # OCPPCommCtrlr.RetryBackOffWaitMinimum's initial value
    # OCPPCommCtrlr RetryBackOffRandomRange and RetryBackOffRepeatTimes' initial values (the
    # central system may set all three; a pile's come from [ocpp] in pile.toml).
    retry_random_range_s: float = 0.0
    retry_repeat_times: int = 0
    vendor: str = "pile-agent"
    model: str = "V2G DC pile"
    serial_number: str = ""  # BootNotification serialNumber (default: the station id)
    firmware_version: str = field(default_factory=package_version)
    rated_power_w: float = 0.0
    # The gun's ratings per direction: a setpoint beyond them is Rejected, as the core's
    # arbiter would refuse it (agent/core/upstream.py setpoint_problem).
    ratings: SetpointRatings = field(default_factory=SetpointRatings)
    # More SetChargingProfile requests per second than this: RateLimitExceeded (2.1).
    profiles_per_s: float = 1.0
    # Every EVSE of the station, one per gun, connector 1 each (empty: one EVSE, `evse_id`
    # with `ratings`).
    evses: tuple[EvseSettings, ...] = ()

    def evse_list(self) -> tuple[EvseSettings, ...]:
        return self.evses or (EvseSettings(self.evse_id, self.ratings),)

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


@dataclass(frozen=True, slots=True)
class ChangeAvailability:
    operative: bool


Request = StopTransaction | Reset | RemoteStart | ChangeAvailability


@dataclass
class Evse:
    """What the station holds per EVSE: its connector's status, its transaction, its
    profiles (TxProfile, TxDefaultProfile), what the central system allows it, and what
    it asked of the gun."""

    id: int
    ratings: SetpointRatings
    store: ProfileStore = field(default_factory=ProfileStore)
    connector_status: str = "Available"
    transaction_id: str | None = None
    allowed_transfer: tuple[str, ...] = ("DC", "DC_BPT")
    needs: dict[str, Any] | None = None  # NotifyEVChargingNeeds waiting to be sent
    requests: list[Request] = field(default_factory=list)
    status_due: bool = True  # a StatusNotification to send


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
        found = self.owner.clear_profiles(charging_profile_id, c.get("evse_id"),
                                          c.get("charging_profile_purpose"),
                                          c.get("stack_level"))
        return call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(Action.update_dynamic_schedule)  # type: ignore[untyped-decorator]
    def _update_dynamic(self, charging_profile_id: int, schedule_update: dict[str, Any],
                        **_: Any) -> call_result.UpdateDynamicSchedule:
        store = self.owner.store_holding(charging_profile_id)
        problem = store.update_dynamic(charging_profile_id, schedule_update, self.owner.wall()) \
            if store is not None else Rejection("UnknownProfile", "no profile with that id")
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
                      evse_id: int | None = None,
                      **_: Any) -> call_result.RequestStartTransaction:
        evse = self.owner.evses.get(evse_id if evse_id is not None
                                    else next(iter(self.owner.evses)))
        if evse is None:
            return call_result.RequestStartTransaction(
                status="Rejected", status_info=StatusInfoType("UnknownEvse"))
        evse.requests.append(RemoteStart(str(id_token.get("id_token")), remote_start_id))
        return call_result.RequestStartTransaction(status="Accepted",
                                                   transaction_id=evse.transaction_id)

    @on(Action.request_stop_transaction)  # type: ignore[untyped-decorator]
    def _remote_stop(self, transaction_id: str,
                     **_: Any) -> call_result.RequestStopTransaction:
        evse = self.owner.evse_of(transaction_id)
        if evse is None:
            return call_result.RequestStopTransaction(
                status="Rejected", status_info=StatusInfoType("TxNotFound"))
        evse.requests.append(StopTransaction(transaction_id))
        return call_result.RequestStopTransaction(status="Accepted")

    @on(Action.reset)  # type: ignore[untyped-decorator]
    def _reset(self, type: str, evse_id: int | None = None, **_: Any) -> call_result.Reset:
        targets = self.owner.targets(evse_id)
        if not targets:
            return call_result.Reset(status="Rejected",
                                     status_info=StatusInfoType("UnknownEvse"))
        for evse in targets:
            evse.requests.append(Reset(type))
        busy = any(e.transaction_id is not None for e in targets)
        return call_result.Reset(status="Scheduled" if busy and type == "OnIdle"
                                 else "Accepted")

    @on(Action.change_availability)  # type: ignore[untyped-decorator]
    def _availability(self, operational_status: str, evse: dict[str, Any] | None = None,
                      **_: Any) -> call_result.ChangeAvailability:
        """G03/G04: Inoperative takes the EVSE (or, without one, every EVSE) out of
        service; a running transaction goes on to its end first (Scheduled)."""
        targets = self.owner.targets(evse.get("id") if evse else None)
        if not targets:
            return call_result.ChangeAvailability(
                status="Rejected", status_info=StatusInfoType("UnknownEvse"))
        for e in targets:
            e.requests.append(ChangeAvailability(operational_status == "Operative"))
        busy = operational_status != "Operative" and any(
            e.transaction_id is not None for e in targets)
        return call_result.ChangeAvailability(status="Scheduled" if busy else "Accepted")

    @on(Action.get_log)  # type: ignore[untyped-decorator]
    def _get_log(self, log: dict[str, Any], log_type: str, request_id: int,
                 retries: int | None = None, retry_interval: int | None = None,
                 **_: Any) -> call_result.GetLog:
        return self.owner.get_log(log_type, request_id, log, retries, retry_interval)

    @on(Action.trigger_message)  # type: ignore[untyped-decorator]
    def _trigger(self, requested_message: str, **_: Any) -> call_result.TriggerMessage:
        if requested_message not in ("BootNotification", "Heartbeat", "StatusNotification"):
            return call_result.TriggerMessage(status="NotImplemented")
        if requested_message == "StatusNotification":
            for evse in self.owner.evses.values():
                evse.status_due = True
        self.owner.triggered.append(requested_message)
        return call_result.TriggerMessage(status="Accepted")

    @on(Action.notify_allowed_energy_transfer)  # type: ignore[untyped-decorator]
    def _allowed(self, transaction_id: str, allowed_energy_transfer: list[str],
                 **_: Any) -> call_result.NotifyAllowedEnergyTransfer:
        evse = self.owner.evse_of(transaction_id)
        if evse is None:
            return call_result.NotifyAllowedEnergyTransfer(
                status="Rejected", status_info=StatusInfoType("TxNotFound"))
        evse.allowed_transfer = tuple(allowed_energy_transfer)
        return call_result.NotifyAllowedEnergyTransfer(status="Accepted")


@dataclass
class OcppClient:
    settings: OcppSettings
    outbox: Outbox
    wall: Callable[[], float]
    # The station's own profiles (evseId 0): ChargingStationMaxProfile,
    # ExternalConstraints, and a TxDefaultProfile for every EVSE without its own.
    store: ProfileStore = field(default_factory=ProfileStore)
    evses: dict[int, Evse] = field(default_factory=dict)
    triggered: list[str] = field(default_factory=list)
    online: bool = False
    offline_since: float | None = None
    heartbeat_s: float = 300.0
    booted: bool = False  # BootNotification accepted since the process started
    log: SaidLines = field(default_factory=lambda: SaidLines("pile_agent.ocpp"))
    variables: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)
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
    # GetLog: (log type, oldest, latest as Unix times or None) -> the archive to upload;
    # None: GetLog is Rejected (the runtime builds it: agent/diagnostics.py).
    log_builder: Callable[[str, float | None, float | None], Awaitable[Path]] | None = None
    uploads: list[tuple[int, str]] = field(default_factory=list)  # (request id, status) said
    _upload: asyncio.Task[None] | None = None
    _attempts: int = 0
    _profile_times: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _cp: _Station | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.evses = {e.id: Evse(e.id, e.ratings) for e in s.evse_list()}
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
                "DC,DC_BPT" if any(e.ratings.discharge_a > 0 for e in s.evse_list())
                else "DC", False),
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): (str(PERIODS_PER_SCHEDULE), False),
            ("SmartChargingCtrlr", "ProfileStackLevel"): (str(PROFILE_STACK_LEVEL), False),
            # A (re)connect always resends every connector's status: no threshold.
            ("OCPPCommCtrlr", "OfflineThreshold"): ("0", False),
        }
        if self.retry_wait_min_s < 0:
            self.retry_wait_min_s = s.reconnect_s
            self.retry_random_range_s = s.retry_random_range_s
            self.retry_repeat_times = s.retry_repeat_times
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
        evse = self.evses.get(evse_id)
        if evse_id != 0 and evse is None:
            return _rejected("UnknownEvse", f"EVSE {evse_id}")
        profile = parse_profile(raw, now, evse.transaction_id if evse else None)
        if isinstance(profile, Rejection):
            self.log.append(f"profile rejected: {profile.reason_code}: {profile.info}",
                            event="refused")
            return _rejected(profile.reason_code, profile.info)
        if evse_id == 0 and profile.purpose == "TxProfile":
            return _rejected("InvalidValue", "a TxProfile needs an EVSE")
        if evse_id != 0 and profile.purpose.startswith("ChargingStation"):
            # K01: the station's maximum and external constraints are the station's.
            return _rejected("InvalidValue", f"a {profile.purpose} is set on evseId 0")
        if len(profile.periods) > PERIODS_PER_SCHEDULE or \
                profile.stack_level > PROFILE_STACK_LEVEL:
            why = (f"{len(profile.periods)} periods (at most {PERIODS_PER_SCHEDULE}) or stack "
                   f"level {profile.stack_level} (at most {PROFILE_STACK_LEVEL})")
            self.log.append(f"profile rejected: InvalidValue: {why}", event="refused")
            return _rejected("InvalidValue", why)
        ratings = [evse.ratings] if evse else [e.ratings for e in self.evses.values()]
        beyond = next((why for q in profile.periods for r in ratings
                       if (why := setpoint_problem(q.setpoint, profile.unit, r))), "")
        if beyond:
            self.log.append(f"profile rejected: InvalidValue: {beyond}", event="refused")
            return _rejected("InvalidValue", beyond)
        times.append(now)
        (evse.store if evse else self.store).set(profile)
        return call_result.SetChargingProfile(status="Accepted")

    def targets(self, evse_id: int | None) -> list[Evse]:
        """The EVSEs a request names: one, or (None or 0) every one; [] for an unknown."""
        if not evse_id:
            return list(self.evses.values())
        evse = self.evses.get(evse_id)
        return [evse] if evse is not None else []

    def evse_of(self, transaction_id: str) -> Evse | None:
        return next((e for e in self.evses.values()
                     if e.transaction_id is not None and e.transaction_id == transaction_id),
                    None)

    def store_holding(self, profile_id: int) -> ProfileStore | None:
        for store in (self.store, *(e.store for e in self.evses.values())):
            if profile_id in store.profiles:
                return store
        return None

    def clear_profiles(self, profile_id: int | None, evse_id: int | None,
                       purpose: str | None, stack_level: int | None) -> bool:
        stores = [self.store] if evse_id == 0 else \
            [e.store for e in self.targets(evse_id)] if evse_id else \
            [self.store, *(e.store for e in self.evses.values())]
        found = False
        for store in stores:
            found = store.clear(profile_id, purpose, stack_level) or found
        return found

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
                            "rejected", event="refused")
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

    # ---- GetLog (N01) ----------------------------------------------------------------

    def get_log(self, log_type: str, request_id: int, params: dict[str, Any],
                retries: int | None, retry_interval: int | None) -> call_result.GetLog:
        location = str(params.get("remote_location", ""))
        why = unsupported(location) if self.log_builder is not None \
            else "this station builds no logs"
        if why:
            self.log.append(f"GetLog {request_id} rejected: {why}", event="refused")
            return call_result.GetLog(status="Rejected", status_info=StatusInfoType(
                "UnsupportedProtocol" if self.log_builder else "NotSupported", why[:512]))
        canceled = self._upload is not None and not self._upload.done()
        if canceled and self._upload is not None:
            self._upload.cancel()
        filename = f"{self.settings.station_id}-{log_type}-{request_id}.tar.gz"
        self._upload = asyncio.create_task(self._upload_log(
            log_type, request_id, target_url(location, filename),
            timestamp(params.get("oldest_timestamp")), timestamp(params.get("latest_timestamp")),
            DEFAULT_RETRIES if retries is None else max(retries, 0),
            DEFAULT_RETRY_INTERVAL_S if retry_interval is None else max(retry_interval, 0)))
        return call_result.GetLog(status="AcceptedCanceled" if canceled else "Accepted",
                                  filename=filename)

    async def _upload_log(self, log_type: str, request_id: int, url: str, oldest: float | None,
                          latest: float | None, retries: int, interval: float) -> None:
        assert self.log_builder is not None
        await self._log_status("Uploading", request_id)
        try:
            path = await self.log_builder(log_type, oldest, latest)
        except Exception as exc:  # the archive could not be built: said, not raised
            await self._log_status("UploadFailure", request_id, f"archive: {exc}")
            return
        why = ""
        for attempt in range(retries + 1):
            why = await asyncio.to_thread(put, url, path, self.settings.ca_file)
            if not why:
                await self._log_status("Uploaded", request_id)
                return
            self.log.append(f"GetLog {request_id}: upload {attempt + 1} to {url} failed: {why}")
            if attempt < retries:
                await asyncio.sleep(interval)
        await self._log_status("UploadFailure", request_id, why)

    async def _log_status(self, status: str, request_id: int, info: str = "") -> None:
        self.uploads.append((request_id, status))
        cp = self._cp
        if cp is None or not self.online:
            self.log.append(f"LogStatusNotification {status} ({request_id}) not sent: offline")
            return
        try:
            await cp.call(call.LogStatusNotification(
                status=status, request_id=request_id,
                status_info=StatusInfoType("UploadFailure", info[:512]) if info else None))
        except Exception as exc:  # the link dropped meanwhile
            self.log.append(f"LogStatusNotification {status} ({request_id}) not sent: {exc}")

    def backoff_s(self, rand: Callable[[], float] = random.random) -> float:
        """The wait before the next connection attempt (OCPPCommCtrlr RetryBackOff*): the
        minimum, doubled per failed attempt up to RepeatTimes, plus a random part of up to
        RandomRange. Counts the attempt."""
        doubled = self.retry_wait_min_s * float(2 ** min(self._attempts,
                                                           self.retry_repeat_times))
        self._attempts += 1
        return float(doubled + rand() * self.retry_random_range_s)

    # ---- what the pile takes from it ------------------------------------------------------

    def _offline_s(self, now: float) -> float:
        return now - self.offline_since if self.offline_since is not None else 0.0

    def station_offers(self) -> list[Offer]:
        """The station's limits (evseId 0: ChargingStationMaxProfile, ExternalConstraints):
        the pile's, shared among its guns (agent/core/pile_split.py)."""
        now = self.wall()
        return [o for o in self.store.offers(now, self._offline_s(now)) if o.source != "ocpp:tx"]

    def evse_offers(self, evse_id: int) -> list[Offer]:
        """One EVSE's own: its TxProfile or TxDefaultProfile (else the station's
        TxDefaultProfile), and no discharge where the central system allows none."""
        now, evse = self.wall(), self.evses[evse_id]
        offline_s = self._offline_s(now)
        out = [o for o in evse.store.offers(now, offline_s) if o.source == "ocpp:tx"] or \
            [o for o in self.store.offers(now, offline_s) if o.source == "ocpp:tx"]
        if "DC_BPT" not in evse.allowed_transfer:
            # NotifyAllowedEnergyTransfer without bidirectional DC: no discharge offer.
            out.append(Offer("ocpp:allowed", "A", now + 60.0, None, math.inf, 0.0))
        return out

    def offers(self) -> list[Offer]:
        """A one-EVSE station's offers: the station's and its EVSE's."""
        return [*self.station_offers(), *self.evse_offers(next(iter(self.evses)))]

    @property
    def requests(self) -> list[Request]:
        """The first EVSE's requests (a one-EVSE station)."""
        return self.evses[next(iter(self.evses))].requests

    @property
    def transaction_id(self) -> str | None:
        return self.evses[next(iter(self.evses))].transaction_id

    @property
    def allowed_transfer(self) -> tuple[str, ...]:
        return self.evses[next(iter(self.evses))].allowed_transfer

    def drain_requests(self, evse_id: int | None = None) -> list[Request]:
        evse = self.evses[evse_id if evse_id is not None else next(iter(self.evses))]
        out, evse.requests = evse.requests, []
        return out

    # ---- authorisation -----------------------------------------------------------------

    async def authorize(self, id_token: str, kind: str = "ISO14443") -> bool:
        """Authorize online (C01); the answer is cached (C10) and used while offline.
        The answer's allowedEnergyTransfer says whether this driver may discharge (Q01)."""
        cp = self._cp
        if cp is not None and self.online:
            try:
                r = await within(cp.call(call.Authorize(
                    id_token={"id_token": id_token, "type": kind})), 10.0)
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException):
                r = None
            if r is not None:
                ok = bool(r.id_token_info["status"] == "Accepted")
                self.auth_cache[id_token] = ok
                if ok and r.allowed_energy_transfer:
                    for evse in self.evses.values():
                        evse.allowed_transfer = tuple(r.allowed_energy_transfer)
                return ok
        return self.auth_cache.get(id_token, False)

    # ---- transactions: through the durable outbox ----------------------------------------

    def transaction_event(self, event_type: str, trigger: str, transaction_id: str,
                          meter: list[SampledValue] | None = None, stopped_reason: str = "",
                          charging_state: str | None = None,
                          evse_id: int | None = None) -> int:
        now = self.wall()
        evse = self.evses[evse_id if evse_id is not None else next(iter(self.evses))]
        tx: dict[str, Any] = {"transaction_id": transaction_id}
        if charging_state:
            tx["charging_state"] = charging_state
        if stopped_reason:
            tx["stopped_reason"] = stopped_reason
        payload: dict[str, Any] = {
            "event_type": event_type, "timestamp": iso(now), "trigger_reason": trigger,
            "transaction_info": tx, "offline": not self.online,
            "evse": {"id": evse.id, "connector_id": 1},
        }
        if meter:
            payload["meter_value"] = [{"timestamp": iso(now), "sampled_value": [
                {"value": round(v.value, 3), "measurand": v.measurand, "context": v.context,
                 "unit_of_measure": {"unit": v.unit}} for v in meter]}]
        if event_type == "Started":
            evse.transaction_id = transaction_id
            evse.store.transaction_started = now  # Relative profiles count from here
        seq = self.outbox.enqueue(transaction_id, payload, now)
        if event_type == "Ended":
            evse.transaction_id = None
            evse.store.end_transaction()
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
                        await reap(reader, errors_too=True)
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
                self.log.append(f"link: {type(exc).__name__}: {exc}", event="link_lost")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a central system's bad answer (one its schema
                # refuses) ends this connection, never the client: it reconnects
                self.log.append(f"link: the central system's answer broke the session: "
                                f"{type(exc).__name__}: {exc}", event="link_lost")
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
                                  additional_headers=headers, ssl=context, open_timeout=5,
                                  close_timeout=CLOSE_TIMEOUT_S)

    async def _session(self, cp: _Station, reader: asyncio.Task[None]) -> None:
        if not self.booted:
            # B01: once per start of the station; a reconnect does not boot again.
            boot = await cp.call(call.BootNotification(
                charging_station=self._station_type(), reason="PowerUp"))
            if boot is None or boot.status != "Accepted":
                raise OSError(f"boot not accepted: {boot}")
            self.heartbeat_s = float(boot.interval or self.heartbeat_s)
            self.booted = True
        self.online, self.offline_since, self._attempts = True, None, 0
        self.log.append(f"link: online to {self.settings.url}", logging.INFO, event="link_up")
        for evse in self.evses.values():  # every connector's status on every (re)connect
            evse.status_due = True
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
            for evse in self.evses.values():
                if evse.needs is not None:
                    needs, evse.needs = evse.needs, None
                    await cp.call(call.NotifyEVChargingNeeds(evse_id=evse.id,
                                                             charging_needs=needs))
            if any(e.status_due for e in self.evses.values()):
                await self._status(cp)
            if self.wall() >= next_beat:
                await cp.call(call.Heartbeat())
                next_beat = self.wall() + self.heartbeat_s
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wake.wait(), 0.2)
        raise OSError("connection closed")

    def _station_type(self) -> ChargingStationType:
        s = self.settings
        return ChargingStationType(model=s.model, vendor_name=s.vendor,
                                   serial_number=(s.serial_number or s.station_id)[:25],
                                   firmware_version=s.firmware_version[:50])

    async def _status(self, cp: _Station) -> None:
        """A StatusNotification for each connector whose status is due."""
        for evse in self.evses.values():
            if evse.status_due:
                evse.status_due = False
                await cp.call(call.StatusNotification(
                    timestamp=iso(self.wall()), connector_status=evse.connector_status,
                    evse_id=evse.id, connector_id=1))

    async def _flush(self, cp: _Station) -> None:
        for row_id, payload in self.outbox.pending():
            result = await cp.call(call.TransactionEvent(**payload))
            if result is None:
                raise OSError("TransactionEvent answered with an error")
            self.outbox.mark_sent(row_id, self.wall())

    def ev_charging_needs(self, needs: dict[str, Any], evse_id: int | None = None) -> None:
        """Queue a NotifyEVChargingNeeds (snake_case ChargingNeedsType), sent when online."""
        self.evses[evse_id if evse_id is not None else next(iter(self.evses))].needs = needs
        self._wake.set()

    def connector_status(self, evse_id: int | None = None) -> str:
        return self.evses[evse_id if evse_id is not None else next(iter(self.evses))
                          ].connector_status

    def set_connector_status(self, status: str, evse_id: int | None = None) -> None:
        evse = self.evses[evse_id if evse_id is not None else next(iter(self.evses))]
        if status != evse.connector_status:
            evse.connector_status = status
            evse.status_due = True
            self._wake.set()


def _rejected(code: str, info: str) -> call_result.SetChargingProfile:
    return call_result.SetChargingProfile(status="Rejected",
                                          status_info=StatusInfoType(code, info[:1024]))
