"""The upstream setpoint arbiter (agent/core/upstream.py): priority, expiry, fallback,
rate limits, rejections with reasons, watts at a safe voltage, frequency response."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.events import UpstreamCleared, UpstreamLimit, UpstreamSetpoint
from agent.core.frequency_watt import FrequencyDroop
from agent.core.upstream import UpstreamArbiter, UpstreamPolicy

RATED_A, RATED_W, MIN_V = 250.0, 150_000.0, 200.0


def arbiter(**policy: object) -> UpstreamArbiter:
    return UpstreamArbiter(UpstreamPolicy(**policy), RATED_A, RATED_W, MIN_V)  # type: ignore[arg-type]


def sp(t: float, source: str, setpoint: float | None = None, ttl: float = 60.0,
       **kw: object) -> UpstreamSetpoint:
    return UpstreamSetpoint(t, source, t + ttl, setpoint=setpoint, **kw)  # type: ignore[arg-type]


def both(a: UpstreamArbiter, now: float, volts: float = 400.0) -> tuple[float, float]:
    return a.limit_a(now, True, volts)[0], a.limit_a(now, False, volts)[0]


def test_the_highest_priority_live_setpoint_leads_and_the_next_takes_over_on_expiry() -> None:
    a = arbiter()
    assert a.offer(sp(0.0, "ems", -50.0, ttl=100.0), 0.0).accepted
    assert a.offer(sp(0.0, "ocpp:TxProfile", -120.0, ttl=30.0), 0.0).accepted
    assert both(a, 10.0) == (0.0, 120.0)
    assert a.leader(10.0) is not None and a.leader(10.0).sp.source == "ocpp:TxProfile"  # type: ignore[union-attr]
    assert both(a, 30.0) == (0.0, 50.0)  # OCPP lapsed: the EMS's setpoint
    assert both(a, 100.0) == (math.inf, 0.0)  # all silent: fallback, never discharge
    assert a.limit_a(100.0, False, 400.0)[1] is True


def test_limits_bind_from_every_live_source_whatever_its_priority() -> None:
    a = arbiter()
    a.offer(sp(0.0, "ocpp:TxProfile", -120.0), 0.0)
    # The site EMS forbids discharge and caps charging: it binds the central system.
    a.offer(sp(0.0, "ems", None, charge_limit=80.0, discharge_limit=0.0), 0.0)
    assert both(a, 1.0) == (0.0, 0.0)
    a.offer(sp(2.0, "ems", None, charge_limit=80.0, discharge_limit=40.0), 2.0)
    assert both(a, 3.0) == (0.0, 40.0)
    a.offer(sp(2.0, "ocpp:TxProfile", 200.0), 2.0)
    assert both(a, 3.0) == (80.0, 0.0)


def test_a_setpoint_beyond_its_own_limits_is_held_to_them() -> None:
    a = arbiter()
    assert a.offer(sp(0.0, "ems", -60.0, discharge_limit=50.0), 0.0).accepted
    assert both(a, 1.0) == (0.0, 50.0)
    assert a.offer(sp(2.0, "ems", 60.0, charge_limit=50.0), 2.0).accepted
    assert both(a, 3.0) == (50.0, 0.0)


def test_a_cleared_source_stops_counting() -> None:
    a = arbiter()
    a.offer(sp(0.0, "ocpp:TxProfile", -120.0), 0.0)
    a.offer(sp(0.0, "ems", 30.0), 0.0)
    assert a.clear(UpstreamCleared(1.0, "ocpp:TxProfile")).accepted
    assert both(a, 1.0) == (30.0, 0.0)
    assert not a.clear(UpstreamCleared(1.0, "ocpp:TxProfile")).accepted


def test_the_rate_limit_is_per_source() -> None:
    a = arbiter()
    assert a.offer(sp(0.0, "ems", 10.0), 0.0).accepted
    d = a.offer(sp(0.5, "ems", 20.0), 0.5)
    assert not d.accepted and "rate limit" in d.reason
    assert a.offer(sp(0.5, "ocpp:TxProfile", 30.0), 0.5).accepted
    assert a.offer(sp(1.0, "ems", 20.0), 1.0).accepted


def test_bad_offers_are_refused_with_their_reason() -> None:
    cases = [
        (sp(0.0, "ems", math.nan), "finite"),
        (sp(0.0, "ems", math.inf), "finite"),
        (sp(0.0, "ems", 10.0, charge_limit=math.nan), "finite"),
        (sp(0.0, "ems", -300.0), "rated"),
        (sp(0.0, "ems", 200_000.0, unit="W"), "rated"),
        (sp(0.0, "ems", 10.0, unit="kW"), "unit"),
        (sp(0.0, "ems", None, discharge_limit=-5.0), "below 0"),
        (sp(-10.0, "ems", 10.0), "stale"),
        (sp(0.0, "ems", 10.0, ttl=0.0), "stale"),
        (sp(0.0, "ems", 10.0, ttl=1000.0), "validity"),
        (sp(0.0, "ocpp", None, unit="W", freq_watt_curve=((50.0, 0.0), (50.0, 1.0))),
         "same frequency"),
        (sp(0.0, "ocpp", None, unit="W", freq_watt_curve=((49.0, -200_000.0), (51.0, 0.0))),
         "rated"),
    ]
    a = arbiter()
    for offer, reason in cases:
        d = a.offer(offer, 0.0)
        assert not d.accepted and reason in d.reason, (offer, d)
    assert both(a, 0.0) == (math.inf, 0.0)


def test_watts_become_amps_never_below_the_minimum_voltage() -> None:
    a = arbiter()
    a.offer(sp(0.0, "ems", -40_000.0, unit="W"), 0.0)
    assert a.limit_a(0.0, False, 400.0)[0] == 100.0
    assert a.limit_a(0.0, False, 0.0)[0] == 40_000.0 / MIN_V
    assert a.limit_a(0.0, False, math.nan)[0] == 40_000.0 / MIN_V


@settings(max_examples=300, deadline=None)
@given(watts=st.floats(0.0, RATED_W), given_v=st.floats(0.0, 1000.0),
       real_v=st.floats(0.0, 1000.0), charging=st.booleans())
def test_a_power_offer_holds_at_any_real_voltage_not_above_the_given_one(
        watts: float, given_v: float, real_v: float, charging: bool) -> None:
    a = arbiter()
    a.offer(sp(0.0, "ems", watts if charging else -watts, unit="W"), 0.0)
    amps = a.limit_a(0.0, charging, given_v)[0]
    if real_v <= max(given_v, MIN_V):
        assert amps * real_v <= watts * (1 + 1e-9) + 1e-6


# The project's rules for an offer, stated here (docs/UPSTREAM.md), not read from the
# arbiter's policy: delivered within 5 s of being issued, valid for at most 900 s (OCPP 2.1:
# upstream refreshes), one accepted offer a second per source (RateLimitExceeded), finite,
# within the gun's rating, limits not below 0.
MAX_AGE_S, MAX_VALIDITY_S, MIN_INTERVAL_S = 5.0, 900.0, 1.0

offers = st.builds(
    lambda t, age, src, setpoint, c, d, ttl: (t, UpstreamSetpoint(
        t - age, src, t + ttl, setpoint=setpoint, charge_limit=c, discharge_limit=d)),
    st.floats(0.0, 100.0),
    st.sampled_from([0.0, MAX_AGE_S]) | st.floats(0.0, 2 * MAX_AGE_S),
    st.sampled_from(["ocpp:TxProfile", "ems", "schedule", "other"]),
    # setpoints beyond their own limits and beyond the rating too
    st.none() | st.floats(-1.2 * RATED_A, 1.2 * RATED_A),
    st.floats(0.0, RATED_A) | st.just(math.inf), st.floats(0.0, RATED_A) | st.just(math.inf),
    st.sampled_from([MAX_VALIDITY_S, MAX_VALIDITY_S + 1.0]) | st.floats(-1.0, 1200.0))


def acceptable(offer: UpstreamSetpoint, now: float, last_accepted: float | None) -> bool:
    setpoint = offer.setpoint
    return ((setpoint is None or abs(setpoint) <= RATED_A)
            and not now - offer.t > MAX_AGE_S and offer.expires_at > now
            and not offer.expires_at - now > MAX_VALIDITY_S
            and (last_accepted is None or not now - last_accepted < MIN_INTERVAL_S))


@settings(max_examples=300, deadline=None)
@given(st.lists(offers, max_size=12), st.floats(0.0, 300.0))
def test_never_beyond_a_live_limit_and_never_a_discharge_nobody_asked_for(
        draws: list[tuple[float, UpstreamSetpoint]], now: float) -> None:
    a = arbiter()
    accepted: dict[str, UpstreamSetpoint] = {}
    accepted_at: dict[str, float] = {}
    for t, offer in sorted(draws, key=lambda d: d[0]):
        expected = acceptable(offer, t, accepted_at.get(offer.source))
        assert a.offer(offer, t).accepted is expected, (offer, t)
        if expected:
            accepted[offer.source], accepted_at[offer.source] = offer, t
    live = [o for o in accepted.values() if now < o.expires_at]
    charge, discharge = both(a, now)
    for o in live:
        assert charge <= o.charge_limit and discharge <= o.discharge_limit
    asking = [o for o in live if o.setpoint is not None and o.setpoint < 0]
    if discharge > 0:
        assert asking, "discharge with no live source asking for one"
        assert discharge <= max(-o.setpoint for o in asking if o.setpoint is not None)
    if not live:
        assert discharge == 0.0


def test_plain_limits_keep_their_meaning() -> None:
    a = arbiter()
    a.offer(UpstreamLimit(0.0, "ems", -80.0, 60.0), 0.0)
    assert both(a, 1.0) == (0.0, 80.0)
    a.offer(UpstreamLimit(2.0, "ems", 120.0, 60.0), 2.0)
    assert both(a, 3.0) == (120.0, 0.0)


def test_droop_shifts_the_setpoint_and_never_discharges_without_a_setpoint() -> None:
    droop = FrequencyDroop(rated_w=100_000.0)
    a = arbiter(droop=droop, fallback_charge_a=100.0)
    a.on_frequency(49.80, 0.0)
    offset_a = droop.offset_w(49.80) / 500.0  # type: ignore[operator]
    assert offset_a < 0
    # Silent upstream: under-frequency lowers charging, never turns it into a discharge.
    assert both(a, 0.5, 500.0) == (100.0 + offset_a, 0.0)
    a.on_frequency(45.0, 0.6)
    assert both(a, 0.6, 500.0) == (0.0, 0.0)
    a.on_frequency(49.80, 1.0)
    a.offer(sp(1.0, "ems", -50.0), 1.0)
    assert both(a, 1.5, 500.0) == (0.0, 50.0 - offset_a)
    # A frequency older than 1 s gives no response (the grid may have moved on).
    assert both(a, 2.5, 500.0) == (0.0, 50.0)


def test_local_frequency_follows_the_curve_plus_the_baseline() -> None:
    a = arbiter()
    curve = ((49.5, -100_000.0), (49.9, 0.0), (50.1, 0.0), (50.5, 50_000.0))
    a.offer(sp(0.0, "ocpp:TxProfile", None, unit="W", freq_watt_curve=curve,
               baseline=-20_000.0), 0.0)
    a.on_frequency(49.7, 0.0)
    assert both(a, 0.5, 500.0) == (0.0, pytest.approx((20_000.0 + 50_000.0) / 500.0))
    a.on_frequency(50.3, 1.0)
    assert both(a, 1.5, 500.0) == (pytest.approx(5_000.0 / 500.0), 0.0)
    # No frequency: no response, the baseline alone.
    assert both(a, 5.0, 500.0) == (0.0, 20_000.0 / 500.0)
