"""The simulated car: battery physics and the BMS's own limits and periods."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.messages import BCL, CCS, CHM, CML, CRM, CRO, Ready
from hil.ev_battery import Battery, BatteryParams
from hil.ev_bms import BmsSimulator, VehicleConfig


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 100), st.lists(st.floats(-400, 400), min_size=1, max_size=50))
def test_soc_stays_in_range_and_energy_balances(soc: float, currents: list[float]) -> None:
    b = Battery(BatteryParams(), soc)
    b.contactors_closed = True
    for i in currents:
        b.accept_current(i, 1.0)
        assert 0.0 <= b.soc_pct <= 100.0
    assert math.isfinite(b.energy_in_kwh) and math.isfinite(b.temperature_c)


@given(st.floats(0, 99.9), st.floats(0.01, 0.1))
def test_ocv_rises_with_soc(soc: float, step: float) -> None:
    lo, hi = Battery(BatteryParams(), soc), Battery(BatteryParams(), min(soc + step, 100.0))
    assert hi.open_circuit_voltage_v >= lo.open_circuit_voltage_v


def test_open_contactors_carry_no_current() -> None:
    b = Battery(BatteryParams(), 50.0)
    b.accept_current(200.0, 10.0)
    assert b.soc_pct == 50.0 and b.energy_in_kwh == 0.0


def _to_charging(bms: BmsSimulator) -> float:
    t = 0.0
    for msg in (CHM(), CRM(False), CRM(True), CML(750, 200, 250, 0)):
        bms.receive(msg, t)
        bms.poll(t)
        t += 0.01
    while bms.phase != "ready":
        bms.poll(t)
        t += 0.01
    bms.receive(CRO(Ready.READY), t)
    return t


def test_bcl_every_50_ms_and_never_above_its_own_limit() -> None:
    bms = BmsSimulator(VehicleConfig(start_soc_pct=78.0, target_soc_pct=90.0))
    t = _to_charging(bms)
    assert bms.battery.contactors_closed
    sent: list[tuple[float, BCL]] = []
    for k in range(1000):
        now = t + k * 0.01
        sent += [(now, m) for m in bms.poll(now) if isinstance(m, BCL)]
        if k % 5 == 0:
            bms.receive(CCS(380.0, 100.0, 0, True), now)  # the charger is alive
    gaps = [round(b[0] - a[0], 3) for a, b in itertools.pairwise(sent)]
    # The first interval joins the car's task grid (between half and one and a half
    # periods, once, as the charger's); every later one is the period.
    assert len(sent) >= 199 and set(gaps[1:]) == {0.05}, gaps[:5]
    assert 0.025 <= gaps[0] <= 0.075, gaps[:5]
    assert all(0 <= m.current_demand_a <= bms.config.max_charge_current_a for _t, m in sent)


@pytest.mark.parametrize("phase", [0.0, 0.013, 0.049])
def test_the_cars_task_cycle_keeps_its_phase(phase: float) -> None:
    # Looked at every millisecond, the car sends BCL on multiples of 50 ms plus its phase
    # (0: the instants of the charger's CCS grid), whenever charging began.
    bms = BmsSimulator(VehicleConfig(start_soc_pct=78.0, target_soc_pct=90.0,
                                     task_phase_s=phase))
    t = _to_charging(bms) + 0.007  # charging begins off any grid
    sent: list[float] = []
    for k in range(3000):
        now = round(t + k * 0.001, 6)
        sent += [now for m in bms.poll(now) if isinstance(m, BCL)]
        if k % 50 == 0:
            bms.receive(CCS(380.0, 100.0, 0, True), now)
    assert len(sent) >= 55
    slots = [(s - phase) / 0.05 for s in sent[1:]]
    assert all(abs(x - round(x)) < 1e-6 for x in slots), sent[:5]


def test_demand_tapers_into_cv_near_the_voltage_limit() -> None:
    bms = BmsSimulator(VehicleConfig(start_soc_pct=99.0))
    current, mode = bms.demand_a()
    assert mode.name == "CONSTANT_VOLTAGE" and current < bms.config.max_charge_current_a
