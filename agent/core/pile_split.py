"""A pile-level upstream offer shared among the guns: the EMS's WSet / WChaRteMax /
WDisChaRteMax (SunSpec 704 and 702, one DER for the whole pile) and OCPP's station-level
profiles (evseId 0: ChargingStationMaxProfile, ExternalConstraints). Sans-I/O.

Each gun's share reaches its own arbiter as an `UpstreamSetpoint` of the same source, so it
is one more candidate there (never a clamp elsewhere), and it lapses or is cleared with the
pile's offer. How a share is found (docs/UPSTREAM.md, "A pile-level setpoint"):

- A limit (charge or discharge) goes to the guns that can use it in that direction now:
  a charge limit to every gun with a vehicle in a session; a discharge limit to those whose
  vehicle offers V2G with the owner's consent. Higher priority first (the pile's
  `[[gun]] priority`); within a priority, equal shares, each at most what the gun can take
  (its rating and the vehicle's own maximum), the rest shared again among the others
  ("water filling"). A gun that cannot use the direction gets 0 there.
- A setpoint is shared the same way among the guns that can follow its sign (a discharge
  setpoint only among the V2G guns with consent); the other guns get no setpoint from it,
  only its limits, so a charge-only car under a discharge setpoint keeps charging within
  the pile's charge limit.

The shares never add up to more than the pile's figure: the sum is the pile's figure or
what the guns can take, whichever is smaller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.core.events import UpstreamSetpoint
from agent.core.session import GunSession
from agent.core.states import State

_IN_SESSION = (State.HANDSHAKE, State.INSULATION_CHECK, State.IDENTIFICATION,
               State.PARAMETER_EXCHANGE, State.PRECHARGE, State.CHARGING)


@dataclass(frozen=True, slots=True)
class GunStanding:
    """What one gun could take (+) or give (-) now, by unit, as magnitudes: 0 where it
    cannot use a direction."""

    number: int
    charge_a: float = 0.0
    charge_w: float = 0.0
    discharge_a: float = 0.0
    discharge_w: float = 0.0
    priority: int = 0

    def capacity(self, unit: str, discharge: bool) -> float:
        if discharge:
            return self.discharge_w if unit == "W" else self.discharge_a
        return self.charge_w if unit == "W" else self.charge_a


def standing(number: int, session: GunSession, priority: int = 0) -> GunStanding:
    """From the gun's ratings and its vehicle's view (agent/core/vehicle_view.py)."""
    if session.state not in _IN_SESSION:
        return GunStanding(number, priority=priority)
    r, view = session.ratings, session.view
    charge_a, charge_w = r.max_current_a, r.max_power_w
    if view.charge is not None:
        charge_a = min(charge_a, view.charge.max_current_a)
        charge_w = min(charge_w, view.charge.max_power_w,
                       view.charge.max_current_a * view.charge.max_voltage_v)
    discharge_a = discharge_w = 0.0
    if view.discharge is not None and view.consent:
        discharge_a = min(r.max_discharge_current_a, view.discharge.max_current_a)
        discharge_w = min(r.max_discharge_power_w, view.discharge.max_power_w)
    return GunStanding(number, max(charge_a, 0.0), max(charge_w, 0.0),
                       max(discharge_a, 0.0), max(discharge_w, 0.0), priority)


def water_fill(total: float, capacities: Mapping[int, float],
               priorities: Mapping[int, int]) -> dict[int, float]:
    """`total` (a magnitude, inf allowed) shared: higher priority first, equal shares within
    a priority, none above its capacity; a gun of capacity 0 gets 0."""
    shares = {n: 0.0 for n in capacities}
    left = total
    for level in sorted({priorities.get(n, 0) for n in capacities}, reverse=True):
        open_ = {n: c for n, c in capacities.items()
                 if priorities.get(n, 0) == level and c > 0}
        while open_ and left > 0:
            each = left / len(open_)
            full = {n: c for n, c in open_.items() if c <= each}
            if not full:
                for n in open_:
                    shares[n] = each
                left = 0.0
                break
            for n, c in full.items():
                shares[n] = c
                left -= c
                del open_[n]
        if not left > 0:
            break
    return shares


def split(offer: UpstreamSetpoint, guns: Sequence[GunStanding]) -> dict[int, UpstreamSetpoint]:
    """The pile's offer as one offer per gun (same source, unit and expiry)."""
    priorities = {g.number: g.priority for g in guns}

    def share(total: float, discharge: bool) -> dict[int, float]:
        if math.isinf(total):
            return {g.number: math.inf for g in guns}
        return water_fill(total, {g.number: g.capacity(offer.unit, discharge) for g in guns},
                          priorities)

    charge = share(offer.charge_limit, discharge=False)
    discharge = share(offer.discharge_limit, discharge=True)
    setpoints: dict[int, float] = {}
    if offer.setpoint is not None and math.isfinite(offer.setpoint):
        sp = offer.setpoint
        cap = {g.number: g.capacity(offer.unit, discharge=sp < 0) for g in guns}
        parts = water_fill(abs(sp), cap, priorities)
        followers = [n for n, c in cap.items() if c > 0]
        for n in followers:
            setpoints[n] = math.copysign(parts[n], sp) if sp != 0 else 0.0
    out: dict[int, UpstreamSetpoint] = {}
    for g in guns:
        n = g.number
        out[n] = UpstreamSetpoint(
            offer.t, offer.source, offer.expires_at, setpoint=setpoints.get(n),
            charge_limit=charge[n], discharge_limit=discharge[n], unit=offer.unit,
            freq_watt_curve=offer.freq_watt_curve if n in setpoints or offer.setpoint is None
            else (), baseline=offer.baseline)
    return out
