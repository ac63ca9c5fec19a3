"""Thermal supervision: derating, hysteresis, no oscillation, trip latch, plausibility."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.events import TemperatureReading
from agent.core.thermal_guard import (
    CONNECTOR,
    DeratingCurve,
    ThermalConfig,
    ThermalSupervisor,
)

temps = st.floats(-30, 120, allow_nan=False)


def _feed(sup: ThermalSupervisor, values: list[float], sensor: str = "connector_dc_plus",
          dt: float = 0.1, current: float = 100.0, t0: float = 0.0) -> list[float]:
    out = []
    for i, v in enumerate(values):
        t = t0 + i * dt
        sup.update(TemperatureReading(t, sensor, v), current)
        out.append(sup.evaluate(t, current).limit_fraction)
    return out


@given(st.lists(temps, min_size=1, max_size=60))
def test_fraction_is_within_0_and_1(values: list[float]) -> None:
    assert all(0.0 <= f <= 1.0 for f in _feed(ThermalSupervisor(), values, dt=10.0))


# Rises below the rate-of-rise limit (0.5 K/s at 10 s per reading): the rate cap is a
# separate, time-limited measure that releases by design (tested below).
@given(st.lists(st.floats(0, 4.5), min_size=2, max_size=60), temps)
def test_the_limit_never_rises_while_temperature_rises(steps: list[float], start: float) -> None:
    values = [start + sum(steps[: i + 1]) for i in range(len(steps))]
    fractions = _feed(ThermalSupervisor(), values, dt=10.0)  # slow: no rate-of-rise cap
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(fractions))


@given(st.floats(80, 90), st.lists(st.floats(-1.4, 1.4), min_size=20, max_size=200))
def test_noise_below_the_hysteresis_does_not_toggle(level: float, noise: list[float]) -> None:
    sup = ThermalSupervisor()
    _feed(sup, [level + 1.5], dt=10.0)  # settle at the top of the noise band
    fractions = _feed(sup, [level + n for n in noise], dt=10.0, t0=10.0)
    assert len(set(fractions)) == 1


def test_recovery_needs_the_full_hysteresis() -> None:
    sup = ThermalSupervisor()
    hot = _feed(sup, [85.0], dt=10.0)[-1]
    assert hot == pytest.approx(0.5)
    assert _feed(sup, [83.0], dt=10.0, t0=10.0)[-1] == pytest.approx(0.5)  # 2 K: held
    assert _feed(sup, [81.0], dt=10.0, t0=20.0)[-1] == pytest.approx(0.6)  # > 3 K: eased


def test_trip_latches_until_cool_and_cleared() -> None:
    sup = ThermalSupervisor()
    _feed(sup, [106.0], dt=10.0)
    v = sup.evaluate(0.0, 0.0)
    assert v.limit_fraction == 0.0 and v.faults[0].kind == "over_temperature"
    assert v.faults[0].latched
    assert not sup.clear(1.0)  # still hot
    _feed(sup, [60.0], dt=10.0, t0=10.0)
    assert sup.evaluate(10.0, 0.0).limit_fraction == 0.0  # cooled, but latched
    assert sup.clear(11.0)
    assert sup.evaluate(11.0, 0.0).limit_fraction == 1.0


def test_fast_rise_caps_the_current() -> None:
    sup = ThermalSupervisor()
    fractions = _feed(sup, [40.0 + i * 0.2 for i in range(40)], dt=0.1)  # 2 K/s
    assert fractions[-1] == CONNECTOR.rate_fraction


@pytest.mark.parametrize(("raw_ohm", "value", "kind"), [
    (1e6, math.nan, "open"), (10.0, -200.0, "short"), (None, math.nan, "unreadable")])
def test_implausible_sensors_fault(raw_ohm: float | None, value: float, kind: str) -> None:
    sup = ThermalSupervisor()
    sup.update(TemperatureReading(0.0, "connector_dc_plus", value, raw_ohm), 0.0)
    v = sup.evaluate(0.0, 0.0)
    assert v.limit_fraction == 0.0 and [f.kind for f in v.faults] == [kind]


def test_disagreement_stuck_and_silence_fault() -> None:
    sup = ThermalSupervisor()
    for i in range(80):
        t = i * 0.1
        sup.update(TemperatureReading(t, "connector_dc_plus", 40.0), 100.0)
        sup.update(TemperatureReading(t, "connector_dc_minus", 60.0), 100.0)
    assert "disagreement" in {f.kind for f in sup.evaluate(7.9, 100.0).faults}
    config = ThermalConfig(stuck_s=5.0)
    sup = ThermalSupervisor(config)
    for i in range(70):
        sup.update(TemperatureReading(i * 0.1, "cable", 42.0), 100.0)
    assert "stuck" in {f.kind for f in sup.evaluate(6.9, 100.0).faults}
    assert "silent" in {f.kind for f in sup.evaluate(20.0, 100.0).faults}
    healthy = ThermalSupervisor()
    _feed(healthy, [40.0, 40.1, 40.0, 40.2], dt=0.1)
    assert healthy.evaluate(0.3, 100.0).faults == ()


@settings(max_examples=50)
@given(st.lists(st.tuples(st.floats(-50, 200), st.floats(-1, 2)), min_size=2, max_size=5))
def test_bad_curves_are_refused_with_the_point_named(points: list[tuple[float, float]]) -> None:
    ok = all(0 <= f <= 1 for _t, f in points) and all(
        b[0] > a[0] and b[1] <= a[1] for a, b in itertools.pairwise(points))
    if ok:
        DeratingCurve(tuple(points))
    else:
        with pytest.raises(ValueError, match="point"):
            DeratingCurve(tuple(points))
