"""Losing an upstream limit may only move a gun to the fallback (charge <= fallback_charge_a,
discharge 0 A), never above it, unless another live source allows more (issue 21): an EMS
whose heartbeat goes silent, and an OCPP profile that arrives already expired or ended,
each driven through its own driver into the core's upstream arbiter."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.events import Event, UpstreamCleared, UpstreamSetpoint
from agent.core.upstream import (
    SetpointRatings,
    UpstreamArbiter,
    UpstreamPolicy,
    setpoint_problem,
)
from agent.ledger.outbox import Outbox
from drivers.ocpp.client import OcppClient, OcppSettings
from drivers.ocpp.profiles import ProfileStore, Rejection, parse_profile
from drivers.sunspec.codec import ILLEGAL_DATA_VALUE, decode_write, layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings

BASE, MODELS = load_map()
LAYOUT = layout(BASE, MODELS, n_ports=1)
FALLBACK_A = 100.0
RATED_A, RATED_W, MIN_V = 250.0, 150_000.0, 200.0
VOLTS = 400.0
HB_TIMEOUT_S = 10.0


def _arbiter() -> UpstreamArbiter:
    return UpstreamArbiter(UpstreamPolicy(fallback_charge_a=FALLBACK_A), RATED_A, RATED_W,
                           MIN_V)


def _write(c: EmsControls, t: float, point: str, words: list[int], model: int | None = None
           ) -> None:
    written = decode_write(LAYOUT, LAYOUT.address_of(point, model) if model else
                           LAYOUT.address_of(point), words)
    assert not isinstance(written, int), (point, written)
    assert c.on_write(t, written) is None


def _feed(a: UpstreamArbiter, events: list[Event], now: float) -> None:
    for e in events:
        if isinstance(e, UpstreamSetpoint):
            a.offer(e, now)
        elif isinstance(e, UpstreamCleared):
            a.clear(e)


def _s32(w: int) -> list[int]:
    return [(w >> 16) & 0xFFFF, w & 0xFFFF]


def test_a_silent_ems_heartbeat_withdraws_its_whole_offer() -> None:
    """The campaign's case: WChaRteMax at the rating, a heartbeat, then WSet -20 kW for
    300 s. Heartbeat silence must leave the fallback (100 A), not the EMS's rating-wide
    limit (250 A), and no WSetRvrtRem re-armed."""
    c = EmsControls(EmsSettings(allow_discharge=True, heartbeat_timeout_s=HB_TIMEOUT_S))
    a = _arbiter()
    _write(c, 0.0, "WChaRteMax", [15_000])  # 150 kW (uint16 at W_SF 1: 10 W steps)
    _write(c, 0.0, "ControllerHb", [0, 1])
    _write(c, 0.0, "WSetEna", [1])
    _write(c, 0.0, "WSet", _s32(20_000))  # SunSpec's sign: + = injection (discharge)
    _write(c, 0.0, "WSetRvrtTms", _s32(300))
    _feed(a, c.poll(0.0), 0.0)
    assert a.limit_a(1.0, False, VOLTS)[0] > 0.0  # discharging on the EMS's word
    t = 0.0
    while t < HB_TIMEOUT_S + 2.0:
        t += 0.5
        _feed(a, c.poll(t), t)
    charge, fallback = a.limit_a(t, True, VOLTS)
    assert fallback and charge <= FALLBACK_A, (charge, fallback)
    assert a.limit_a(t, False, VOLTS)[0] == 0.0
    assert c.remaining_s(t) == 0.0
    assert any("heartbeat" in line for line in c.log), list(c.log)
    # Writes while the heartbeat is silent are kept, not offered ...
    _write(c, t, "WSet", _s32(30_000))
    _feed(a, c.poll(t + 1.5), t + 1.5)
    assert a.limit_a(t + 1.5, True, VOLTS) == (FALLBACK_A, True)
    # ... until the heartbeat moves again.
    _write(c, t + 2.0, "ControllerHb", [0, 2])
    _feed(a, c.poll(t + 3.0), t + 3.0)
    assert not a.limit_a(t + 3.0, True, VOLTS)[1]


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(
    st.sampled_from(("hb", "wset", "cha", "dis", "silence", "wait")),
    st.floats(-150_000, 150_000), st.floats(0.1, 30.0)), min_size=1, max_size=25))
def test_an_ems_that_goes_silent_never_leaves_more_than_the_fallback(
        steps: list[tuple[str, float, float]]) -> None:
    """Any sequence of EMS writes and waits: whenever the heartbeat has been silent past its
    timeout, the gun's allowed charge is at most the fallback and discharge 0 A."""
    c = EmsControls(EmsSettings(allow_discharge=True, heartbeat_timeout_s=HB_TIMEOUT_S,
                                default_validity_s=60.0))
    a = _arbiter()
    t, hb, last_hb = 0.0, 0, 0.0
    _write(c, t, "ControllerHb", [0, 0])
    for kind, watts, wait in steps:
        match kind:
            case "hb":
                hb += 1
                _write(c, t, "ControllerHb", _s32(hb))
                last_hb = t
            case "wset":
                _write(c, t, "WSetEna", [1])
                _write(c, t, "WSet", _s32(round(watts) & 0xFFFFFFFF))
            case "cha":
                _write(c, t, "WChaRteMax", [round(abs(watts) / 10)])
            case "dis":
                _write(c, t, "WDisChaRteMax", [round(abs(watts) / 10)])
        t += wait if kind in ("wait", "silence") else 0.05
        for step_t in (t - 0.02, t):
            _feed(a, c.poll(step_t), step_t)
        # A poll a second on: coalesced writes are sent within min_interval_s.
        t += 1.0
        _feed(a, c.poll(t), t)
        if t - last_hb > HB_TIMEOUT_S + 1.0:
            charge, _ = a.limit_a(t, True, VOLTS)
            assert charge <= FALLBACK_A + 1e-9, (t, last_hb, charge)
            assert a.limit_a(t, False, VOLTS)[0] == 0.0


def _profile(pid: int, period: dict[str, Any], *, stack: int = 1, **extra: Any
             ) -> dict[str, Any]:
    sched: dict[str, Any] = {"id": pid, "charging_rate_unit": "W",
                             "charging_schedule_period": [{"start_period": 0, **period}],
                             "start_schedule": "2026-12-06T08:00:00Z"}
    sched.update(extra.pop("schedule", {}))
    return {"id": pid, "stack_level": stack, "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Absolute", "charging_schedule": [sched], **extra}


NOW = 1_796_550_000.0  # 2026-12-06 about 09:00 UTC
SETPOINT = {"operation_mode": "CentralSetpoint", "setpoint": -10_000.0,
            "discharge_limit": -20_000.0, "limit": 20_000.0}
EXPIRED = [
    ({"valid_to": "2026-12-06T08:30:00Z"}, "validTo"),  # validTo already passed
    ({"schedule": {"duration": 3600, "start_schedule": "2026-12-06T06:00:00Z"}}, "ended"),
]


def test_an_expired_profile_is_refused_and_the_live_one_stays() -> None:
    store = ProfileStore()
    live = parse_profile(_profile(1, SETPOINT), NOW, None)
    assert not isinstance(live, Rejection)
    store.set(live)
    before = store.offers(NOW + 1)
    for extra, why in EXPIRED:
        charging = {"operation_mode": "ChargingOnly", "limit": 150_000.0}
        got = parse_profile(_profile(2, charging, **extra), NOW, None)
        assert isinstance(got, Rejection), (extra, got)
        assert why in got.info, got
    assert store.offers(NOW + 1) == before  # nothing displaced the live setpoint


# Both sides of "now", a second or more away (the timestamps carry microseconds).
SIDES = st.one_of(st.floats(-7200, -1), st.floats(1, 7200))


@given(valid_to_s=SIDES, ended_s=SIDES)
def test_a_replacement_profile_never_lifts_the_gun_above_the_fallback_when_unusable(
        valid_to_s: float, ended_s: float) -> None:
    """A profile accepted only if it is usable now: an Absolute one whose validTo or end
    is past is refused, so it can neither displace a live profile nor leave a gap."""
    from datetime import UTC, datetime
    raw = _profile(2, {"operation_mode": "ChargingOnly", "limit": 150_000.0},
                   valid_to=datetime.fromtimestamp(NOW + valid_to_s, UTC).isoformat(),
                   schedule={"duration": 7200, "start_schedule": datetime.fromtimestamp(
                       NOW + ended_s - 7200, UTC).isoformat()})
    got = parse_profile(raw, NOW, None)
    usable = valid_to_s > 0 and ended_s > 0
    assert isinstance(got, Rejection) is (not usable), (valid_to_s, ended_s, got)


# ---- say no where the station will not do it --------------------------------------------

GUN = SetpointRatings(charge_a=250.0, charge_w=150_000.0, discharge_a=200.0,
                      discharge_w=100_000.0)


def _wset(c: EmsControls, sunspec_w: int) -> int | None:
    written = decode_write(LAYOUT, LAYOUT.address_of("WSet"), _s32(sunspec_w & 0xFFFFFFFF))
    assert not isinstance(written, int)
    return c.on_write(0.0, written)


def test_a_wset_beyond_the_gun_is_refused_with_exception_03() -> None:
    c = EmsControls(EmsSettings(allow_discharge=True, ratings=GUN))
    assert _wset(c, 1_000_000) == ILLEGAL_DATA_VALUE  # SunSpec +: injection, 1 MW
    assert _wset(c, 100_001) == ILLEGAL_DATA_VALUE  # the discharge rating, not the charge one
    assert _wset(c, -150_001) == ILLEGAL_DATA_VALUE  # charging past 150 kW
    assert c.wset_w == 0.0 and any("above the gun's rated" in line for line in c.log)
    assert _wset(c, 100_000) is None and c.wset_w == -100_000.0
    assert _wset(c, -150_000) is None and c.wset_w == 150_000.0
    charge_only = EmsControls(EmsSettings(allow_discharge=True, ratings=SetpointRatings(
        250.0, 150_000.0, 0.0, 0.0)))
    assert _wset(charge_only, 1) == ILLEGAL_DATA_VALUE


def test_the_arbiter_refuses_what_the_edges_refuse() -> None:
    """One rule (setpoint_problem) at the edges and in the core: what the core would not
    take, upstream hears 'no' for."""
    a = UpstreamArbiter(UpstreamPolicy(), 250.0, 150_000.0, MIN_V, ratings=GUN)
    for watts, ok in ((-100_000.0, True), (-100_001.0, False), (150_000.0, True),
                      (150_001.0, False), (-1e12, False)):
        decision = a.offer(UpstreamSetpoint(0.0, f"s{watts}", 60.0, setpoint=watts, unit="W"),
                           0.0)
        assert decision.accepted is ok, (watts, decision)
        assert ok == (setpoint_problem(watts, "W", GUN) == "")


def test_an_ocpp_setpoint_beyond_the_gun_is_rejected() -> None:
    client = OcppClient(OcppSettings(url="ws://127.0.0.1:9/ocpp", station_id="T",
                                     ratings=GUN), Outbox(":memory:"), lambda: NOW)
    huge = _profile(7, {"operation_mode": "CentralSetpoint", "setpoint": -1e12,
                        "discharge_limit": -1e12, "limit": 1e12})
    answer = client.set_profile(1, huge)
    assert answer.status == "Rejected", answer
    assert "rated discharge" in str(answer.status_info), answer
    fine = _profile(8, {"operation_mode": "CentralSetpoint", "setpoint": -50_000.0,
                        "discharge_limit": -60_000.0, "limit": 60_000.0})
    assert client.set_profile(1, fine).status == "Accepted"


# ---- every refusal and loss is said, not only kept in memory -------------------------------

def test_refusals_and_losses_are_log_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    c = EmsControls(EmsSettings(allow_discharge=False, heartbeat_timeout_s=HB_TIMEOUT_S,
                                default_validity_s=5.0))
    assert _wset(c, 10_000) == ILLEGAL_DATA_VALUE  # discharge not enabled
    _write(c, 0.0, "ControllerHb", [0, 1])
    _write(c, 0.0, "WSetEna", [1])
    _write(c, 0.0, "WSet", _s32((-10_000) & 0xFFFFFFFF))  # charging 10 kW
    c.poll(0.0)
    c.poll(6.0)  # the 5 s validity lapses
    c.poll(12.0)  # the heartbeat has been silent 12 s
    client = OcppClient(OcppSettings(url="ws://127.0.0.1:9/ocpp", station_id="T"),
                        Outbox(":memory:"), lambda: NOW)
    assert client.set_profile(1, _profile(3, SETPOINT, valid_to="2020-01-01T00:00:00Z")
                              ).status == "Rejected"
    ems = [r.getMessage() for r in caplog.records if r.name == "pile_agent.ems"]
    ocpp = [r.getMessage() for r in caplog.records if r.name == "pile_agent.ocpp"]
    assert any("refused WSet" in m and "not enabled" in m for m in ems), ems
    assert any("lapsed" in m for m in ems), ems
    assert any("heartbeat silent" in m for m in ems), ems
    assert any("profile rejected" in m and "validTo" in m for m in ocpp), ocpp


def test_a_link_that_cannot_connect_is_a_log_record(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection (as a 401 or a failed TLS check, which websockets and ssl raise
    the same way): one log line per attempt, and the client keeps trying."""
    import asyncio
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    client = OcppClient(OcppSettings(url=f"ws://127.0.0.1:{port}/ocpp", station_id="T",
                                     reconnect_s=0.05), Outbox(":memory:"), lambda: NOW)

    async def run() -> None:
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.4)
        task.cancel()

    caplog.set_level(logging.WARNING, logger="pile_agent.ocpp")
    asyncio.run(run())
    links = [r.getMessage() for r in caplog.records if r.getMessage().startswith("link:")]
    assert (len(links) >= 2 and "Connect" in links[0]) or "refused" in links[0], links
