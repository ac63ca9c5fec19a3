"""Which messages the charger sends in each state, and when they are due.

`messages_for` is a pure function of the session; `PeriodicSender` keeps the send
times on a fixed grid (period from `timing.PERIODS`) so CCS goes out every 50 ms
without drift.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from agent.core import timing as T
from agent.core.events import ModuleStatus
from agent.core.messages import (
    CCS,
    CDP,
    CEM,
    CHM,
    CML,
    CRM,
    CRO,
    CSD,
    CTS,
    ChargerMessage,
    Ready,
)
from agent.core.ratings import GunRatings, offers_v2g
from agent.core.session_data import SessionData
from agent.core.states import State


# CDP carries 0.1 A, 0.1 kW and 0.1 V a bit (docs/V2G.md): a rating that is no multiple of a
# bit is advertised on the safe side of itself, never rounded past it on the wire.
def _down(x: float, step: float) -> float:
    return math.floor(x / step + 1e-9) * step


def _up(x: float, step: float) -> float:
    return math.ceil(x / step - 1e-9) * step


def messages_for(
    state: State, d: SessionData, r: GunRatings, st: ModuleStatus | None, now: float
) -> list[ChargerMessage]:
    match state:
        case State.HANDSHAKE | State.INSULATION_CHECK:
            return [CHM()]
        case State.IDENTIFICATION:
            return [CRM(False, r.charger_number)]
        case State.PARAMETER_EXCHANGE if d.bcp is None:
            return [CRM(True, r.charger_number)]
        case State.PARAMETER_EXCHANGE:
            cml = CML(r.max_voltage_v, r.min_voltage_v, r.max_current_a, r.min_current_a)
            cts = _cts(d, r, now)
            out: list[ChargerMessage] = [cml] if cts is None else [cts, cml]
            if offers_v2g(r):
                # The V2G offer (extension, docs/V2G.md): a gun that cannot discharge sends
                # nothing, so its bus is exactly a 2015 charger's.
                out.append(CDP(True, _down(r.max_discharge_current_a, 0.1),
                               _down(r.max_discharge_power_w, 100.0),
                               _up(r.min_input_voltage_v, 0.1)))
            return out
        case State.PRECHARGE:
            return [CRO(Ready.NOT_READY)]
        case State.CHARGING if d.bcl is None:
            return [CRO(Ready.READY)]
        case State.CHARGING:
            return [CCS(
                output_voltage_v=st.output_voltage_v if st else 0.0,
                output_current_a=st.output_current_a if st else 0.0,
                charging_min=_charging_min(d, now),
                permitted=d.paused_since is None,
            )]
        case State.STOPPING:
            return [d.stop_message]
        case State.WELDING_CHECK | State.FINISHED if d.bsd is not None:
            if now - d.last_rx.get("BSD", now) <= T.FAULT_MESSAGE_DURATION.seconds:
                return [CSD(_charging_min(d, now), round(max(d.energy_kwh, 0.0), 1),
                            r.charger_number)]
        case State.FAULT if d.fault_at is not None:
            if now - d.fault_at <= T.FAULT_MESSAGE_DURATION.seconds:
                msgs: list[ChargerMessage] = [d.stop_message]
                if d.cem_timeouts:
                    msgs.append(CEM(d.cem_timeouts))
                return msgs
    return []


def _charging_min(d: SessionData, now: float) -> int:
    started = d.charging_started_at if d.charging_started_at is not None else now
    return int((now - started) // 60)


def _cts(d: SessionData, r: GunRatings, now: float) -> CTS | None:
    if d.wall_clock_at_start is None:
        return None
    wall = d.wall_clock_at_start + (now - d.started_at)
    local = datetime.fromtimestamp(wall, UTC) + timedelta(hours=r.utc_offset_h)
    return CTS((local.year, local.month, local.day, local.hour, local.minute, local.second))


def on_grid(now: float, period: float) -> float:
    """The multiple of `period` on the session clock nearest `now`: the grid slot a send at
    `now` stands for. Periodic messages and the safety-controller heartbeat keep to
    multiples of their periods on one clock, so a 100 ms kick falls on a 50 ms CCS instant
    and the guns of a pile (one clock) share their wakes; the interval after a first send
    is between half and one and a half periods, once."""
    return math.floor(now / period + 0.5) * period


def grid_slot(nominal: float | None, period: float, now: float) -> float:
    """The slot a send (or service) at `now` stands for: `nominal`, the next slot on the
    grid kept so far, unless there is none or a whole period was missed; then the grid
    starts again at the nearest multiple of the period (`on_grid`)."""
    if nominal is not None and now - nominal < period:
        return nominal
    return on_grid(now, period)


class PeriodicSender:
    """Each message on a grid of send times (multiples of its period on the session clock:
    `on_grid`). The first send goes out at once; a runtime that wakes at `next_due` sends on
    the grid after it; a late tick sends at once and keeps the grid."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        # The messages of the last `due` (the session's last tick): what `next_due` waits
        # for, so the deadline does not build the message list a second time.
        self._periods: list[tuple[str, float]] = []

    def reset(self) -> None:
        self._last.clear()
        self._periods = []

    def due(self, messages: list[ChargerMessage], now: float) -> list[ChargerMessage]:
        out: list[ChargerMessage] = []
        self._periods = []
        for message in messages:
            name = type(message).__name__
            period = T.PERIODS[name].seconds
            self._periods.append((name, period))
            last = self._last.get(name)
            if last is not None and now < last + period - 1e-9:
                continue
            self._last[name] = grid_slot(last + period if last is not None else None,
                                         period, now)
            out.append(message)
        return out

    def next_due(self, now: float) -> float:
        """When the first message of the last `due` is next due (now, for one never sent;
        inf for none)."""
        out = math.inf
        for name, period in self._periods:
            last = self._last.get(name)
            out = min(out, now if last is None else last + period)
        return out
