"""What the site EMS / VPP reads: the pile's snapshot for the SunSpec map, in the agent's
units and sign (+ = into the vehicle); drivers/sunspec turns it into SunSpec's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent.core.ratings import offers_v2g
from agent.core.session import GunSession
from agent.core.states import State
from agent.version import package_version

# SunSpec 701 InvSt: OFF 0, SLEEPING 1, STARTING 2, RUNNING 3, THROTTLED 4,
# SHUTTING_DOWN 5, FAULT 6, STANDBY 7.
_INVERTER_STATE = {State.IDLE: 7, State.FINISHED: 7, State.FAULT: 6, State.CHARGING: 3,
                   State.STOPPING: 5, State.WELDING_CHECK: 5}
VERSION = package_version()
# 702 CtrlModes (SunSpec's bit names): the map serves WSet (704, FIXED_W, bit 1) and the
# frequency droop (711, FREQ_WATT, bit 5 [V]); not WMaxLimPct (MAX_W, bit 0).
SUNSPEC_MODES = (1 << 1) | (1 << 5)
# 714 Prt.PrtTyp: EV 2 for a charge-only gun, BIDIR 5 for one that discharges (PV is 0).
PORT_EV, PORT_BIDIRECTIONAL = 2, 5


def ems_snapshot(sessions: GunSession | Sequence[GunSession], serial: str,
                 der_heartbeat: int
                 ) -> tuple[dict[str, float | str | None], list[dict[str, float | str | None]]]:
    """The pile as one DER (models 1, 701-704, 711, 713, 715) over all its guns, and one
    714 port per gun: its model-level figures are the sums (or the extreme) over the
    ports."""
    guns = [sessions] if isinstance(sessions, GunSession) else list(sessions)
    ports = [_port(s) for s in guns]
    states = [s.state for s in guns]
    statuses = [s.plant.status for s in guns]
    known = [st for st in statuses if st is not None]
    dc_w = _sum(p["dc_power_w"] for p in ports)
    ac = [st.ac_power_w for st in known]
    ac_w = sum(a for a in ac if a is not None) if ac and all(a is not None for a in ac) \
        else dc_w
    frequency = next((st.grid_frequency_hz for st in known
                      if st.grid_frequency_hz is not None), None)
    views = [s.view for s in guns]
    nominal = [v.nominal_energy_kwh for v in views if v.nominal_energy_kwh]
    soc_weighted = [(v.soc_pct, v.nominal_energy_kwh) for v in views
                    if v.soc_pct is not None and v.nominal_energy_kwh]
    windows = [v.discharge.remaining_energy_kwh for v in views
               if v.discharge is not None and v.discharge.remaining_energy_kwh is not None]
    alarms = 1 if State.FAULT in states else 0
    energising = any(st not in (State.IDLE, State.FINISHED, State.FAULT) for st in states)
    ratings = [s.ratings for s in guns]
    values: dict[str, float | str | None] = {
        "manufacturer": "pile-agent", "model": "V2G DC pile", "options": "GB/T 27930",
        "version": VERSION, "serial": serial, "unit_id": 1.0,
        "ac_type": 2.0, "operating_state": 1.0 if energising else 0.0,
        "inverter_state": float(_pile_state(states)),
        "connection_state": 1.0 if any(st.contactors_closed for st in known) else 0.0,
        "alarms": float(alarms),
        "ac_power_w": ac_w,
        "grid_frequency_hz": frequency,
        "energy_to_vehicle_wh": _sum(p["energy_to_vehicle_wh"] for p in ports),
        "energy_from_vehicle_wh": _sum(p["energy_from_vehicle_wh"] for p in ports),
        "module_temperature_c": max((st.temperature_c for st in known
                                     if st.temperature_c is not None), default=None),
        "rated_w": sum(max(r.max_power_w, r.max_discharge_power_w) for r in ratings),
        "rated_charge_w": sum(r.max_power_w for r in ratings),
        "rated_discharge_w": sum(r.max_discharge_power_w for r in ratings),
        "rated_max_dc_v": max(r.max_voltage_v for r in ratings),
        "rated_min_dc_v": min(r.min_voltage_v for r in ratings),
        "rated_dc_a": sum(r.max_current_a for r in ratings),
        "control_modes": float(SUNSPEC_MODES),
        "vehicle_rated_wh": sum(nominal) * 1000.0 if nominal else None,
        "vehicle_available_wh": sum(windows) * 1000.0 if windows else None,
        "vehicle_soc_pct": sum(soc * kwh for soc, kwh in soc_weighted)
        / sum(kwh for _, kwh in soc_weighted) if soc_weighted else None,
        "storage_state": 2.0 if alarms else 0.0,
        "ports": float(len(guns)), "zero": 0.0, "one": 1.0, "der_heartbeat": float(der_heartbeat),
        # 714's model-level DC figures: the sums over its ports.
        "dc_current_a": _sum(p["dc_current_a"] for p in ports), "dc_power_w": dc_w,
    }
    return values, ports


def _sum(values: Iterable[float | str | None]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return sum(numbers) if numbers else None


def _pile_state(states: Sequence[State]) -> int:
    """701 InvSt of the pile: the most active of its guns (RUNNING over SHUTTING_DOWN over
    STARTING over FAULT over STANDBY)."""
    codes = [_INVERTER_STATE.get(s, 2) for s in states]
    for code in (3, 5, 2, 6):
        if code in codes:
            return code
    return 7


def _port(session: GunSession) -> dict[str, float | str | None]:
    r, st, d = session.ratings, session.plant.status, session.data
    energising = session.state not in (State.IDLE, State.FINISHED, State.FAULT)
    dc_w = st.output_voltage_v * st.output_current_a if st is not None else None
    last = d.metering.last
    return {
        "port_type": float(PORT_BIDIRECTIONAL if offers_v2g(r) else PORT_EV),
        "port_id": float(r.charger_number), "port_name": f"gun {r.charger_number}",
        "dc_current_a": st.output_current_a if st is not None else None,
        "dc_voltage_v": st.output_voltage_v if st is not None else None,
        "dc_power_w": dc_w,
        "energy_to_vehicle_wh": last.to_vehicle_kwh * 1000.0 if last is not None else None,
        "energy_from_vehicle_wh": last.from_vehicle_kwh * 1000.0 if last is not None else None,
        "module_temperature_c": st.temperature_c if st is not None else None,
        "port_state": 1.0 if energising else 0.0,
        "alarms": 1.0 if session.state is State.FAULT else 0.0,
    }
