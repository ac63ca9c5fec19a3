"""GB/T 27930-2015 (with the project's V2G extension) onto the one vehicle view.

The session stores what the BMS sent (BHM, BRM, BCP, BCL, BCS, BSM, BMV, BMT, and the
extension's BDP and BDS); `view_of` turns it into a `VehicleView`. Nothing else in
energy transfer reads a GB/T message.

V2G negotiation (docs/V2G.md): the charger sends CDP with CML; a V2G vehicle answers BDP
before its BRO(0xAA) and within V2G_ANSWER of the first CDP. A vehicle that does not (every
2015 car) gets a charge-only session, with no delay. During energy transfer the vehicle
sends BDS every 250 ms: its live consent, discharge current limit and what is left of its
energy window; a BDS older than V2G_STATUS means no consent.
"""

from __future__ import annotations

import math

from agent.core import timing as T
from agent.core.session_data import SessionData
from agent.core.vehicle_view import Cells, ChargeLimits, DischargeLimits, VehicleView


def v2g_answer_in_time(d: SessionData, now: float) -> bool:
    """A BDP arriving now still negotiates V2G: the offer went out within V2G_ANSWER (the
    session asks only in parameter exchange, which BRO(0xAA) ends)."""
    return d.first_cdp_at is not None and now - d.first_cdp_at <= T.V2G_ANSWER.seconds


def _cells(d: SessionData) -> Cells:
    temps = [c for c in d.bmt.temperatures_c if c is not None] if d.bmt else []
    if d.bsm is not None:
        temps += [d.bsm.max_temperature_c, d.bsm.min_temperature_c]
    lo, hi = d.bmv_range_v if d.bmv_range_v else (None, None)
    if hi is None and d.bcs is not None:
        hi = d.bcs.max_cell_voltage_v
    return Cells(lo, hi, max(temps) if temps else None, min(temps) if temps else None)


def _discharge(d: SessionData, now: float) -> tuple[DischargeLimits | None, bool]:
    bdp = d.bdp
    if bdp is None or not d.v2g_negotiated:
        return None, False
    bds = d.bds
    fresh = bds is not None and now - d.last_rx.get("BDS", -math.inf) <= T.V2G_STATUS.seconds
    if bds is None:
        # Before the first BDS (parameter exchange, precharge) the BDP's answer stands; once
        # energy transfer has begun, only a live BDS gives consent.
        consent = bdp.consent and d.charging_started_at is None
        limits = DischargeLimits(bdp.max_discharge_current_a, bdp.max_discharge_power_w,
                                 bdp.min_discharge_voltage_v, bdp.soc_floor_pct,
                                 max(bdp.energy_kwh - d.discharged_kwh, 0.0))
        return limits, consent
    # The live status narrows the parameters, never widens them.
    limits = DischargeLimits(
        min(bdp.max_discharge_current_a, bds.max_discharge_current_a),
        bdp.max_discharge_power_w, bdp.min_discharge_voltage_v,
        max(bdp.soc_floor_pct, bds.soc_floor_pct),
        min(bds.remaining_energy_kwh, max(bdp.energy_kwh - d.discharged_kwh, 0.0)))
    return limits, bdp.consent and bds.consent and fresh


def view_of(d: SessionData, now: float) -> VehicleView:
    charge = None
    if d.bcp is not None:
        bhm_max = d.bhm.max_charge_voltage_v if d.bhm else math.inf
        charge = ChargeLimits(d.bcp.max_charge_current_a, min(d.bcp.max_total_voltage_v, bhm_max))
    discharge, consent = _discharge(d, now)
    soc = d.bcs.soc_pct if d.bcs is not None else (d.bcp.soc_pct if d.bcp else None)
    battery_v = d.bcs.measured_voltage_v if d.bcs is not None else (
        d.bcp.battery_voltage_v if d.bcp else None)
    return VehicleView(
        charge=charge, discharge=discharge, consent=consent, soc_pct=soc,
        demand_a=d.bcl.current_demand_a if d.bcl else 0.0,
        demand_v=d.bcl.voltage_demand_v if d.bcl else 0.0,
        battery_voltage_v=battery_v,
        alarm=d.bsm is not None and d.bsm.abnormal(),
        paused=d.paused_since is not None,
        cells=_cells(d),
        capacity_ah=d.brm.rated_capacity_ah if d.brm and d.brm.rated_capacity_ah > 0 else None,
        nominal_energy_kwh=d.bcp.nominal_energy_kwh if d.bcp and d.bcp.nominal_energy_kwh > 0
        else None,
        vin=d.brm.vin if d.brm else "",
    )
