"""V2G over the project's GB/T 27930-2015 extension, in process (real codecs, no sockets):
negotiation, discharge within every limit, direction changes through zero, consent, SOC
floor, energy window, upstream silence, grid trips, and the 2015 car that never answers."""

from __future__ import annotations

from dataclasses import replace

from agent.core.commands import Notice, SetModuleOutput
from agent.core.events import EnergyHistory, OwnerPolicy, UpstreamLimit, UpstreamSetpoint
from agent.core.health_policy import HealthPolicy
from agent.core.messages import BDP, CCS, CDP
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from drivers.gbt27930.codec import encode
from hil.ev_bms import VehicleConfig
from hil.plant import InProcessPile

V2G_GUN = GunRatings(max_discharge_current_a=200.0, max_discharge_power_w=100_000.0)
V2G_CAR = VehicleConfig(start_soc_pct=60.0, target_soc_pct=90.0, v2g=True, stop_at_target=False)


def _pile(car: VehicleConfig = V2G_CAR, gun: GunRatings = V2G_GUN,
          session: GunSession | None = None) -> InProcessPile:
    p = InProcessPile(ratings=gun, vehicle=car, session=session)
    p.plug_in()
    assert p.run_until(lambda q: q.session.state is State.CHARGING, 30)
    return p


def _setpoint(p: InProcessPile, amps: float, valid_s: float = 120.0) -> None:
    p.step([UpstreamLimit(p.t, "ems", amps, p.t + valid_s)])


def _run(p: InProcessPile, seconds: float) -> list[tuple[float, float]]:
    """(t, measured module current) every step for `seconds`."""
    out = []
    end = p.t + seconds
    while p.t < end:
        p.step()
        out.append((p.t, p.module.current_a))
    return out


def _bound(p: InProcessPile) -> str:
    decision = p.session.decision
    assert decision is not None
    return decision.bound_by.value


def _notices(p: InProcessPile, kind: str) -> list[Notice]:
    return [c for _t, c in p.log.all_commands if isinstance(c, Notice) and c.kind == kind]


def test_a_v2g_car_discharges_at_the_upstream_setpoint_within_its_limits() -> None:
    p = _pile()
    assert p.session.data.v2g_negotiated
    _setpoint(p, -120.0)
    trace = _run(p, 10)
    assert min(i for _t, i in trace) < -110.0
    # The car allows 150 A / 60 kW: 120 A at ~370 V is inside both, so upstream binds.
    assert _bound(p) == "upstream"
    assert all(i >= -120.0 - 1e-6 for _t, i in trace)
    # On the wire CCS carries the discharge with the standard's sign: raw > 4000 (§4.5).
    ccs = [m for _t, m in p.log.to_vehicle if isinstance(m, CCS)][-1]
    raw = int.from_bytes(encode(ccs)[1][2:4], "little")
    assert ccs.output_current_a < 0 and raw > 4000


def test_the_vehicle_discharge_limits_bind() -> None:
    car = replace(V2G_CAR, max_discharge_current_a=80.0)
    p = _pile(car)
    _setpoint(p, -200.0)
    trace = _run(p, 8)
    assert min(i for _t, i in trace) >= -80.0 - 1e-6
    assert _bound(p) == "ev_max"
    power = replace(V2G_CAR, max_discharge_power_w=20_000.0)
    q = _pile(power)
    _setpoint(q, -200.0)
    trace = _run(q, 8)
    st = q.session.plant.status
    assert st is not None and abs(st.output_current_a * st.output_voltage_v) <= 20_000.0 + 50
    assert _bound(q) == "ev_power"


def test_a_direction_change_passes_through_5_a_and_holds_zero() -> None:
    p = _pile()
    commanded: list[tuple[float, float]] = []
    for k in range(4):
        start = len(p.log.module_commands)
        _setpoint(p, -100.0 if k % 2 == 0 else 100.0)
        _run(p, 8)
        commanded += [(t, c.current_a if c.enabled else 0.0)
                      for t, c in p.log.module_commands[start:]
                      if isinstance(c, SetModuleOutput)]
    phases = p.session.data.direction.phases
    assert [d.value for _t, d in phases] == ["charge", "discharge", "charge", "discharge",
                                             "charge"]
    # Every sign change of the command passes through 0 A, held for the dwell, and the
    # measured current was at most 5 A before the new phase began.
    last_nonzero = None
    zero_since = None
    for t, amps in commanded:
        if amps == 0.0:
            zero_since = t if zero_since is None else zero_since
            continue
        if last_nonzero is not None and (amps > 0) != (last_nonzero > 0):
            assert zero_since is not None and t - zero_since >= 0.5 - 1e-9, (t, zero_since)
        last_nonzero, zero_since = amps, None
    assert len(_notices(p, "energy_transfer_phase")) == 4


def test_a_2015_car_that_never_answers_charges_only_and_without_delay() -> None:
    p = _pile(replace(V2G_CAR, v2g=False))
    assert any(isinstance(m, CDP) for _t, m in p.log.to_vehicle)  # the offer went out
    assert not any(isinstance(m, BDP) for _t, m in p.log.to_charger)
    assert not p.session.data.v2g_negotiated
    _setpoint(p, -150.0)
    trace = _run(p, 10)
    assert all(i >= 0.0 for _t, i in trace)
    # The same car on a charge-only gun reaches charging at the same moment.
    q = _pile(replace(V2G_CAR, v2g=False), gun=GunRatings())
    entered = next(t for t, _s, d in p.log.states if d == "charging")
    assert entered == next(t for t, _s, d in q.log.states if d == "charging")
    assert not any(isinstance(m, CDP) for _t, m in q.log.to_vehicle)


def test_a_withdrawn_consent_stops_discharge_at_once() -> None:
    p = _pile()
    _setpoint(p, -100.0)
    _run(p, 6)
    assert p.module.current_a < -90.0
    p.bms.consent = False
    withdrawn_at = p.t
    trace = _run(p, 3)
    # The next BDS (<= 250 ms) carries it; the decrease is immediate; the module ramps.
    stopped = next(t for t, i in trace if i > -5.0)
    assert stopped - withdrawn_at <= 0.25 + 0.1 + 0.5
    assert _notices(p, "consent_withdrawn")
    assert all(i > -5.0 for t, i in trace if t > stopped)


def test_discharge_stops_at_the_soc_floor_and_never_goes_below() -> None:
    p = _pile(replace(V2G_CAR, start_soc_pct=30.6, soc_floor_pct=30.0))
    _setpoint(p, -150.0, valid_s=800)
    trace = _run(p, 120)
    assert any(i < -100 for _t, i in trace)
    bcs_soc = p.session.data.bcs.soc_pct if p.session.data.bcs else None
    assert bcs_soc is not None and bcs_soc <= 30.0
    assert trace[-1][1] > -5.0
    assert any("SOC floor 30.0 % reached" in n.detail for n in _notices(p, "discharge_held"))
    # Within BCS's 1 % resolution: the pack is at most half a step below the floor.
    assert p.bms.battery.soc_pct >= 29.5


def test_discharge_stops_when_the_energy_window_is_used_up() -> None:
    p = _pile(replace(V2G_CAR, energy_window_kwh=0.5))
    _setpoint(p, -150.0)
    _run(p, 60)
    assert p.module.current_a > -5.0
    assert 0.45 <= p.bms.battery.energy_out_kwh <= 0.6
    assert any("energy window" in n.detail for n in _notices(p, "discharge_held"))


def test_upstream_silence_never_sustains_a_discharge() -> None:
    p = _pile()
    _setpoint(p, -100.0, valid_s=5.0)
    trace = _run(p, 12)
    expired = trace[0][0] + 5.0
    assert any(i < -90 for t, i in trace if t < expired)
    assert all(i > -5.0 for t, i in trace if t > expired + 1.0)


def test_a_grid_trip_while_discharging_ends_the_session() -> None:
    p = _pile()
    _setpoint(p, -100.0)
    _run(p, 6)
    p.module.islanded = True
    _run(p, 1)
    assert p.session.state is State.FAULT
    assert "anti_islanding" in p.session.data.outcome_reason
    assert abs(p.module.current_a) <= 5.0


def test_a_module_whose_current_does_not_reverse_faults_within_the_budget() -> None:
    """GB/T 18487.1-2023 Annex E: <= 5 A within 5 s of a direction change, or the session
    ends; a module stuck at -100 A must not hold the pile in a change forever."""
    p = _pile()
    _setpoint(p, -100.0)
    _run(p, 6)
    assert p.module.current_a < -90.0
    step = p.module.step

    def stuck(dt_s: float, vehicle: object = None) -> None:
        step(dt_s, vehicle)  # type: ignore[arg-type]
        p.module.current_a = -100.0
        p.module._put("output_current", -100.0)

    p.module.step = stuck  # type: ignore[method-assign]
    _setpoint(p, 100.0)
    asked = p.t
    assert p.run_until(lambda q: q.session.state is State.FAULT, 10)
    assert 5.0 <= p.t - asked <= 5.0 + 0.2 + 0.05, p.t - asked  # budget, one poll, a step
    assert "direction change" in p.session.data.outcome_reason


def test_the_owners_c_rate_and_temperature_window_bind() -> None:
    p = _pile()
    p.step([OwnerPolicy(p.t, HealthPolicy(max_discharge_c_rate=0.5))])
    _setpoint(p, -150.0)
    trace = _run(p, 8)
    # 0.5 C of the 120 Ah pack: 60 A.
    assert min(i for _t, i in trace) >= -60.0 - 1e-6
    assert _bound(p) == "health"
    hot = GunSession(V2G_GUN, health=HealthPolicy(max_temperature_c=20.0))
    q = _pile(session=hot)
    _setpoint(q, -150.0)
    trace = _run(q, 8)
    assert all(i > -1e-9 for _t, i in trace)
    assert any("battery health" in n.detail for n in _notices(q, "discharge_held"))


def test_a_gun_that_cannot_discharge_sends_no_offer() -> None:
    p = _pile(gun=GunRatings())
    assert not any(isinstance(m, CDP) for _t, m in p.log.to_vehicle)
    assert not p.session.data.v2g_negotiated


def test_a_day_s_discharge_budget_counts_what_the_ledger_says_was_done_earlier() -> None:
    gun = GunSession(V2G_GUN, health=HealthPolicy(max_discharge_kwh_per_day=20.0))
    p = _pile(session=gun)
    p.step([EnergyHistory(p.t, V2G_CAR.vin, discharged_kwh=19.8, throughput_kwh=25.0)])
    _setpoint(p, -150.0)
    _run(p, 40)
    # 0.2 kWh left of the day's 20 kWh: about 8 s at 150 A and 370 V, then held.
    assert 0.15 <= p.bms.battery.energy_out_kwh <= 0.3
    assert p.module.current_a > -5.0
    assert any("20.0 kWh a day" in n.detail for n in _notices(p, "discharge_held"))
    # History for another vehicle is not this one's.
    q = _pile(session=GunSession(V2G_GUN, health=HealthPolicy(max_discharge_kwh_per_day=20.0)))
    q.step([EnergyHistory(q.t, "SOMEONE ELSE", discharged_kwh=19.8, throughput_kwh=25.0)])
    _setpoint(q, -150.0)
    _run(q, 30)
    assert q.bms.battery.energy_out_kwh > 0.3


def test_discharge_is_held_to_the_gun_s_discharge_rating_not_its_charge_rating() -> None:
    """A gun rated 250 A charging and 60 A (100 kW) discharging; the EMS asks for 30 kW out
    (about 80 A at the pack's voltage, within the power rating, so accepted): 60 A it is
    (D3), not the charge rating's 250 A."""
    gun = replace(V2G_GUN, max_discharge_current_a=60.0)
    p = _pile(gun=gun, session=GunSession(gun))
    assert p.session.data.v2g_negotiated
    p.step([UpstreamSetpoint(p.t, "ems", p.t + 120.0, setpoint=-30_000.0, unit="W")])
    trace = _run(p, 15)
    assert min(a for _t, a in trace) >= -60.0 - 1.0  # the module's regulation
    assert min(a for _t, a in trace[-100:]) <= -55.0  # and it binds: the gun discharges
