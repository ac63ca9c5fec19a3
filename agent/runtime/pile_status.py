"""The running pile as a document: each gun's state, SOC, power and direction, the limit
that bound it, its session's energy, the upstream source that leads it and its faults;
the links upstream. What `pile-agent status`, the status page and the metrics read
(+ = energy into the vehicle, - = discharge, as everywhere). Reads; changes nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.core.states import State
from agent.runtime.gun_service import GunService

# |current| below this is "idle" for the direction shown (a module's zero reads noisy).
IDLE_BAND_A = 0.5
KWH_J = 3.6e6


@dataclass(frozen=True, slots=True)
class LinkState:
    """The upstream links, as the pile's status shows them."""

    ocpp_enabled: bool = False
    ocpp_online: bool = False
    ocpp_outbox: int = 0  # events waiting for the central system
    ocpp_offline_since: float | None = None  # Unix time
    ems_enabled: bool = False
    ems_heartbeat_age_s: float | None = None  # since the EMS's 715 heartbeat last moved
    ems_heartbeat_lost: bool = False


def direction_of(amps: float) -> str:
    return "charge" if amps > IDLE_BAND_A else "discharge" if amps < -IDLE_BAND_A else "idle"


def _finite(value: float | None, digits: int = 2) -> float | None:
    return round(value, digits) if value is not None and math.isfinite(value) else None


def gun_snapshot(g: GunService, now: float) -> dict[str, Any]:
    s = g.session
    d = s.data
    st = s.plant.status
    measured_a = st.output_current_a if st is not None else 0.0
    measured_v = st.output_voltage_v if st is not None else 0.0
    soc = d.bcs.soc_pct if d.bcs is not None else d.start_soc_pct
    leader = s.upstream.leader(now)
    meter = d.metering.last
    faults = sorted(s.safety.latched)
    if s.state is State.FAULT and d.fault_code and d.fault_code not in faults:
        faults.insert(0, d.fault_code)
    return {
        "gun": g.number,
        "status": g.status(),  # OCPP 2.1 ConnectorStatusEnumType
        "state": s.state.value,
        "plugged": g.plugged,
        "in_service": g.in_service,
        "session": g.runtime.session_id(),
        "vin": d.brm.vin if d.brm is not None and s.state is not State.IDLE else None,
        "soc_pct": _finite(soc, 1) if s.state is not State.IDLE else None,
        "direction": direction_of(measured_a),
        "current_a": _finite(measured_a),
        "voltage_v": _finite(measured_v, 1),
        "power_w": _finite(measured_a * measured_v, 0),
        "commanded_current_a": _finite(s.act.current_a if s.act.module_enabled else 0.0),
        "commanded_voltage_v": _finite(s.act.voltage_v if s.act.module_enabled else 0.0, 1),
        "bound_by": g.telemetry.bound_by,
        "session_charged_kwh": round(d.charged_kwh, 3),
        "session_discharged_kwh": round(d.discharged_kwh, 3),
        "meter_to_vehicle_kwh": _finite(meter.to_vehicle_kwh, 3) if meter else None,
        "meter_from_vehicle_kwh": _finite(meter.from_vehicle_kwh, 3) if meter else None,
        "upstream_source": leader.sp.source if leader is not None else None,
        "upstream_age_s": _finite(now - leader.accepted_at, 1) if leader is not None else None,
        "faults": faults,
        "fault_reason": d.outcome_reason if s.state is State.FAULT else "",
        "sessions": sum(g.telemetry.sessions.values()),
        "errors": g.errors,
        "power_history": [[round(t, 1), round(w)] for t, w in g.telemetry.history],
    }


def pile_snapshot(guns: list[GunService], links: LinkState, now: float, wall: float,
                  started_wall: float, version: str) -> dict[str, Any]:
    return {
        "time": round(wall, 3),
        "uptime_s": round(wall - started_wall, 1),
        "version": version,
        "ocpp": {"enabled": links.ocpp_enabled, "online": links.ocpp_online,
                 "outbox": links.ocpp_outbox,
                 "offline_since": _finite(links.ocpp_offline_since, 3)},
        "ems": {"enabled": links.ems_enabled,
                "heartbeat_age_s": _finite(links.ems_heartbeat_age_s, 1),
                "heartbeat_lost": links.ems_heartbeat_lost},
        "guns": [gun_snapshot(g, now) for g in guns],
    }
