"""Frequency response (agent/core/frequency_watt.py): the OCPP 2.1 frequency-watt curve at
any point spacing, and the dead-band droop, against their definitions."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.frequency_watt import FrequencyDroop, FreqWattCurve

HZ = st.floats(45.0, 55.0)
WATTS = st.floats(-600_000, 600_000)


@st.composite
def curves(draw: st.DrawFn) -> FreqWattCurve:
    """2-20 points at distinct frequencies with any spacing (0.001 Hz to several Hz), in
    any order, as a CSMS may send them."""
    freqs = draw(st.lists(HZ, min_size=2, max_size=20, unique=True))
    ordered = sorted(freqs)
    if any(b - a < 1e-3 for a, b in itertools.pairwise(ordered)):
        freqs = [45.0 + 0.5 * i for i in range(len(freqs))]
    points = [(f, draw(WATTS)) for f in freqs]
    return FreqWattCurve(tuple(draw(st.permutations(points))))


@given(curves(), HZ)
def test_the_curve_is_linear_between_its_neighbours_at_any_spacing(curve: FreqWattCurve,
                                                                   hz: float) -> None:
    power = curve.power_at(hz)
    assert power is not None
    pts = sorted(curve.points)
    if hz <= pts[0][0]:
        assert power == pts[0][1]
        return
    if hz >= pts[-1][0]:
        assert power == pts[-1][1]
        return
    (f0, p0), (f1, p1) = next((a, b) for a, b in itertools.pairwise(pts)
                              if a[0] <= hz < b[0])
    # Between its two neighbours, on the line through them, never outside their range.
    expected = p0 + (p1 - p0) * (hz - f0) / (f1 - f0)
    assert math.isclose(power, expected, rel_tol=1e-9, abs_tol=1e-6)
    assert min(p0, p1) - 1e-6 <= power <= max(p0, p1) + 1e-6


@given(curves())
def test_the_curve_passes_through_each_point(curve: FreqWattCurve) -> None:
    for hz, watts in curve.points:
        power = curve.power_at(hz)
        assert power is not None and math.isclose(power, watts, rel_tol=1e-9, abs_tol=1e-6)


def test_half_hertz_spacing_is_interpolated_not_stepped() -> None:
    """What a 1 Hz-only interpolation gets wrong: points 0.1 Hz apart."""
    curve = FreqWattCurve(((49.8, -100_000.0), (49.9, 0.0), (50.1, 0.0), (50.2, 50_000.0)))
    assert curve.power_at(49.85) == pytest.approx(-50_000.0)
    assert curve.power_at(50.15) == pytest.approx(25_000.0)
    assert curve.power_at(50.0) == 0.0
    assert curve.power_at(47.0) == -100_000.0 and curve.power_at(53.0) == 50_000.0


@pytest.mark.parametrize("points", [
    ((50.0, 0.0),),
    ((49.9, 0.0), (49.9, 100.0)),
    ((49.9, math.nan), (50.1, 0.0)),
    ((math.inf, 0.0), (50.1, 0.0)),
    ((10.0, 0.0), (50.1, 0.0)),
])
def test_a_bad_curve_is_refused_and_gives_no_power(
        points: tuple[tuple[float, float], ...]) -> None:
    curve = FreqWattCurve(points)
    assert curve.problems()
    assert curve.power_at(50.0) is None


@given(st.floats(0.01, 0.2), st.floats(0.0, 0.5), st.floats(1_000, 600_000), HZ, HZ)
def test_droop_is_zero_in_its_dead_band_monotone_and_bounded(
        droop: float, band: float, rated: float, a: float, b: float) -> None:
    d = FrequencyDroop(rated_w=rated, dead_band_hz=band, droop=droop)
    lo, hi = sorted((a, b))
    p_lo, p_hi = d.offset_w(lo), d.offset_w(hi)
    assert p_lo is not None and p_hi is not None
    # A higher frequency never asks for less power into the vehicle.
    assert p_lo <= p_hi + 1e-9
    for hz, p in ((lo, p_lo), (hi, p_hi)):
        assert abs(p) <= rated * (1 + 1e-12)
        if abs(hz - 50.0) <= band:
            assert p == 0.0
        else:
            # Under-frequency: less charging or discharge; over-frequency: more charging.
            assert (p < 0) == (hz < 50.0) or p == 0.0


def test_a_0_2_hz_dip_with_a_5_percent_droop() -> None:
    """50.00 -> 49.80 Hz (the issue's frequency step): 0.164 Hz outside a 0.036 Hz band,
    over 5 % of 50 Hz = 6.56 % of rated, towards discharge."""
    d = FrequencyDroop(rated_w=100_000.0)
    assert d.offset_w(50.0) == 0.0
    assert d.offset_w(49.8) == pytest.approx(-100_000.0 * 0.164 / 2.5)
    assert d.offset_w(47.0) == -100_000.0


@pytest.mark.parametrize("hz", [math.nan, math.inf, -50.0, 0.0, 100.0])
def test_an_unusable_frequency_gives_no_response(hz: float) -> None:
    assert FrequencyDroop(rated_w=1e5).offset_w(hz) is None
    assert FreqWattCurve(((49.0, -1.0), (51.0, 1.0))).power_at(hz) is None


@pytest.mark.parametrize("kwargs", [{"rated_w": 0.0}, {"rated_w": 1e5, "droop": 0.0},
                                    {"rated_w": 1e5, "dead_band_hz": -0.1},
                                    {"rated_w": 1e5, "nominal_hz": math.nan}])
def test_bad_droop_settings_are_refused(kwargs: dict[str, float]) -> None:
    d = FrequencyDroop(**kwargs)
    assert d.problems() and d.offset_w(49.0) is None
