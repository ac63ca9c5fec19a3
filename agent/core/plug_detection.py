"""Is a vehicle on the gun? Detection point 1 (CC1) read from the gun's I/O board.

GB/T 18487.1-2015 Annex B (Figure B.1, Table B.1) [V]: the charger pulls CC1 up to 12 V
through R1. In the holster CC1 reads 12 V; plugged in with the latch switch S open (the
driver holds the release button) 6 V; plugged in and latched 4 V. Each nominal value has
a window of +-0.8 V. Only the 4 V window is "connected": a 6 V reading means the plug is
being pulled, and anything outside the three windows is a broken line. Both end a
session (B.4.7.5: CC1 abnormal -> current <= 5 A within 50 ms, which the safety board's
hardware holds; this is the supervisor's answer at its poll).

Sans-I/O: readings in (volts, with their time), presence changes out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from agent.core.events import VehicleConnected, VehicleDisconnected
from agent.core.timing import Timing


class Cc1(Enum):
    UNPLUGGED = "unplugged"  # 12 V
    UNLATCHED = "unlatched"  # 6 V: in the socket, latch switch S open
    CONNECTED = "connected"  # 4 V
    ABNORMAL = "abnormal"  # outside every window: an open or shorted line


# GB/T 18487.1-2015 Table B.1 [V]: nominal U1 and its tolerance.
CC1_WINDOW_V = 0.8
CC1_NOMINAL_V = ((12.0, Cc1.UNPLUGGED), (6.0, Cc1.UNLATCHED), (4.0, Cc1.CONNECTED))

# A plug-in is believed once CC1 has read 4 V this long: a plug slides over its contacts
# (tens of ms of bounce) before the latch settles. Project rule; the standard times the
# charger's reaction to CC1 loss, not its confirmation of a connection.
CONNECT_CONFIRM = Timing(0.3, "project rule: CC1 at 4 V for 300 ms before a session starts")


def cc1_band(volts: float | None) -> Cc1:
    if volts is None or not math.isfinite(volts):
        return Cc1.ABNORMAL
    for nominal, band in CC1_NOMINAL_V:
        if abs(volts - nominal) <= CC1_WINDOW_V + 1e-9:  # the edge is inside
            return band
    return Cc1.ABNORMAL


@dataclass
class PlugDetector:
    """CC1 readings -> VehicleConnected once 4 V has held CONNECT_CONFIRM;
    VehicleDisconnected at the first reading outside the 4 V window after that."""

    connected: bool = False
    band: Cc1 = Cc1.UNPLUGGED
    _four_volts_since: float | None = None

    def observe(self, t: float, volts: float | None,
                wall_clock_s: float) -> VehicleConnected | VehicleDisconnected | None:
        self.band = cc1_band(volts)
        if self.band is not Cc1.CONNECTED:
            self._four_volts_since = None
            if self.connected:
                self.connected = False
                return VehicleDisconnected(t)
            return None
        if self.connected:
            return None
        if self._four_volts_since is None:
            self._four_volts_since = t
        if t - self._four_volts_since >= CONNECT_CONFIRM.seconds - 1e-9:
            self.connected = True
            return VehicleConnected(t, wall_clock_s=wall_clock_s)
        return None
