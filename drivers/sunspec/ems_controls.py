"""What the site EMS / VPP has written to the SunSpec map, as upstream events. Sans-I/O.

The EMS writes points one request at a time (WSetEna, then WSet, then WSetRvrtTms ...);
the core takes one offer per source per second (I13). So writes change a shadow of the
controls, and `poll` sends the shadow as one `UpstreamSetpoint` at most once per
`min_interval_s`. Nothing is decided here: the core's upstream arbiter vets and ranks the
offer; this module only says what the EMS asked for, in the agent's units and sign.

- 704 WSetEna/WSet/WSetRvrtTms: a signed setpoint in W, valid for WSetRvrtTms (or the
  configured default), renewed by every write (SunSpec reversion: the EMS must refresh).
- 702 WChaRteMax/WDisChaRteMax: charge and discharge limits in W.
- 711 Ena/DbOf/DbUf/KOf/KUf: the frequency droop (`DroopSet`).
- 715 ControllerHb: the EMS's heartbeat; silent for `heartbeat_timeout_s`: its whole offer
  (setpoint and limits) is withdrawn at once, so the gun goes to the fallback, and nothing
  is offered until the heartbeat moves again (writes meanwhile are kept for then). OpCtl
  STOP: limits of 0 W both ways (the DER is stopped, the session stays).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from agent.core.events import DroopSet, Event, UpstreamCleared, UpstreamSetpoint
from agent.core.upstream import SetpointRatings, setpoint_problem
from drivers.said_lines import SaidLines
from drivers.sunspec.codec import ILLEGAL_DATA_VALUE, Written

OP_STOP, OP_START = 0, 1


@dataclass(frozen=True, slots=True)
class EmsSettings:
    source: str = "ems"
    allow_discharge: bool = False  # discharge setpoints refused unless the operator enables
    default_validity_s: float = 60.0  # when the EMS never wrote WSetRvrtTms
    heartbeat_timeout_s: float = 0.0  # 0: the heartbeat is served but not watched
    min_interval_s: float = 1.0  # the core's per-source rate limit (UpstreamPolicy)
    # The gun's ratings per direction: a WSet beyond them is refused (exception 03) as the
    # core's arbiter would refuse it (agent/core/upstream.py setpoint_problem).
    ratings: SetpointRatings = field(default_factory=SetpointRatings)


@dataclass
class EmsControls:
    settings: EmsSettings = field(default_factory=EmsSettings)
    wset_enabled: bool = False
    wset_w: float = 0.0  # agent's sign: + into the vehicle
    revert_s: float | None = None
    charge_limit_w: float = math.inf
    discharge_limit_w: float = math.inf
    op_ctl: int = OP_START
    droop_enabled: bool = False
    dead_band_hz: float = 0.036
    droop: float = 0.05
    controller_hb: int | None = None
    hb_changed_at: float = 0.0
    hb_lost: bool = False  # the heartbeat went silent: nothing is offered until it moves
    expires_at: float = 0.0
    pending: bool = False
    droop_pending: bool = False
    last_sent: float = -math.inf
    offered: bool = False
    log: SaidLines = field(default_factory=lambda: SaidLines("pile_agent.ems"))
    lapse_said: bool = False

    def on_write(self, t: float, written: list[Written]) -> int | None:
        """Apply one accepted Modbus write; a Modbus exception code refuses all of it."""
        for w in written:  # every point of the write, not only its first
            if w.point.write != "wset_w":
                continue
            if w.value < 0 and not self.settings.allow_discharge:
                self.log.append(f"{t:.1f} s refused WSet {-w.value:.0f} W: discharge not "
                                "enabled for the EMS", event="refused")
                return ILLEGAL_DATA_VALUE
            beyond = setpoint_problem(w.value, "W", self.settings.ratings)
            if beyond:
                self.log.append(f"{t:.1f} s refused WSet: {beyond}", event="refused")
                return ILLEGAL_DATA_VALUE
        for w in written:
            self._apply(t, w.point.write, w.value)
        return None

    def _apply(self, t: float, key: str, value: float) -> None:
        match key:
            case "wset_enabled":
                self.wset_enabled, self.pending = value == 1, True
            case "wset_w":
                self.wset_w, self.pending = value, True
            case "wset_revert_s":
                self.revert_s, self.pending = value, True
            case "wset_mode":
                self.pending = True
            case "charge_limit_w":
                self.charge_limit_w, self.pending = value, True
            case "discharge_limit_w":
                self.discharge_limit_w, self.pending = value, True
            case "op_ctl":
                self.op_ctl, self.pending = int(value), True
            case "droop_enabled":
                self.droop_enabled, self.droop_pending = value == 1, True
            case "droop_dead_band_hz":
                self.dead_band_hz, self.droop_pending = value, True
            case "droop":
                self.droop, self.droop_pending = value, True
            case "controller_heartbeat":
                if int(value) != self.controller_hb:
                    self.controller_hb, self.hb_changed_at = int(value), t
                    if self.hb_lost:
                        self.hb_lost, self.pending = False, True
                        self.log.append(f"{t:.1f} s EMS heartbeat back: its controls apply "
                                        "again", logging.INFO, event="link_up")
            case _:
                pass  # alarm_reset: nothing latches on the EMS side

    def poll(self, t: float) -> list[Event]:
        out: list[Event] = []
        s = self.settings
        if s.heartbeat_timeout_s > 0 and self.controller_hb is not None \
                and not self.hb_lost and t - self.hb_changed_at > s.heartbeat_timeout_s:
            # Withdrawn whole and at once (not rate-limited): losing the EMS may only move
            # the gun to the fallback, never leave its limits standing as if it were live.
            self.hb_lost, self.pending = True, False
            self.log.append(f"{t:.1f} s EMS heartbeat silent for {s.heartbeat_timeout_s:g} s: "
                            "its setpoint and limits withdrawn (fallback)", event="link_lost")
            if self.offered:
                self.offered = False
                out.append(UpstreamCleared(t, s.source))
        if self.offered and not self.lapse_said and t >= self.expires_at:
            self.lapse_said = True  # the arbiter drops it at its expiry on its own
            self.log.append(f"{t:.1f} s EMS offer lapsed (no write within its "
                            f"{self.revert_s or s.default_validity_s:g} s): fallback",
                            event="lapsed")
        if self.droop_pending:
            self.droop_pending = False
            out.append(DroopSet(t, s.source, self.droop_enabled, self.dead_band_hz, self.droop))
        if self.hb_lost or not self.pending or t - self.last_sent < s.min_interval_s:
            return out
        self.pending, self.last_sent = False, t
        stopped = self.op_ctl == OP_STOP
        limited = stopped or math.isfinite(self.charge_limit_w) \
            or math.isfinite(self.discharge_limit_w)
        if not self.wset_enabled and not limited:
            if self.offered:
                self.offered = False
                out.append(UpstreamCleared(t, s.source))
            return out
        self.offered, self.lapse_said = True, False
        self.expires_at = t + (self.revert_s or s.default_validity_s)
        setpoint = self.wset_w if self.wset_enabled and not stopped else None
        charge = 0.0 if stopped else self.charge_limit_w
        discharge = 0.0 if stopped else self.discharge_limit_w
        # A WSet beyond the EMS's own WChaRteMax/WDisChaRteMax is held to them by the
        # core's upstream arbiter (limits bind), not here.
        out.append(UpstreamSetpoint(t, s.source, self.expires_at, setpoint=setpoint,
                                    charge_limit=charge, discharge_limit=discharge, unit="W"))
        return out

    def remaining_s(self, t: float) -> float:
        return max(self.expires_at - t, 0.0) if self.offered else 0.0
