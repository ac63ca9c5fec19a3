"""What the site EMS / VPP reads: the pile's snapshot for the SunSpec map, in the agent's
units and sign (+ = into the vehicle); drivers/sunspec turns it into SunSpec's."""

from __future__ import annotations

from importlib import metadata

from agent.core.ratings import offers_v2g
from agent.core.session import GunSession
from agent.core.states import State

# SunSpec 701 InvSt: OFF 0, SLEEPING 1, STARTING 2, RUNNING 3, THROTTLED 4,
# SHUTTING_DOWN 5, FAULT 6, STANDBY 7.
_INVERTER_STATE = {State.IDLE: 7, State.FINISHED: 7, State.FAULT: 6, State.CHARGING: 3,
                   State.STOPPING: 5, State.WELDING_CHECK: 5}
try:
    VERSION = metadata.version("pile-agent")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"
# 702 CtrlModes (SunSpec's bit names): the map serves WSet (704, FIXED_W, bit 1) and the
# frequency droop (711, FREQ_WATT, bit 5 [V]); not WMaxLimPct (MAX_W, bit 0).
SUNSPEC_MODES = (1 << 1) | (1 << 5)
# 714 Prt.PrtTyp: EV 2 for a charge-only gun, BIDIR 5 for one that discharges (PV is 0).
PORT_EV, PORT_BIDIRECTIONAL = 2, 5


def ems_snapshot(session: GunSession, serial: str, der_heartbeat: int
                 ) -> tuple[dict[str, float | str | None], list[dict[str, float | str | None]]]:
    r, st, d, view = session.ratings, session.plant.status, session.data, session.view
    energising = session.state not in (State.IDLE, State.FINISHED, State.FAULT)
    dc_w = st.output_voltage_v * st.output_current_a if st is not None else None
    last = d.metering.last
    to_wh = last.to_vehicle_kwh * 1000.0 if last is not None else None
    from_wh = last.from_vehicle_kwh * 1000.0 if last is not None else None
    alarms = 1 if session.state is State.FAULT else 0
    window = view.discharge.remaining_energy_kwh if view.discharge is not None else None
    values: dict[str, float | str | None] = {
        "manufacturer": "pile-agent", "model": "V2G DC pile", "options": "GB/T 27930",
        "version": VERSION, "serial": serial, "unit_id": 1.0,
        "ac_type": 2.0, "operating_state": 1.0 if energising else 0.0,
        "inverter_state": float(_INVERTER_STATE.get(session.state, 2)),
        "connection_state": 1.0 if st is not None and st.contactors_closed else 0.0,
        "alarms": float(alarms),
        "ac_power_w": st.ac_power_w if st is not None and st.ac_power_w is not None else dc_w,
        "grid_frequency_hz": st.grid_frequency_hz if st is not None else None,
        "energy_to_vehicle_wh": to_wh, "energy_from_vehicle_wh": from_wh,
        "module_temperature_c": st.temperature_c if st is not None else None,
        "rated_w": max(r.max_power_w, r.max_discharge_power_w),
        "rated_charge_w": r.max_power_w, "rated_discharge_w": r.max_discharge_power_w,
        "rated_max_dc_v": r.max_voltage_v, "rated_min_dc_v": r.min_voltage_v,
        "rated_dc_a": r.max_current_a, "control_modes": float(SUNSPEC_MODES),
        "vehicle_rated_wh": (view.nominal_energy_kwh or 0.0) * 1000.0
        if view.nominal_energy_kwh else None,
        "vehicle_available_wh": window * 1000.0 if window is not None else None,
        "vehicle_soc_pct": view.soc_pct,
        "storage_state": 2.0 if alarms else 0.0,
        "ports": 1.0, "zero": 0.0, "one": 1.0, "der_heartbeat": float(der_heartbeat),
        # 714's model-level DC figures: the sum over its ports (one gun here).
        "dc_current_a": st.output_current_a if st is not None else None, "dc_power_w": dc_w,
    }
    port: dict[str, float | str | None] = {
        "port_type": float(PORT_BIDIRECTIONAL if offers_v2g(r) else PORT_EV),
        "port_id": float(r.charger_number), "port_name": f"gun {r.charger_number}",
        "dc_current_a": st.output_current_a if st is not None else None,
        "dc_voltage_v": st.output_voltage_v if st is not None else None,
        "dc_power_w": dc_w, "energy_to_vehicle_wh": to_wh, "energy_from_vehicle_wh": from_wh,
        "module_temperature_c": values["module_temperature_c"],
        "port_state": 1.0 if energising else 0.0, "alarms": float(alarms),
    }
    return values, [port]
