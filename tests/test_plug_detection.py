"""Detection point 1 (CC1): the bands of GB/T 18487.1 Annex B and the detector's
confirmation and loss, written from the clause's numbers (4 V / 6 V / 12 V, +-0.8 V)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.events import VehicleConnected, VehicleDisconnected
from agent.core.plug_detection import Cc1, PlugDetector, cc1_band

# The oracle's own numbers (not the module's constant, which a mutant could move along):
# the project's rule, 300 ms at 4 V before a plug-in is believed.
CONFIRM_S = 0.3


def test_bands_on_both_sides_of_each_window() -> None:
    for volts, band in ((12.0, Cc1.UNPLUGGED), (11.2, Cc1.UNPLUGGED), (12.8, Cc1.UNPLUGGED),
                        (6.0, Cc1.UNLATCHED), (5.2, Cc1.UNLATCHED), (6.8, Cc1.UNLATCHED),
                        (4.0, Cc1.CONNECTED), (3.2, Cc1.CONNECTED), (4.8, Cc1.CONNECTED),
                        (3.15, Cc1.ABNORMAL), (4.85, Cc1.ABNORMAL), (5.15, Cc1.ABNORMAL),
                        (6.85, Cc1.ABNORMAL), (11.1, Cc1.ABNORMAL), (12.9, Cc1.ABNORMAL),
                        (0.0, Cc1.ABNORMAL), (None, Cc1.ABNORMAL), (math.nan, Cc1.ABNORMAL),
                        (math.inf, Cc1.ABNORMAL)):
        assert cc1_band(volts) is band, (volts, band)


def test_a_plug_in_is_believed_after_the_confirmation_time_and_lost_at_once() -> None:
    d = PlugDetector()
    assert d.observe(0.0, 12.0, 1e9) is None
    assert d.observe(0.1, 4.0, 1e9) is None
    assert d.observe(0.2, 4.4, 1e9) is None  # bouncing inside the window still counts
    assert d.observe(0.1 + CONFIRM_S - 0.01, 4.0, 1e9) is None
    got = d.observe(0.1 + CONFIRM_S, 4.0, 1e9)
    assert isinstance(got, VehicleConnected) and got.wall_clock_s == 1e9
    assert d.observe(1.0, 4.0, 1e9) is None  # once
    assert isinstance(d.observe(1.1, 6.0, 1e9), VehicleDisconnected)  # latch released
    assert d.observe(1.2, 12.0, 1e9) is None


def test_a_bounce_out_of_the_window_restarts_the_confirmation() -> None:
    d = PlugDetector()
    d.observe(0.0, 4.0, 0.0)
    d.observe(0.2, 9.0, 0.0)  # a contact bouncing
    assert d.observe(0.35, 4.0, 0.0) is None
    assert d.observe(0.6, 4.0, 0.0) is None
    assert isinstance(d.observe(0.65, 4.0, 0.0), VehicleConnected)


readings = st.lists(st.tuples(st.floats(0.0, 0.5), st.one_of(
    st.sampled_from([4.0, 3.3, 4.7, 6.0, 12.0, 0.0, 8.0]), st.none(),
    st.floats(0.0, 14.0))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(readings)
def test_presence_follows_the_clause(steps: list[tuple[float, float | None]]) -> None:
    """Connected is said only after 4 V has held CONFIRM_S, lost at the first reading
    outside the 4 V window, and the two alternate."""
    d = PlugDetector()
    t, since, connected = 0.0, None, False
    for dt, volts in steps:
        t += dt
        four = volts is not None and math.isfinite(volts) and abs(volts - 4.0) <= 0.8 + 1e-9
        got = d.observe(t, volts, 0.0)
        if not four:
            since = None
            assert isinstance(got, VehicleDisconnected) if connected else got is None
            connected = False
            continue
        since = t if since is None else since
        should_connect = not connected and t - since >= CONFIRM_S - 1e-9
        assert isinstance(got, VehicleConnected) if should_connect else got is None
        connected = connected or should_connect
        assert d.connected is connected
