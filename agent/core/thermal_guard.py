"""Thermal supervision: temperature readings in, a current fraction and faults out.

- Piecewise-linear derating per sensor kind (connector, cable, module), minimum taken.
- Hysteresis: an effective temperature follows a rise at once and a fall only once the
  reading is more than `hysteresis_k` below it. The limit is the curve at the effective
  temperature, so it never rises while temperature rises, and noise smaller than the
  hysteresis cannot make it toggle.
- Rate of rise above a limit caps the fraction for a hold time (GB/T 18487.1-2023
  C.7.9.2: intervene on temperature *and* on its rate of rise).
- Trip at or above `trip_c`: fraction 0 and a latched over-temperature fault.
- Plausibility: NaN, open or shorted PT1000, a reading stuck while current flows, the
  two connector sensors disagreeing, or a sensor falling silent are faults.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from agent.core.events import TemperatureReading


@dataclass(frozen=True, slots=True)
class DeratingCurve:
    points: tuple[tuple[float, float], ...]  # (temperature °C, fraction of rated current)

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError("a derating curve needs at least two points")
        for i, (t, f) in enumerate(self.points):
            if not (math.isfinite(t) and math.isfinite(f) and 0.0 <= f <= 1.0):
                raise ValueError(f"point {i} ({t}, {f}): need finite °C and 0 <= fraction <= 1")
            if i and not (t > self.points[i - 1][0] and f <= self.points[i - 1][1]):
                raise ValueError(f"point {i} ({t}, {f}): temperatures must rise and fractions "
                                 "must not")

    def fraction(self, temperature_c: float) -> float:
        pts = self.points
        if temperature_c <= pts[0][0]:
            return pts[0][1]
        for (t0, f0), (t1, f1) in itertools.pairwise(pts):
            if temperature_c <= t1:
                return f0 + (f1 - f0) * (temperature_c - t0) / (t1 - t0)
        return pts[-1][1]


@dataclass(frozen=True, slots=True)
class SensorLimits:
    curve: DeratingCurve
    trip_c: float
    hysteresis_k: float = 3.0  # 2-5 K (OpenEVSE uses >= 2 °C between levels)
    rate_limit_k_per_s: float = 0.5
    rate_fraction: float = 0.5  # the non-cooled rating, as a fraction (GB 44263 §8.1.9)
    rate_hold_s: float = 30.0


# Connector: full current to 80 °C, none at 90 °C, trip at 105 °C (GB 44263-2024 §6.2.2:
# derate or stop before T1 reaches 105 °C; GB/T 18487.1-2023 Table C.14: 90 °C).
CONNECTOR = SensorLimits(DeratingCurve(((80.0, 1.0), (90.0, 0.0))), trip_c=105.0)
# Cable: 90 °C, i.e. 40 °C ambient + 50 K rise (GB/T 18487.1-2023 C.7.9.2).
CABLE = SensorLimits(DeratingCurve(((80.0, 1.0), (90.0, 0.0))), trip_c=95.0)
# Power module: full to 55 °C, 50 % at 65 °C, 0 at 75 °C (State Grid / Sandi module specs).
MODULE = SensorLimits(DeratingCurve(((55.0, 1.0), (65.0, 0.5), (75.0, 0.0))), trip_c=80.0)


@dataclass(frozen=True, slots=True)
class ThermalConfig:
    kinds: tuple[tuple[str, SensorLimits], ...] = (
        ("connector", CONNECTOR), ("cable", CABLE), ("module", MODULE))
    # PT1000 (IEC 60751): 1000 ohm at 0 °C; below ~600 ohm (-100 °C) is a short, above
    # ~4 kohm (850 °C) an open circuit.
    short_ohm: float = 600.0
    open_ohm: float = 4000.0
    stuck_s: float = 120.0  # bit-identical for this long while current flows
    stuck_min_current_a: float = 50.0
    disagreement_k: float = 15.0  # DC+ and DC- pins of one gun
    disagreement_s: float = 5.0
    silent_s: float = 2.0  # I/O board polled every 100 ms


@dataclass(frozen=True, slots=True)
class ThermalFault:
    sensor: str
    kind: str  # over_temperature | unreadable | open | short | stuck | disagreement | silent
    detail: str
    latched: bool


@dataclass(frozen=True, slots=True)
class ThermalVerdict:
    limit_fraction: float
    bound_sensor: str | None
    faults: tuple[ThermalFault, ...]


@dataclass
class _Sensor:
    limits: SensorLimits
    value: float = math.nan
    effective: float = -math.inf
    seen_at: float = 0.0
    same_since: float = 0.0
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    rate_capped_until: float = -math.inf
    fault: ThermalFault | None = None


class ThermalSupervisor:
    def __init__(self, config: ThermalConfig | None = None) -> None:
        self.config = config or ThermalConfig()
        self._sensors: dict[str, _Sensor] = {}
        self.latched: dict[str, ThermalFault] = {}
        self._disagree_since: float | None = None

    def _limits(self, sensor: str) -> SensorLimits | None:
        return next((lim for kind, lim in self.config.kinds if kind in sensor), None)

    def update(self, reading: TemperatureReading, current_a: float) -> None:
        limits = self._limits(reading.sensor)
        if limits is None:
            return  # ambient and unknown sensors are informational
        s = self._sensors.setdefault(reading.sensor, _Sensor(limits, seen_at=reading.t,
                                                             same_since=reading.t))
        c, t, value = self.config, reading.t, reading.temperature_c
        s.fault = None
        if reading.raw_ohm is not None and reading.raw_ohm > c.open_ohm:
            s.fault = ThermalFault(reading.sensor, "open", f"{reading.raw_ohm:.0f} ohm", True)
        elif reading.raw_ohm is not None and reading.raw_ohm < c.short_ohm:
            s.fault = ThermalFault(reading.sensor, "short", f"{reading.raw_ohm:.0f} ohm", True)
        elif not math.isfinite(value):
            s.fault = ThermalFault(reading.sensor, "unreadable", "no valid °C", True)
        s.seen_at = t
        if s.fault is not None:
            return
        if value != s.value or abs(current_a) < c.stuck_min_current_a:
            s.same_since = t
        s.value = value
        hyst = limits.hysteresis_k
        if value > s.effective:
            s.effective = value
        elif value < s.effective - hyst:
            s.effective = value + hyst
        s.history.append((t, value))
        # The oldest reading of the last 10 s (the one just appended, at the latest).
        t0, v0 = next((tt, v) for tt, v in s.history if t - tt <= 10.0)
        if t - t0 >= 2.0 and (value - v0) / (t - t0) > limits.rate_limit_k_per_s:
            s.rate_capped_until = t + limits.rate_hold_s
        if reading.sensor in ("connector_dc_plus", "connector_dc_minus"):
            self._track_disagreement(t)
        if value >= limits.trip_c:
            self.latched.setdefault(reading.sensor, ThermalFault(
                reading.sensor, "over_temperature", f"{value:.1f} °C >= trip {limits.trip_c} °C",
                True))

    def evaluate(self, now: float, current_a: float) -> ThermalVerdict:
        c = self.config
        faults: list[ThermalFault] = list(self.latched.values())
        fraction, bound = 1.0, None
        for name, s in self._sensors.items():
            if s.fault is not None:
                faults.append(s.fault)
                fraction, bound = 0.0, name
                continue
            if now - s.seen_at > c.silent_s:
                quiet = now - s.seen_at
                faults.append(ThermalFault(name, "silent", f"no reading for {quiet:.1f} s", False))
                fraction, bound = 0.0, name
                continue
            if now - s.same_since > c.stuck_s:
                faults.append(ThermalFault(name, "stuck", f"unchanged for {c.stuck_s:.0f} s "
                                           "while current flows", False))
            f = s.limits.curve.fraction(s.effective)
            if now < s.rate_capped_until:
                f = min(f, s.limits.rate_fraction)
            if f < fraction:
                fraction, bound = f, name
        faults += self._disagreement(now)
        if self.latched:
            fraction, bound = 0.0, next(iter(self.latched))
        return ThermalVerdict(max(fraction, 0.0), bound, tuple(faults))

    def next_change(self, now: float) -> float:
        """The earliest instant after `now` at which `evaluate` could give another verdict
        with no new reading: a sensor going silent or stuck, a rate cap ending, a
        disagreement lasting long enough. inf when none is pending."""
        c, out = self.config, math.inf
        for s in self._sensors.values():
            if s.fault is not None:
                continue
            for at in (s.seen_at + c.silent_s, s.same_since + c.stuck_s, s.rate_capped_until):
                if at >= now:
                    out = min(out, at)
        if self._disagree_since is not None:
            at = self._disagree_since + c.disagreement_s
            if at >= now:
                out = min(out, at)
        return out

    def _track_disagreement(self, t: float) -> None:
        plus = self._sensors.get("connector_dc_plus")
        minus = self._sensors.get("connector_dc_minus")
        apart = (plus is not None and minus is not None and not plus.fault and not minus.fault
                 and abs(plus.value - minus.value) > self.config.disagreement_k)
        if not apart:
            self._disagree_since = None
        elif self._disagree_since is None:
            self._disagree_since = t

    def _disagreement(self, now: float) -> list[ThermalFault]:
        since = self._disagree_since
        if since is None or now - since < self.config.disagreement_s:
            return []
        plus, minus = self._sensors["connector_dc_plus"], self._sensors["connector_dc_minus"]
        return [ThermalFault("connector", "disagreement",
                             f"DC+ {plus.value:.1f} °C vs DC- {minus.value:.1f} °C", False)]

    def clear(self, now: float) -> bool:
        """Clear latched trips whose sensor has cooled below trip - hysteresis."""
        for name in list(self.latched):
            s = self._sensors.get(name)
            if s is not None and s.value < s.limits.trip_c - s.limits.hysteresis_k:
                del self.latched[name]
        return not self.latched
