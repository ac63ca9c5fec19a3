"""OCPP 2.1 charging profiles (smart charging, V2X operation modes) -> upstream offers.
Sans-I/O: dicts in (the `ocpp` library's snake_case payloads), offers out; wall time as
epoch seconds.

What is checked on SetChargingProfile (rejected with status Rejected and a reasonCode):
- the schema-level sense: known purpose, kind, unit, mode; finite numbers; periods in
  order from 0; `dischargeLimit` <= 0 (OCPP's sign: + = charging);
- per operation mode, the fields it needs and the ones it forbids (Q §2.2: ChargingOnly
  needs a limit and no setpoint; CentralSetpoint/CentralFrequency a setpoint; Idle none of
  setpoint, limit, dischargeLimit (Q10.FR.01); LocalFrequency a v2xFreqWattCurve);
- a setpoint outside [dischargeLimit, limit] (V2X rule);
- a mode the purpose does not allow (`MODES_BY_PURPOSE`, [V]: to check against the
  spec's table);
- a TxProfile without a running transaction, or for another one;
- a profile already over when it arrives (validTo passed, an Absolute schedule ended): it
  would displace a live profile and never apply (issue 21).

`ProfileStore.offers` turns what is valid now into two offers for the core's upstream
arbiter: `ocpp:max` (ChargingStationMaxProfile and ExternalConstraints: limits only) and
`ocpp:tx` (the TxProfile, else the TxDefaultProfile, of the highest stack level: its
period's mode decides what it sets). A profile past its `maxOfflineDuration` while the
station is offline is not used; nothing here sustains a discharge on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

PURPOSES = ("ChargingStationMaxProfile", "ChargingStationExternalConstraints",
            "TxDefaultProfile", "TxProfile", "PriorityCharging", "LocalGeneration")
MODES = ("Idle", "ChargingOnly", "CentralSetpoint", "ExternalSetpoint", "ExternalLimits",
         "CentralFrequency", "LocalFrequency", "LocalLoadBalancing")
_LIMITS_ONLY = ("ChargingOnly", "ExternalLimits", "LocalLoadBalancing")
MODES_BY_PURPOSE: dict[str, tuple[str, ...]] = {
    "ChargingStationMaxProfile": _LIMITS_ONLY,
    "ChargingStationExternalConstraints": _LIMITS_ONLY,
    "TxDefaultProfile": MODES,
    "TxProfile": MODES,
    "PriorityCharging": ("ChargingOnly",),
    "LocalGeneration": ("ChargingOnly", "LocalLoadBalancing"),
}
# The offer's validity when nothing in the profile ends sooner: short, so that a profile
# cleared while the core is not told (a lost event) lapses on its own.
OFFER_VALIDITY_S = 60.0


@dataclass(frozen=True, slots=True)
class Rejection:
    reason_code: str  # OCPP StatusInfo.reasonCode
    info: str


@dataclass(frozen=True, slots=True)
class Period:
    start_s: int
    mode: str
    limit: float | None = None
    discharge_limit: float | None = None  # OCPP sign: <= 0
    setpoint: float | None = None
    baseline: float | None = None
    curve: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    id: int
    stack_level: int
    purpose: str
    kind: str
    unit: str
    periods: tuple[Period, ...]
    start: float | None = None  # epoch s; None: relative (transaction start, else receipt)
    duration_s: float | None = None
    valid_from: float = -math.inf
    valid_to: float = math.inf
    transaction_id: str | None = None
    max_offline_s: float | None = None
    received: float = 0.0


@dataclass(frozen=True, slots=True)
class Offer:
    """One source's offer in the agent's sign (+ = into the vehicle), valid until (epoch s)."""

    source: str
    unit: str
    valid_until: float
    setpoint: float | None = None
    charge_limit: float = math.inf
    discharge_limit: float = math.inf
    curve: tuple[tuple[float, float], ...] = ()
    baseline: float = 0.0
    mode: str = ""


def epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_profile(raw: Mapping[str, Any], received: float,
                  transaction_id: str | None) -> Profile | Rejection:
    """A SetChargingProfile's chargingProfile, checked as OCPP 2.1 asks."""
    try:
        return _parse(raw, received, transaction_id)
    except (KeyError, TypeError, ValueError) as exc:
        return Rejection("InvalidValue", f"malformed profile: {exc}")


def _parse(raw: Mapping[str, Any], received: float,
           transaction_id: str | None) -> Profile | Rejection:
    purpose, kind = str(raw["charging_profile_purpose"]), str(raw["charging_profile_kind"])
    if purpose not in PURPOSES:
        return Rejection("InvalidValue", f"unknown purpose {purpose}")
    schedules = raw["charging_schedule"]
    if not isinstance(schedules, list) or len(schedules) != 1:
        return Rejection("UnsupportedRequest", "one chargingSchedule per profile on a DC pile")
    sched = schedules[0]
    unit = str(sched["charging_rate_unit"])
    if unit not in ("A", "W"):
        return Rejection("InvalidValue", f"chargingRateUnit {unit}")
    tx = raw.get("transaction_id")
    if purpose == "TxProfile" and (transaction_id is None or tx != transaction_id):
        return Rejection("TxNotFound", "TxProfile for no running transaction of this EVSE")
    periods: list[Period] = []
    for p in sched["charging_schedule_period"]:
        period = _period(p)
        if isinstance(period, Rejection):
            return period
        if period.mode not in MODES_BY_PURPOSE[purpose]:
            return Rejection("InvalidValue",
                             f"operationMode {period.mode} not allowed for {purpose}")
        periods.append(period)
    starts = [p.start_s for p in periods]
    if not periods or starts[0] != 0 or starts != sorted(set(starts)):
        return Rejection("InvalidSchedule", "periods must start at 0 and increase")
    duration = sched.get("duration")
    valid_to = epoch(raw.get("valid_to")) or math.inf
    if valid_to <= received:
        # Accepted, it would displace a live profile of its purpose and stack level and
        # never apply: the gun would lose its limit (issue 21). K01: Rejected [V].
        return Rejection("InvalidValue", f"validTo {raw.get('valid_to')} already passed")
    start = epoch(sched.get("start_schedule")) if kind != "Dynamic" \
        else epoch(raw.get("dyn_update_time")) or received
    if kind == "Absolute" and start is not None and duration is not None \
            and start + float(duration) <= received:
        return Rejection("InvalidSchedule", "the schedule ended before it was received "
                                            f"(start {sched.get('start_schedule')}, "
                                            f"{duration} s)")
    return Profile(
        id=int(raw["id"]), stack_level=int(raw["stack_level"]), purpose=purpose, kind=kind,
        unit=unit, periods=tuple(periods),
        start=start, duration_s=float(duration) if duration is not None else None,
        valid_from=epoch(raw.get("valid_from")) or -math.inf, valid_to=valid_to,
        transaction_id=tx, received=received,
        max_offline_s=float(raw["max_offline_duration"])
        if raw.get("max_offline_duration") is not None else None)


def _number(x: object, name: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"{name} is not a finite number: {x!r}")
    return float(x)


def _period(p: Mapping[str, Any]) -> Period | Rejection:
    mode = str(p.get("operation_mode") or "ChargingOnly")
    if mode not in MODES:
        return Rejection("InvalidValue", f"unknown operationMode {mode}")
    limit = _number(p.get("limit"), "limit")
    dlimit = _number(p.get("discharge_limit"), "dischargeLimit")
    setpoint = _number(p.get("setpoint"), "setpoint")
    baseline = _number(p.get("v2x_baseline"), "v2xBaseline")
    curve = tuple((float(_number(q["frequency"], "frequency") or 0.0),
                   float(_number(q["power"], "power") or 0.0))
                  for q in p.get("v2x_freq_watt_curve") or ())
    if limit is not None and limit < 0:
        return Rejection("InvalidValue", "limit below 0")
    if dlimit is not None and dlimit > 0:
        return Rejection("InvalidValue", "dischargeLimit above 0 (OCPP: discharge is negative)")
    if mode == "Idle" and (setpoint is not None or limit is not None or dlimit is not None):
        return Rejection("InvalidValue", "Idle takes no setpoint, limit or dischargeLimit")
    if mode == "ChargingOnly" and (limit is None or setpoint is not None or dlimit):
        return Rejection("InvalidValue", "ChargingOnly needs a limit and no setpoint or "
                                         "dischargeLimit")
    if mode in ("CentralSetpoint", "CentralFrequency") and setpoint is None:
        return Rejection("InvalidValue", f"{mode} needs a setpoint")
    if mode == "LocalFrequency" and len(curve) < 2:
        return Rejection("InvalidValue", "LocalFrequency needs a v2xFreqWattCurve")
    if setpoint is not None and not (
            (dlimit if dlimit is not None else -math.inf) <= setpoint
            <= (limit if limit is not None else math.inf)):
        return Rejection("InvalidValue", "setpoint outside [dischargeLimit, limit]")
    return Period(int(p["start_period"]), mode, limit, dlimit, setpoint, baseline, curve)


@dataclass
class ProfileStore:
    profiles: dict[int, Profile] = field(default_factory=dict)
    transaction_started: float | None = None  # wall time of the running transaction

    def set(self, profile: Profile) -> None:
        # A profile with the same purpose and stack level replaces the older one (K01).
        for pid, old in list(self.profiles.items()):
            if old.purpose == profile.purpose and old.stack_level == profile.stack_level:
                del self.profiles[pid]
        self.profiles[profile.id] = profile

    def clear(self, profile_id: int | None = None, purpose: str | None = None,
              stack_level: int | None = None) -> bool:
        gone = [pid for pid, p in self.profiles.items()
                if (profile_id is None or pid == profile_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)]
        for pid in gone:
            del self.profiles[pid]
        return bool(gone)

    def update_dynamic(self, profile_id: int, update: Mapping[str, Any],
                       now: float) -> Rejection | None:
        p = self.profiles.get(profile_id)
        if p is None or p.kind != "Dynamic":
            return Rejection("UnknownProfile" if p is None else "InvalidValue",
                             "no Dynamic profile with that id")
        old = p.periods[0]
        raw = {"start_period": 0, "operation_mode": old.mode,
               "limit": update.get("limit", old.limit),
               "discharge_limit": update.get("discharge_limit", old.discharge_limit),
               "setpoint": update.get("setpoint", old.setpoint),
               "v2x_baseline": old.baseline,
               "v2x_freq_watt_curve": [{"frequency": f, "power": w} for f, w in old.curve]}
        try:
            period = _period(raw)
        except (TypeError, ValueError) as exc:
            return Rejection("InvalidValue", str(exc))
        if isinstance(period, Rejection):
            return period
        self.profiles[profile_id] = replace(p, periods=(period,), start=now)
        return None

    def end_transaction(self) -> None:
        # TxProfiles end with their transaction (K01).
        self.clear(purpose="TxProfile")
        self.transaction_started = None

    # ---- what is valid now -----------------------------------------------------------

    def _period_at(self, p: Profile, now: float,
                   offline_s: float) -> tuple[Period, float] | None:
        """(the period in force, when it ends) or None."""
        if not p.valid_from <= now < p.valid_to:
            return None
        if offline_s > 0 and p.max_offline_s is not None and offline_s > p.max_offline_s:
            return None
        start = p.start if p.start is not None else (self.transaction_started or p.received)
        if p.kind == "Recurring" and p.start is not None:
            day = 86400.0
            start = p.start + math.floor((now - p.start) / day) * day
        elapsed = now - start
        if elapsed < 0 or (p.duration_s is not None and elapsed >= p.duration_s):
            return None
        current = p.periods[0]
        ends = start + (p.duration_s if p.duration_s is not None else math.inf)
        for q in p.periods:
            if q.start_s <= elapsed:
                current = q
            else:
                ends = min(ends, start + q.start_s)
                break
        return current, min(ends, p.valid_to)

    def _top(self, purposes: Sequence[str], now: float,
             offline_s: float) -> tuple[Profile, Period, float] | None:
        for purpose in purposes:
            live = [(p, *found) for p in self.profiles.values()
                    if p.purpose == purpose
                    and (found := self._period_at(p, now, offline_s)) is not None]
            if live:
                return max(live, key=lambda x: x[0].stack_level)
        return None

    def offers(self, now: float, offline_s: float = 0.0) -> list[Offer]:
        out: list[Offer] = []
        cap = now + OFFER_VALIDITY_S
        for purpose in ("ChargingStationMaxProfile", "ChargingStationExternalConstraints"):
            top = self._top((purpose,), now, offline_s)
            if top is not None:
                p, q, ends = top
                out.append(Offer(f"ocpp:{'max' if 'Max' in purpose else 'external'}", p.unit,
                                 min(ends, cap), None, _mag(q.limit), _mag(q.discharge_limit),
                                 mode=q.mode))
        top = self._top(("TxProfile", "TxDefaultProfile"), now, offline_s)
        if top is not None:
            p, q, ends = top
            out.append(_tx_offer(p, q, min(ends, cap)))
        return out


def _tx_offer(p: Profile, q: Period, until: float) -> Offer:
    limit, dlimit = _mag(q.limit), _mag(q.discharge_limit)
    match q.mode:
        case "Idle":
            return Offer("ocpp:tx", p.unit, until, 0.0, 0.0, 0.0, mode=q.mode)
        case "ChargingOnly":
            return Offer("ocpp:tx", p.unit, until, None, limit, 0.0, mode=q.mode)
        case "CentralSetpoint" | "CentralFrequency":
            return Offer("ocpp:tx", p.unit, until, q.setpoint, limit, dlimit, mode=q.mode)
        case "LocalFrequency":
            return Offer("ocpp:tx", p.unit, until, None, limit, dlimit, q.curve,
                         q.baseline or 0.0, mode=q.mode)
        case _:  # ExternalSetpoint, ExternalLimits, LocalLoadBalancing: limits only here
            return Offer("ocpp:tx", p.unit, until, None, limit, dlimit, mode=q.mode)


def _mag(x: float | None) -> float:
    return math.inf if x is None else abs(x)

