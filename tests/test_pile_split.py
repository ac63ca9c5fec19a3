"""A pile-level setpoint shared among the guns (agent/core/pile_split.py): the shares
never add up to more than the pile's figure, none is above what its gun can take, priority
is served first, and a discharge setpoint goes only to the guns that can discharge."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.events import UpstreamCleared, UpstreamSetpoint
from agent.core.pile_split import GunStanding, split, water_fill
from agent.runtime.pile_offers import PileOffers

capacities = st.dictionaries(st.integers(1, 8), st.one_of(
    st.just(0.0), st.floats(1.0, 200_000.0)), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(capacities, st.floats(0.0, 1_000_000.0), st.data())
def test_water_fill_keeps_to_the_total_and_each_capacity(
        caps: dict[int, float], total: float, data: st.DataObject) -> None:
    priorities = {n: data.draw(st.integers(0, 2)) for n in caps}
    shares = water_fill(total, caps, priorities)
    assert set(shares) == set(caps)
    assert sum(shares.values()) <= total * (1 + 1e-9) + 1e-6
    for n, share in shares.items():
        assert 0.0 <= share <= caps[n] * (1 + 1e-9) + 1e-9, (n, share, caps[n])
    # Nothing left unused while a gun could take more.
    wanting = [n for n in caps if shares[n] < caps[n] * (1 - 1e-9) - 1e-9]
    if wanting:
        assert math.isclose(sum(shares.values()), total, rel_tol=1e-9, abs_tol=1e-6)
    # A lower priority gets something only when every higher one is full.
    for n in caps:
        if shares[n] > 1e-9:
            for m in caps:
                if priorities[m] > priorities[n]:
                    assert math.isclose(shares[m], caps[m], rel_tol=1e-9, abs_tol=1e-9)
    # Within one priority the guns not at capacity get equal shares.
    for level in set(priorities.values()):
        open_ = [shares[n] for n in caps if priorities[n] == level and n in wanting
                 and caps[n] > 0]
        if open_:
            assert max(open_) - min(open_) <= 1e-6 * max(1.0, max(open_))


def _offer(**kw: float | None) -> UpstreamSetpoint:
    return UpstreamSetpoint(0.0, "ems", 60.0, unit="W", **kw)  # type: ignore[arg-type]


def test_two_guns_discharging_and_one_charging() -> None:
    """The issue's case: a pile-level discharge setpoint of 80 kW goes to the two V2G guns
    (60 kW and 30 kW able), the charge-only car keeps charging within the pile's charge
    limit."""
    guns = [GunStanding(1, 250.0, 150_000.0, 150.0, 60_000.0),
            GunStanding(2, 250.0, 150_000.0, 80.0, 30_000.0),
            GunStanding(3, 200.0, 100_000.0, 0.0, 0.0)]
    shares = split(_offer(setpoint=-80_000.0, charge_limit=90_000.0), guns)
    assert shares[1].setpoint == -50_000.0 and shares[2].setpoint == -30_000.0
    assert shares[3].setpoint is None  # it cannot follow a discharge
    assert sum(s.charge_limit for s in shares.values()) <= 90_000.0
    assert shares[3].charge_limit == 30_000.0
    assert all(s.discharge_limit == math.inf for s in shares.values())
    assert all(s.source == "ems" and s.expires_at == 60.0 for s in shares.values())


def test_a_gun_without_a_session_gets_nothing_of_a_limit() -> None:
    shares = split(_offer(discharge_limit=40_000.0),
                   [GunStanding(1), GunStanding(2, 250.0, 150_000.0, 150.0, 60_000.0)])
    assert shares[1].discharge_limit == 0.0 and shares[2].discharge_limit == 40_000.0


def test_a_charge_setpoint_beyond_the_guns_gives_each_its_most() -> None:
    shares = split(_offer(setpoint=500_000.0),
                   [GunStanding(1, 250.0, 150_000.0), GunStanding(2, 250.0, 100_000.0)])
    assert shares[1].setpoint == 150_000.0 and shares[2].setpoint == 100_000.0


def test_amps_are_shared_by_the_guns_amps() -> None:
    offer = UpstreamSetpoint(0.0, "ocpp:max", 60.0, charge_limit=300.0, unit="A")
    shares = split(offer, [GunStanding(1, 250.0, 150_000.0), GunStanding(2, 100.0, 50_000.0),
                           GunStanding(3, 250.0, 150_000.0, priority=1)])
    assert shares[3].charge_limit == 250.0  # the higher priority first
    assert shares[1].charge_limit == 25.0 and shares[2].charge_limit == 25.0


def test_shares_are_issued_when_they_are_sent() -> None:
    """A share re-split for a gun whose car arrived, or refreshed, is a new offer: its time
    is the time it is sent (the core refuses an offer as stale or too frequent by its
    time), at most one per min_interval_s per gun, and the pile's clear clears it."""
    offers = PileOffers(min_interval_s=1.0)
    offers.take([UpstreamSetpoint(0.0, "ems", 600.0, charge_limit=100_000.0, unit="W")])
    idle, plugged = GunStanding(1), GunStanding(1, 250.0, 150_000.0)
    [(gun, first)] = offers.poll(0.1, lambda: [idle])
    assert gun == 1 and isinstance(first, UpstreamSetpoint) and first.t == 0.1
    assert first.charge_limit == 0.0  # no car, no share
    assert offers.poll(0.6, lambda: [plugged]) == []  # within the same second: not yet
    [(_, second)] = offers.poll(1.2, lambda: [plugged])
    assert isinstance(second, UpstreamSetpoint)
    assert second.t == 1.2 and second.charge_limit == 100_000.0
    assert offers.poll(20.0, lambda: [plugged]) == []  # unchanged
    [(_, refreshed)] = offers.poll(31.5, lambda: [plugged])
    assert isinstance(refreshed, UpstreamSetpoint) and refreshed.t == 31.5
    offers.take([UpstreamCleared(32.0, "ems")])
    [(_, cleared)] = offers.poll(32.1, lambda: [plugged])
    assert isinstance(cleared, UpstreamCleared) and cleared.source == "ems"
    assert offers.poll(40.0, lambda: [plugged]) == []
