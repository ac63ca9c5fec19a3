"""Pile-level upstream offers (the EMS's one DER, OCPP's evseId 0) to each gun's share, as
events for the guns' inboxes. The sharing rule is the core's (agent/core/pile_split.py);
this keeps the pile's live offers, re-shares them as the guns' standing changes, and sends
each gun what changed, no faster than the core takes offers from one source."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from agent.core.events import Event, UpstreamCleared, UpstreamSetpoint
from agent.core.pile_split import GunStanding, split

# A share is sent again after this even unchanged (well inside any offer's validity), and
# a changed one at most once per the upstream policy's min_interval_s (the core refuses a
# source's offers faster than that: I13).
REFRESH_S = 30.0
# A share that moved less than this (relative) is not news.
CHANGE = 0.01


def _differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is not b
    if math.isinf(a) or math.isinf(b):
        return a != b
    return abs(a - b) > max(abs(a), abs(b)) * CHANGE + 1e-6


@dataclass
class _Sent:
    t: float
    offer: UpstreamSetpoint


@dataclass
class PileOffers:
    min_interval_s: float = 1.0
    live: dict[str, UpstreamSetpoint] = field(default_factory=dict)
    _sent: dict[tuple[int, str], _Sent] = field(default_factory=dict)
    _out: list[tuple[int | None, Event]] = field(default_factory=list)

    def take(self, events: Sequence[Event]) -> None:
        """What the pile-level source said: an offer replaces its source's last; a clear
        clears every gun's share at once; a droop setting goes to every gun."""
        for event in events:
            match event:
                case UpstreamSetpoint(source=source):
                    self.live[source] = event
                case UpstreamCleared(source=source):
                    self.live.pop(source, None)
                    self._clear(source, event.t)
                case _:  # DroopSet: the pile's droop, every gun's
                    self._out.append((None, event))

    def poll(self, now: float, standings: Callable[[], Sequence[GunStanding]]
             ) -> list[tuple[int | None, Event]]:
        """(gun number, or None for every gun; event) to deliver now. The guns' standings
        are asked for only while a pile offer lives (ten times a second otherwise for
        nothing)."""
        out, self._out = self._out, []
        guns = standings() if self.live else ()
        for source, offer in list(self.live.items()):
            if offer.expires_at <= now:  # lapsed: each gun's share lapses with it
                del self.live[source]
                for key in [k for k in self._sent if k[1] == source]:
                    del self._sent[key]
                continue
            for number, share in split(offer, guns).items():
                # Issued now: the core judges an offer's age and rate by its time, and a
                # share re-split a second later is a new offer, not the pile's first again.
                share = replace(share, t=now)
                key = (number, source)
                last = self._sent.get(key)
                if last is not None:
                    if now - last.t < self.min_interval_s - 1e-9:
                        continue
                    o = last.offer
                    if now - last.t < REFRESH_S and o.expires_at == share.expires_at \
                            and not any(_differs(x, y) for x, y in (
                                (o.setpoint, share.setpoint),
                                (o.charge_limit, share.charge_limit),
                                (o.discharge_limit, share.discharge_limit))):
                        continue
                self._sent[key] = _Sent(now, share)
                out.append((number, share))
        return out

    def _clear(self, source: str, t: float) -> None:
        for key in [k for k in self._sent if k[1] == source]:
            del self._sent[key]
            self._out.append((key[0], UpstreamCleared(t, source)))
