"""The V2G extension's two deadlines met one at a time, in the stateful suite's world (its
invariants checked on every command and tick): the BDP answer on both sides of its 5 s
window, and a BDS that stops (consent lapses after 1 s). Deterministic, so the mutation
check does not depend on the stateful suite's draws for them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.core.messages import CDP
from agent.core.states import State
from tests.safety_world import SafetyWorld, V2gSetup

V2G = V2gSetup(gun_a=200.0, gun_w=100_000.0, car=True, ems_a=-100.0, ems_period_s=1.0,
               ems_ttl_s=3.0)


def _world(v2g: V2gSetup) -> SafetyWorld:
    w = SafetyWorld()
    w.plug(bhm=500.0, bcp_max_a=200.0, bcp_max_v=450.0, battery_v=380.0, demand=100.0,
           lie=1.0, grid_kw=float("inf"), mute="", require_io=False, v2g=v2g)
    return w


def _discharging_a(w: SafetyWorld) -> float:
    return -w.plant.current_a


@pytest.mark.parametrize(("delay_s", "negotiated"), [(4.5, True), (5.3, False)])
def test_a_bdp_counts_only_within_5_s_of_the_offer(delay_s: float, negotiated: bool) -> None:
    """The car answers on its BRO cadence (250 ms): 4.5 s after the offer is in time, 5.3 s
    (sent at 5.5 s) is not, and that car charges only."""
    w = _world(replace(V2G, bdp_delay_s=delay_s))
    w.advance(1500)
    assert w.s.state is State.CHARGING
    assert w.s.data.v2g_negotiated is negotiated
    assert (_discharging_a(w) > 90.0) is negotiated, w.plant.current_a


def test_a_bds_that_stops_ends_the_discharge_within_1_s() -> None:
    w = _world(V2G)
    w.advance(1000)
    assert _discharging_a(w) > 90.0
    w.disturb("ev_stops_bds")
    last_bds = w.bds_t
    w.advance(100)  # 1 s: the last BDS is up to 250 ms old already
    assert w.t - last_bds > 1.0
    # The consent lapses 1 s after the last BDS; the command drops at once, the module's
    # current follows within its time constant.
    w.advance(20)
    assert _discharging_a(w) < 5.0, w.plant.current_a


def test_the_export_limit_and_the_module_reverse_capability_bind() -> None:
    """This gun's share of the site's export limit, and what the module's inverter can take
    now (registers 28/29), each bound a discharge the rest would allow."""
    w = _world(replace(V2G, export_w=20_000.0))
    w.advance(1000)
    power_w = -w.plant.current_a * w.plant.out_v
    assert 19_000.0 < power_w <= 20_000.0 * 1.001, power_w
    assert w.s.decision is not None and w.s.decision.bound_by.value == "grid"
    w = _world(V2G)
    w.advance(1000)
    w.plant.reverse_a = 42.0
    w.advance(100)
    assert 40.0 < _discharging_a(w) <= 42.0 + 1e-6, w.plant.current_a
    assert w.s.decision is not None and w.s.decision.bound_by.value == "module_capability"



def test_ratings_that_are_no_multiple_of_a_bit_are_offered_on_their_safe_side() -> None:
    """CDP carries 0.1 A, 0.1 kW and 0.1 V a bit: a 42.26 A / 47,475.8 W gun with a
    380.905 V input floor offers 42.2 A, 47.4 kW and 381.0 V, never more current or power
    or a lower floor (the world also reads each CDP back from its bytes)."""
    w = _world(replace(V2G, gun_a=42.26, gun_w=47_475.8, min_input_v=380.905))
    heard: list[CDP] = []
    hear = w.ev.hear

    def record(message: object, t: float = 0.0) -> None:
        if isinstance(message, CDP):
            heard.append(message)
        hear(message, t)

    w.ev.hear = record  # type: ignore[method-assign]
    w.advance(300)
    assert heard
    for m in heard:
        assert m.max_discharge_current_a == pytest.approx(42.2)
        assert m.max_discharge_power_w == pytest.approx(47_400.0)
        assert m.min_input_voltage_v == pytest.approx(381.0)
