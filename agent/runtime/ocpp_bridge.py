"""Between one gun's session and its EVSE at the OCPP client (drivers/ocpp).

Each step: the client's offers become `UpstreamSetpoint` events on the session clock (on a
change, and refreshed every `REFRESH_S`; a source that disappears is cleared); the
central system's requests become core events (RequestStopTransaction -> StopRequested);
the session's life becomes transaction events in the durable outbox (Started at plug-in,
Updated every SampledDataCtrlr.TxUpdatedInterval (`meter_interval_s` until the central
system sets it) with the DC meter's registers, power and SOC, Ended with
the stop reason) and NotifyEVChargingNeeds once the vehicle's needs are known.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

from agent.core.events import (
    Event,
    FaultsCleared,
    StopRequested,
    UpstreamCleared,
    UpstreamSetpoint,
)
from agent.core.session import GunSession
from agent.core.states import State
from drivers.ocpp.client import (
    ChangeAvailability,
    OcppClient,
    Reset,
    SampledValue,
    StopTransaction,
)
from drivers.ocpp.profiles import Offer

# A session the agent's own stop ended (agent/runtime/pile_service.py) has this reason.
AGENT_STOPPED = "agent stopped"
REFRESH_S = 30.0  # well inside the offers' validity (profiles.OFFER_VALIDITY_S)
_DONE = (State.FINISHED, State.FAULT)


# SampledDataCtrlr: which variable names the measurands of each event's context.
_MEASURANDS_OF = {"Transaction.Begin": "TxStartedMeasurands",
                  "Sample.Periodic": "TxUpdatedMeasurands",
                  "Transaction.End": "TxEndedMeasurands"}


class OcppBridge:
    def __init__(self, client: OcppClient, session: GunSession, wall: Callable[[], float],
                 meter_interval_s: float = 60.0, *, evse_id: int | None = None,
                 station_offers: bool = True,
                 status: Callable[[], str] | None = None,
                 on_availability: Callable[[bool], None] = lambda _operative: None) -> None:
        """evse_id: this gun's EVSE (None: the client's only one). station_offers: the
        station's own limits (evseId 0) go to this gun too (a one-gun station; a pile shares
        them among its guns instead). status: the gun's connector status (else read from
        the session)."""
        self.client = client
        self.session = session
        self.wall = wall
        self.evse_id = evse_id if evse_id is not None else next(iter(client.evses))
        self.station_offers = station_offers
        self.status = status
        self.on_availability = on_availability
        client.use_tx_updated_interval(meter_interval_s)
        self._sent: dict[str, tuple[float, tuple[object, ...]]] = {}
        self.transaction_id: str | None = None
        self._next_meter = math.inf
        self._needs_sent = False
        self._remote_stop = False  # the running transaction was stopped by the central system
        self.log: list[str] = []

    def events(self, t: float) -> list[Event]:
        out = self._offers(t)
        for request in self.client.drain_requests(self.evse_id):
            match request:
                case ChangeAvailability(operative=operative):
                    self.on_availability(operative)
                    self.log.append(f"{t:.1f} s availability: "
                                    f"{'Operative' if operative else 'Inoperative'}")
                case StopTransaction():
                    self._remote_stop = True  # the Ended event says so (E06)
                    out.append(StopRequested(t, "central system: RequestStopTransaction"))
                case Reset(kind=kind):
                    # The EVSE's reset: a running transaction stops first (Immediate), and
                    # latched faults are cleared where their cause is gone (the safety
                    # controller's trip re-armed): the way a central system puts a gun
                    # back in service after a fault (OCPP 2.1 B11/B12).
                    if kind != "OnIdle":
                        out.append(StopRequested(t, f"central system: Reset ({kind})"))
                    out.append(FaultsCleared(t, f"central system: Reset ({kind})"))
                    self.log.append(f"{t:.1f} s reset ({kind}): faults cleared")
                case _:
                    self.log.append(f"{t:.1f} s {request}")
        self._transaction(t)
        if self.status is not None:
            self.client.set_connector_status(self.status(), self.evse_id)
        return out

    # ---- offers -> the core's upstream arbiter -------------------------------------------

    def _offers(self, t: float) -> list[Event]:
        c = self.client
        offers = [*c.station_offers(), *c.evse_offers(self.evse_id)] if self.station_offers \
            else c.evse_offers(self.evse_id)
        return relay_offers(offers, self._sent, t, self.wall())

    # ---- the session -> transaction events -----------------------------------------------

    def _transaction(self, t: float) -> None:
        s, c = self.session, self.client
        if self.transaction_id is None:
            if s.state not in (State.IDLE, *_DONE):
                self.transaction_id = f"{uuid.uuid4()}"
                c.set_connector_status("Occupied", self.evse_id)
                c.transaction_event("Started", "CablePluggedIn", self.transaction_id,
                                    self._meter("Transaction.Begin"),
                                    charging_state="EVConnected", evse_id=self.evse_id)
                self._next_meter, self._needs_sent = t + c.tx_updated_interval_s, False
            return
        if s.state in _DONE:
            ok = s.state is State.FINISHED
            if s.data.outcome_reason.startswith(AGENT_STOPPED):
                # The station's software is going down (a service stop or restart).
                trigger, reason = "AbnormalCondition", "Reboot"
            elif ok and self._remote_stop:
                trigger, reason = "RemoteStop", "Remote"
            else:
                trigger = "StopAuthorized" if ok else "AbnormalCondition"
                reason = "Local" if ok else "EmergencyStop"
            c.transaction_event("Ended", trigger, self.transaction_id,
                                self._meter("Transaction.End"), stopped_reason=reason,
                                charging_state="Idle", evse_id=self.evse_id)
            self._remote_stop = False
            c.set_connector_status("Available" if s.state is State.FINISHED else "Faulted",
                                   self.evse_id)
            self.transaction_id = None
            return
        if not self._needs_sent and s.view.charge is not None:
            self._needs_sent = True
            c.ev_charging_needs(self._needs(), self.evse_id)
        if t >= self._next_meter:
            self._next_meter = t + c.tx_updated_interval_s
            charging = s.state is State.CHARGING
            # 2.1's ChargingStateEnumType has no discharging state: energy transfer either
            # way is Charging, its direction in the Power.Active.Import/Export measurands.
            c.transaction_event("Updated", "MeterValuePeriodic", self.transaction_id,
                                self._meter("Sample.Periodic"),
                                charging_state="Charging" if charging else "EVConnected",
                                evse_id=self.evse_id)

    def _meter(self, context: str) -> list[SampledValue]:
        wanted = self.client.measurands[_MEASURANDS_OF[context]]
        return [v for v in self._sampled(context) if v.measurand in wanted]

    def _sampled(self, context: str) -> list[SampledValue]:
        """The sampled values of one event: each with its unit and reading context (OCPP
        2.1 SampledValueType). Import and Export are both non-negative: a discharge is
        Power.Active.Export, not a negative Import."""
        s = self.session
        out: list[SampledValue] = []
        last = s.data.metering.last
        if last is not None:
            out += [SampledValue("Energy.Active.Import.Register", last.to_vehicle_kwh * 1000.0,
                                 "Wh", context),
                    SampledValue("Energy.Active.Export.Register",
                                 last.from_vehicle_kwh * 1000.0, "Wh", context)]
        st = s.plant.status
        if st is not None:
            watts = st.output_voltage_v * st.output_current_a  # + = into the vehicle
            out += [SampledValue("Power.Active.Import", max(watts, 0.0), "W", context),
                    SampledValue("Power.Active.Export", max(-watts, 0.0), "W", context)]
        if s.view.soc_pct is not None:
            out.append(SampledValue("SoC", s.view.soc_pct, "Percent", context))
        return out

    def _needs(self) -> dict[str, object]:
        v = self.session.view
        charge, discharge = v.charge, v.discharge
        assert charge is not None
        needs: dict[str, object] = {
            "requested_energy_transfer": "DC_BPT" if discharge is not None else "DC",
            "dc_charging_parameters": {
                "ev_max_current": charge.max_current_a, "ev_max_voltage": charge.max_voltage_v,
                **({"state_of_charge": round(v.soc_pct)} if v.soc_pct is not None else {}),
                **({"ev_energy_capacity": v.nominal_energy_kwh * 1000.0}
                   if v.nominal_energy_kwh else {})},
        }
        if discharge is not None:
            needs["available_energy_transfer"] = ["DC", "DC_BPT"]
            needs["v2x_charging_parameters"] = {
                "max_discharge_current": discharge.max_current_a,
                "max_discharge_power": discharge.max_power_w}
        return needs


def relay_offers(offers: list[Offer], sent: dict[str, tuple[float, tuple[object, ...]]],
                 t: float, now_wall: float) -> list[Event]:
    """The client's live offers as core events: a source's offer when it changed (at most
    one a second: the core takes no more) or every REFRESH_S; a source gone, cleared.
    `sent` is the caller's memory of what went out (source -> (t, what))."""
    out: list[Event] = []
    live = {o.source: o for o in offers}
    for source, o in live.items():
        key = (o.setpoint, o.charge_limit, o.discharge_limit, o.unit, o.curve, o.baseline)
        last = sent.get(source)
        if last is not None and t - last[0] < 1.0:
            continue  # the core takes one offer per source per second
        if last is not None and last[1] == key and t - last[0] < REFRESH_S:
            continue
        sent[source] = (t, key)
        out.append(offer_event(o, t, now_wall))
    for source in [s for s in sent if s not in live]:
        del sent[source]
        out.append(UpstreamCleared(t, source))
    return out


def offer_event(o: Offer, t: float, now_wall: float) -> UpstreamSetpoint:
    validity = max(0.0, o.valid_until - now_wall)  # <= profiles.OFFER_VALIDITY_S
    return UpstreamSetpoint(t, o.source, t + validity, setpoint=o.setpoint,
                            charge_limit=o.charge_limit, discharge_limit=o.discharge_limit,
                            unit=o.unit, freq_watt_curve=o.curve, baseline=o.baseline)
