"""The upstream setpoint arbiter of one gun: many sources in, one limit per direction out.

Sources (OCPP 2.1 charging profiles, the site EMS / VPP over SunSpec Modbus, a local
schedule) send offers: a signed setpoint, a charge limit, a discharge limit, each valid
until its expiry. Frequency response adds a power offset from the measured grid frequency.
This module vets each offer (invariant I13), keeps one per source, and gives the current
arbiter one candidate per direction (`limit_a`). It decides no current itself.

The rules, the same for every source:
- The setpoint comes from the live source of the highest priority (the latest offer of
  equal priority). Limits bind from every live source: an EMS that forbids discharge
  forbids it whatever the central system asks.
- A setpoint beyond its own offer's limits is held to them, like any source's (OCPP's
  rule that such a profile is rejected is applied at the OCPP edge, drivers/ocpp).
- A charge setpoint is a ceiling (the vehicle's demand still decides below it); a
  discharge setpoint is the current asked for (ISO 15118-20 Dynamic BPT: the charger picks
  within the vehicle's limits).
- No live source: charging falls back to the configured limit, discharge to 0 A. Upstream
  silent never sustains a discharge (I7); frequency response then only lowers charging.
- Watts become amps at the voltage the caller gives, never below the gun's minimum
  voltage: limits at a voltage no lower than the real one (at a lower real voltage the
  power is lower still, so a power limit holds), a setpoint at the measured voltage
  (a target: converted at a safe-side voltage, a 50 kW dispatch gave 48.4 kW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.core.events import DroopSet, UpstreamCleared, UpstreamLimit, UpstreamSetpoint
from agent.core.frequency_watt import FrequencyDroop, FreqWattCurve
from agent.core.ratings import GunRatings


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """How upstream offers are vetted (invariant I13) and ranked."""

    # OCPP 2.1 answers RateLimitExceeded to profiles sent too often; one per second per
    # source is well inside AGC cadence (a few seconds) and keeps the module from chattering.
    min_interval_s: float = 1.0
    # An offer that claims validity longer than this is treated as out of range:
    # upstream must refresh (OCPP 2.1 dynUpdateInterval / maxOfflineDuration).
    max_validity_s: float = 900.0
    # An offer that reaches us later than this after it was issued is stale.
    max_delivery_age_s: float = 5.0
    # After expiry (upstream offline past its validity) charging falls back to this
    # limit; discharge always falls back to 0 A (never sustained discharge, I7).
    fallback_charge_a: float = math.inf
    # Priority by source name (the part before ':'); unknown sources rank 0.
    priorities: tuple[tuple[str, int], ...] = (
        ("ocpp", 30), ("ems", 20), ("schedule", 10))
    # Local frequency response (SunSpec model 711); None: off.
    droop: FrequencyDroop | None = None
    # A frequency reading older than this gives no response (GB/T 40595-2021: act within
    # 1 s; a reading older than that describes another grid state).
    max_frequency_age_s: float = 1.0

    def priority(self, source: str) -> int:
        return dict(self.priorities).get(source.split(":", 1)[0], 0)


@dataclass(frozen=True, slots=True)
class SetpointRatings:
    """What a gun can do, per direction, in each unit an upstream setpoint comes in. The
    arbiter refuses a setpoint beyond it, and so do the edges (OCPP Rejected, SunSpec
    exception 03): upstream hears 'no' for what the station will not do (issue 21)."""

    charge_a: float = math.inf
    charge_w: float = math.inf
    discharge_a: float = math.inf  # 0: a charge-only gun
    discharge_w: float = math.inf


def setpoint_ratings(r: GunRatings) -> SetpointRatings:
    return SetpointRatings(r.max_current_a, r.max_power_w, r.max_discharge_current_a,
                           r.max_discharge_power_w)


def pile_ratings(guns: Sequence[GunRatings]) -> SetpointRatings:
    """A pile-level setpoint (the EMS's one DER, OCPP's evseId 0) is shared among the guns
    (agent/core/pile_split.py): beyond all of them together it is refused."""
    return SetpointRatings(sum(r.max_current_a for r in guns), sum(r.max_power_w for r in guns),
                           sum(r.max_discharge_current_a for r in guns),
                           sum(r.max_discharge_power_w for r in guns))


def setpoint_problem(setpoint: float | None, unit: str, ratings: SetpointRatings) -> str:
    """Why a signed setpoint (+ = into the vehicle) is beyond the gun, or ""."""
    if setpoint is None:
        return ""
    if not math.isfinite(setpoint):
        return "not a finite number"
    if unit not in ("A", "W"):
        return f"unit {unit!r} is neither A nor W"
    if setpoint >= 0:
        rated = ratings.charge_a if unit == "A" else ratings.charge_w
        what = "charge"
    else:
        rated = ratings.discharge_a if unit == "A" else ratings.discharge_w
        what = "discharge"
    if abs(setpoint) > rated:
        return f"{what} setpoint {abs(setpoint):g} {unit} above the gun's rated {what} " \
               f"{rated:g} {unit}"
    return ""


@dataclass(frozen=True, slots=True)
class UpstreamDecision:
    accepted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Offer:
    """An accepted offer as it came, with its rank, when it was taken, and its curve built
    once (not on every control step)."""

    sp: UpstreamSetpoint
    priority: int
    accepted_at: float
    curve: FreqWattCurve | None


@dataclass
class UpstreamArbiter:
    policy: UpstreamPolicy
    rated_current_a: float
    rated_power_w: float
    min_voltage_v: float
    # Per direction (None: rated_current_a / rated_power_w both ways).
    ratings: SetpointRatings | None = None
    offers: dict[str, _Offer] = field(default_factory=dict)
    frequency: tuple[float, float] | None = None  # (Hz, sampled at)
    droop: FrequencyDroop | None = None  # the policy's, until upstream sets another

    def __post_init__(self) -> None:
        self.droop = self.policy.droop
        if self.ratings is None:
            self.ratings = SetpointRatings(self.rated_current_a, self.rated_power_w,
                                           self.rated_current_a, self.rated_power_w)

    # ---- input --------------------------------------------------------------------

    def offer(self, event: UpstreamLimit | UpstreamSetpoint, now: float) -> UpstreamDecision:
        sp = _as_setpoint(event)
        problem = self._problem(sp, now)
        if problem:
            return UpstreamDecision(False, problem)
        curve = FreqWattCurve(sp.freq_watt_curve) if sp.freq_watt_curve else None
        self.offers[sp.source] = _Offer(sp, self.policy.priority(sp.source), now, curve)
        return UpstreamDecision(True, "accepted")

    def clear(self, event: UpstreamCleared) -> UpstreamDecision:
        if self.offers.pop(event.source, None) is None:
            return UpstreamDecision(False, "nothing to clear")
        return UpstreamDecision(True, "cleared")

    def set_droop(self, event: DroopSet) -> UpstreamDecision:
        """Upstream turns the droop on or off or retunes it; it keeps the rated power of
        the configured droop (or the gun's), so upstream never scales beyond the gun."""
        if not event.enabled:
            self.droop = None
            return UpstreamDecision(True, "frequency droop off")
        rated = self.policy.droop.rated_w if self.policy.droop else self.rated_power_w
        droop = FrequencyDroop(rated_w=rated, dead_band_hz=event.dead_band_hz,
                               droop=event.droop)
        problems = droop.problems()
        if problems:
            return UpstreamDecision(False, "; ".join(problems))
        self.droop = droop
        return UpstreamDecision(True, f"frequency droop on: dead band {event.dead_band_hz} Hz, "
                                      f"droop {event.droop * 100:.1f} %")

    def on_frequency(self, hz: float, sampled_at: float) -> None:
        self.frequency = (hz, sampled_at)

    def _problem(self, sp: UpstreamSetpoint, now: float) -> str:
        p = self.policy
        numbers = (sp.t, sp.expires_at, sp.baseline,
                   *(() if sp.setpoint is None else (sp.setpoint,)))
        if not all(math.isfinite(x) for x in numbers) or math.isnan(sp.charge_limit) \
                or math.isnan(sp.discharge_limit):
            return "not a finite number"
        if sp.unit not in ("A", "W"):
            return f"unit {sp.unit!r} is neither A nor W"
        rated = self.rated_current_a if sp.unit == "A" else self.rated_power_w
        assert self.ratings is not None
        beyond = setpoint_problem(sp.setpoint, sp.unit, self.ratings)
        if beyond:
            return beyond
        if sp.charge_limit < 0 or sp.discharge_limit < 0:
            return "a limit below 0 (limits are magnitudes)"
        if sp.freq_watt_curve:
            problems = FreqWattCurve(sp.freq_watt_curve).problems()
            if problems:
                return "; ".join(problems)
            if any(abs(w) + abs(sp.baseline) > rated for _hz, w in sp.freq_watt_curve):
                return f"frequency-watt curve beyond the rated {rated} {sp.unit}"
        if now - sp.t > p.max_delivery_age_s or sp.expires_at <= now:
            return "stale: issued too long ago or already expired"
        if sp.expires_at - now > p.max_validity_s:
            return f"validity over {p.max_validity_s} s"
        last = self.offers.get(sp.source)
        if last is not None and now - last.accepted_at < p.min_interval_s:
            return "too frequent (rate limit)"
        return ""

    # ---- output -------------------------------------------------------------------

    def next_change(self, now: float) -> float:
        """The earliest instant after `now` at which `limit_a` could change with no new
        input: an offer expiring, the frequency reading growing too old. inf if none."""
        times = [o.sp.expires_at for o in self.offers.values()]
        if self.frequency is not None:
            times.append(self.frequency[1] + self.policy.max_frequency_age_s)
        return min((at for at in times if math.isfinite(at) and at >= now), default=math.inf)

    def live(self, now: float) -> list[_Offer]:
        return [o for o in self.offers.values() if now < o.sp.expires_at]

    def leader(self, now: float) -> _Offer | None:
        """The live source whose setpoint counts (highest priority, then the latest)."""
        steering = [o for o in self.live(now) if o.sp.setpoint is not None or o.curve]
        return max(steering, key=lambda o: (o.priority, o.accepted_at), default=None)

    def limit_a(self, now: float, charging: bool, volts: float,
                target_volts: float | None = None) -> tuple[float, bool]:
        """(the magnitude allowed in this direction, whether the fallback applies).
        volts: for limits, no lower than the real voltage; target_volts: the measured
        voltage, for setpoints and the frequency offset (default: volts)."""
        live = self.live(now)
        v = self._volts(volts)
        tv = v if target_volts is None else self._volts(target_volts)
        offset = self._droop_a(now, tv)
        if not live:
            if charging:
                return max(self.policy.fallback_charge_a + min(offset, 0.0), 0.0), True
            return 0.0, True
        charge = min(_amps(o.sp.charge_limit, o.sp.unit, v) for o in live)
        discharge = min(_amps(o.sp.discharge_limit, o.sp.unit, v) for o in live)
        lead = self.leader(now)
        if lead is None:
            return (charge if charging else 0.0), False
        target = self._target_a(lead, now, tv)
        signed = target + (0.0 if lead.curve else offset)
        allowed = max(signed, 0.0) if charging else max(-signed, 0.0)
        return min(allowed, charge if charging else discharge), False

    def _volts(self, volts: float) -> float:
        return max(volts, self.min_voltage_v) if math.isfinite(volts) else self.min_voltage_v

    def _target_a(self, o: _Offer, now: float, volts: float) -> float:
        if o.curve is None:
            return _amps(o.sp.setpoint or 0.0, o.sp.unit, volts)
        # OCPP 2.1 LocalFrequency: v2xBaseline plus the curve at the measured frequency;
        # with no usable frequency, no response: the baseline alone.
        hz = self._frequency(now)
        power = o.curve.power_at(hz) if hz is not None else None
        return _amps(o.sp.baseline + (power or 0.0), o.sp.unit, volts)

    def _frequency(self, now: float) -> float | None:
        f = self.frequency
        if f is None or now - f[1] > self.policy.max_frequency_age_s:
            return None
        return f[0]

    def _droop_a(self, now: float, volts: float) -> float:
        droop, hz = self.droop, self._frequency(now)
        if droop is None or hz is None:
            return 0.0
        watts = droop.offset_w(hz)
        return 0.0 if watts is None else watts / volts


def _amps(value: float, unit: str, volts: float) -> float:
    return value if unit == "A" else value / volts


def _as_setpoint(event: UpstreamLimit | UpstreamSetpoint) -> UpstreamSetpoint:
    if isinstance(event, UpstreamSetpoint):
        return event
    # The plain limit: + a charge ceiling, - an authorised discharge of that magnitude.
    return UpstreamSetpoint(event.t, event.source, event.expires_at, setpoint=event.current_a)
