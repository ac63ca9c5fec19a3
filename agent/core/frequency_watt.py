"""Frequency response: measured grid frequency -> a power setpoint (or offset), pure.

Two forms, both signed like the rest of the agent (+ W = into the vehicle, - W = to the
grid):

- `FreqWattCurve`: OCPP 2.1 `v2xFreqWattCurve` (LocalFrequency mode): points of
  (frequency Hz, power W), linearly interpolated between neighbours whatever their spacing,
  held flat beyond the first and last point. (EVerest's interpolation is right only for 1 Hz
  spacing; this one is checked for any spacing by tests/test_frequency_watt.py.)
- `FrequencyDroop`: a dead band and a droop around the nominal frequency (SunSpec model
  711 DERFreqDroop: DbOf/DbUf, KOf/KUf; IEEE 1547-2018 defaults 0.036 Hz and 5 %, see
  ../shared/reference/safety-limits.md). Under-frequency gives a negative offset (less
  charging, or discharge), over-frequency a positive one, never beyond the rated power.

Neither decides a current: the upstream setpoint arbiter turns their watts into a limit
the current arbiter takes as a candidate. An unusable frequency (NaN, out of the plausible
range) gives None: no response, and the caller keeps its fallback.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from dataclasses import dataclass

# A measurement outside this range is a broken sensor, not a grid: 50 Hz systems trip
# well inside it (GB/T 33593: stop outside 49.5-50.2 Hz at 380 V [unverified]).
PLAUSIBLE_HZ = (40.0, 70.0)


def _plausible(hz: float) -> bool:
    return math.isfinite(hz) and PLAUSIBLE_HZ[0] <= hz <= PLAUSIBLE_HZ[1]


@dataclass(frozen=True, slots=True)
class FreqWattCurve:
    points: tuple[tuple[float, float], ...]  # (Hz, W), as received

    def problems(self) -> list[str]:
        """What OCPP 2.1's curve must satisfy here (a CSMS sending less is rejected)."""
        if not 2 <= len(self.points) <= 20:
            return [f"v2xFreqWattCurve needs 2..20 points, got {len(self.points)}"]
        out = []
        for hz, watts in self.points:
            if not _plausible(hz):
                out.append(f"frequency {hz!r} Hz outside {PLAUSIBLE_HZ[0]}..{PLAUSIBLE_HZ[1]}")
            if not math.isfinite(watts):
                out.append(f"power {watts!r} W is not a number")
        freqs = sorted(hz for hz, _ in self.points)
        if any(b <= a for a, b in itertools.pairwise(freqs)):
            out.append("two points at the same frequency")
        return out

    def power_at(self, hz: float) -> float | None:
        """The curve's power at `hz` (None: unusable curve or frequency)."""
        if self.problems() or not _plausible(hz):
            return None
        pts = sorted(self.points)
        freqs = [f for f, _ in pts]
        if hz <= freqs[0]:
            return pts[0][1]
        if hz >= freqs[-1]:
            return pts[-1][1]
        i = bisect_right(freqs, hz)  # freqs[i - 1] <= hz < freqs[i]
        (f0, p0), (f1, p1) = pts[i - 1], pts[i]
        return p0 + (p1 - p0) * (hz - f0) / (f1 - f0)


@dataclass(frozen=True, slots=True)
class FrequencyDroop:
    rated_w: float  # the power a full droop asks for (this gun's share)
    nominal_hz: float = 50.0
    dead_band_hz: float = 0.036  # each side; IEEE 1547-2018 default [V] for GB/T 40595
    droop: float = 0.05  # per unit frequency change (of nominal) for a full rated change

    def problems(self) -> list[str]:
        out = []
        if not (math.isfinite(self.rated_w) and self.rated_w > 0):
            out.append(f"rated_w must be > 0, got {self.rated_w!r}")
        if not _plausible(self.nominal_hz):
            out.append(f"nominal_hz {self.nominal_hz!r} is not a grid frequency")
        if not (math.isfinite(self.dead_band_hz) and 0 <= self.dead_band_hz <= 1):
            out.append(f"dead_band_hz must be 0..1, got {self.dead_band_hz!r}")
        if not (math.isfinite(self.droop) and 0.01 <= self.droop <= 0.2):
            out.append(f"droop must be 0.01..0.2 (1-20 %), got {self.droop!r}")
        return out

    def offset_w(self, hz: float) -> float | None:
        """The power offset at `hz`: 0 inside the dead band, linear outside it, never
        beyond +-rated_w (None: unusable settings or frequency)."""
        if self.problems() or not _plausible(hz):
            return None
        deviation = hz - self.nominal_hz
        outside = math.copysign(max(abs(deviation) - self.dead_band_hz, 0.0), deviation)
        per_unit = outside / (self.droop * self.nominal_hz)
        return max(-1.0, min(1.0, per_unit)) * self.rated_w
