"""The pile's Prometheus metrics (docs/OPERATIONS.md lists them, with a scrape config and
alert rules).

Per gun, read from the running services at scrape time (a custom collector: the control
loop pays nothing for them): state, direction, measured and commanded current, voltage and
power, the limit that bound, the meter's energy counters, sessions by outcome and faults
by kind, the upstream leader and the age of its offer, CAN frames. Per pile: the OCPP
link and its outbox, the EMS heartbeat's age. Per process, observed as they happen: the
control step's duration and the CCS period.

Names and units as Prometheus asks: base units (seconds, amperes, volts, watts, joules),
`_total` for counters. + = energy into the vehicle, - = discharge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from agent.core.states import State
from agent.runtime.gun_service import GunService
from agent.runtime.pile_status import KWH_J, LinkState, direction_of
from drivers.modbus_stats import BUCKETS, STATS

PREFIX = "pile_agent"
# The control step: microseconds when only frames arrive, milliseconds for a full step.
STEP_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
# CCS is due every 50 ms (GB/T 27930-2015 §10.3.3); the buckets bracket its tolerance.
CCS_BUCKETS = (0.045, 0.05, 0.051, 0.052, 0.055, 0.06, 0.075, 0.1, 0.25, 1.0)


class PileMetrics:
    """The registry, the observed histograms and the collector of the running state."""

    def __init__(self, guns: Callable[[], list[GunService]],
                 links: Callable[[], LinkState], now: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.step_seconds = Histogram(
            f"{PREFIX}_control_step_seconds", "Duration of one gun control step",
            buckets=STEP_BUCKETS, registry=self.registry)
        self.ccs_period_seconds = Histogram(
            f"{PREFIX}_ccs_period_seconds", "Time between two CCS frames of a gun "
            "(GB/T 27930-2015: every 50 ms)", buckets=CCS_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(guns, links, now))

    def render(self) -> tuple[str, bytes]:
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, guns: Callable[[], list[GunService]],
                 links: Callable[[], LinkState], now: Callable[[], float]) -> None:
        self.guns, self.links, self.now = guns, links, now

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily
                                  | StateSetMetricFamily | HistogramMetricFamily]:
        now = self.now()
        guns = self.guns()
        g_ = PREFIX + "_gun"
        state = StateSetMetricFamily(f"{g_}_state", "The gun's session state",
                                     labels=["gun"])
        direction = GaugeMetricFamily(f"{g_}_direction", "+1 charging, -1 discharging, 0 idle",
                                      labels=["gun"])
        current = GaugeMetricFamily(f"{g_}_current_amperes", "Output current (+ into the "
                                    "vehicle), measured by the module or commanded",
                                    labels=["gun", "kind"])
        voltage = GaugeMetricFamily(f"{g_}_voltage_volts", "Output voltage, measured or "
                                    "commanded", labels=["gun", "kind"])
        power = GaugeMetricFamily(f"{g_}_power_watts", "Measured output power (+ into the "
                                  "vehicle)", labels=["gun"])
        bound = InfoMetricFamily(f"{g_}_bound_limit", "The limit that bound the latest "
                                 "current decision", labels=["gun"])
        to_vehicle = CounterMetricFamily(f"{g_}_meter_energy_to_vehicle_joules", "The DC "
                                         "meter's counter of energy into vehicles",
                                         labels=["gun"])
        from_vehicle = CounterMetricFamily(f"{g_}_meter_energy_from_vehicle_joules", "The "
                                           "DC meter's counter of energy from vehicles "
                                           "(discharge)", labels=["gun"])
        sessions = CounterMetricFamily(f"{g_}_sessions", "Sessions ended, by outcome",
                                       labels=["gun", "outcome"])
        faults = CounterMetricFamily(f"{g_}_faults", "Faults, by kind", labels=["gun",
                                                                                 "reason"])
        errors = CounterMetricFamily(f"{g_}_errors", "Exceptions contained in the gun's "
                                     "control loop", labels=["gun"])
        leader = InfoMetricFamily(f"{g_}_upstream_leader", "The upstream source whose "
                                  "setpoint leads the gun", labels=["gun"])
        offer_age = GaugeMetricFamily(f"{g_}_upstream_offer_age_seconds", "Since the "
                                      "leading upstream offer was accepted", labels=["gun"])
        can_rx = CounterMetricFamily(f"{g_}_can_frames_received", "CAN frames from the "
                                     "vehicle", labels=["gun"])
        can_tx = CounterMetricFamily(f"{g_}_can_frames_sent", "CAN frames to the vehicle",
                                     labels=["gun"])
        can_bad = CounterMetricFamily(f"{g_}_can_frames_rejected", "CAN frames from the "
                                      "vehicle that could not be decoded or were out of "
                                      "range", labels=["gun"])
        for g in guns:
            n = str(g.number)
            s = g.session
            st = s.plant.status
            amps = st.output_current_a if st is not None else 0.0
            volts = st.output_voltage_v if st is not None else 0.0
            state.add_metric([n], {x.value: x is s.state for x in State})
            direction.add_metric([n], {"charge": 1, "discharge": -1}.get(
                direction_of(amps), 0))
            on = s.act.module_enabled
            current.add_metric([n, "measured"], amps)
            current.add_metric([n, "commanded"], s.act.current_a if on else 0.0)
            voltage.add_metric([n, "measured"], volts)
            voltage.add_metric([n, "commanded"], s.act.voltage_v if on else 0.0)
            power.add_metric([n], amps * volts)
            bound.add_metric([n], {"limit": g.telemetry.bound_by or "none"})
            meter = s.data.metering.last
            if meter is not None:
                to_vehicle.add_metric([n], meter.to_vehicle_kwh * KWH_J)
                from_vehicle.add_metric([n], meter.from_vehicle_kwh * KWH_J)
            for outcome, count in sorted(g.telemetry.sessions.items()):
                sessions.add_metric([n, outcome], count)
            for reason, count in sorted(g.telemetry.faults.items()):
                faults.add_metric([n, reason], count)
            errors.add_metric([n], g.errors)
            lead = s.upstream.leader(now)
            leader.add_metric([n], {"source": lead.sp.source if lead is not None else "none"})
            if lead is not None:
                offer_age.add_metric([n], now - lead.accepted_at)
            link = g.runtime.vehicle
            can_rx.add_metric([n], getattr(link, "frames_received", 0))
            can_tx.add_metric([n], getattr(link, "frames_sent", 0))
            can_bad.add_metric([n], getattr(link, "frames_rejected", 0))
        yield from (state, direction, current, voltage, power, bound, to_vehicle, from_vehicle,
                    sessions, faults, errors, leader, offer_age, can_rx, can_tx, can_bad)
        yield from _modbus_families()
        links = self.links()
        p_ = PREFIX
        if links.ocpp_enabled:
            yield GaugeMetricFamily(f"{p_}_ocpp_online", "1 while the central system's "
                                    "websocket is up", value=float(links.ocpp_online))
            yield GaugeMetricFamily(f"{p_}_ocpp_outbox_events", "Events waiting for the "
                                    "central system", value=links.ocpp_outbox)
        if links.ems_heartbeat_age_s is not None:
            yield GaugeMetricFamily(f"{p_}_ems_heartbeat_age_seconds", "Since the EMS's "
                                    "heartbeat (SunSpec 715 ControllerHb) last moved",
                                    value=links.ems_heartbeat_age_s)


def _modbus_families() -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
    """Every Modbus device's request durations and errors (drivers/modbus_stats.py)."""
    latency = HistogramMetricFamily(f"{PREFIX}_modbus_request_seconds", "Duration of a "
                                    "Modbus request, per device", labels=["device"])
    errors = CounterMetricFamily(f"{PREFIX}_modbus_request_errors", "Modbus requests that "
                                 "failed (exception response, timeout, lost link), per device",
                                 labels=["device"])
    for device, stats in sorted(STATS.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(BUCKETS, stats.counts, strict=True):
            cumulative += count
            buckets.append((repr(bound), float(cumulative)))
        buckets.append(("+Inf", float(stats.requests)))
        latency.add_metric([device], buckets, sum_value=stats.seconds)
        errors.add_metric([device], stats.errors)
    yield latency
    yield errors
