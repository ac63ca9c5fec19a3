"""K1/K2 feedback watchdog: the contactors' feedback must follow the command within
CONTACTOR_FEEDBACK (GB/T 18487.1-2015 B.4.7.1), in every state, judged on new samples."""

from __future__ import annotations

from agent.core.commands import Command, SetContactors, StateChanged
from agent.core.events import (
    FaultsCleared,
    ModuleStatus,
    Tick,
    VehicleConnected,
    VehicleMessage,
)
from agent.core.messages import BHM
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State


def _status(t: float, closed: bool, volts: float = 0.0) -> ModuleStatus:
    return ModuleStatus(t=t, output_voltage_v=volts, output_current_a=0.0, gun_voltage_v=volts,
                        temperature_c=30.0, contactors_closed=closed, fault_word=0)


def _run(s: GunSession, t0: float, t1: float, closed: bool) -> list[Command]:
    """Polls every 100 ms from t0 to t1 with the given feedback, ticking every 10 ms."""
    out: list[Command] = []
    for i in range(round((t1 - t0) / 0.01)):
        t = round(t0 + i * 0.01, 6)
        if i % 10 == 0:
            out += s.handle(_status(t, closed))
        out += s.handle(Tick(t))
    return out


def test_a_contactor_welded_while_idle_latches_and_blocks_the_next_start() -> None:
    s = GunSession(GunRatings())
    out = _run(s, 0.0, 1.5, closed=True)
    assert s.state is State.FAULT
    assert "welding" in s.safety.latched
    assert any(isinstance(c, StateChanged) and "welded" in c.reason for c in out)
    s.handle(VehicleConnected(1.5))
    assert s.state is State.FAULT  # no session onto a welded contactor


def test_a_stale_closed_reading_does_not_re_raise_the_fault_after_service() -> None:
    s = GunSession(GunRatings())
    _run(s, 0.0, 1.5, closed=True)
    s.handle(FaultsCleared(1.5, "service"))
    assert s.state is State.IDLE
    # The bus owner delivers the last poll before the repair after the clear.
    s.handle(_status(1.45, closed=True))
    s.handle(Tick(1.51))
    assert s.state is State.IDLE
    _run(s, 1.6, 3.0, closed=False)
    assert s.state is State.IDLE and not s.safety.latched


def test_a_weld_that_persists_after_service_faults_again() -> None:
    s = GunSession(GunRatings())
    _run(s, 0.0, 1.5, closed=True)
    s.handle(FaultsCleared(1.5, "service"))
    _run(s, 1.6, 2.5, closed=True)
    assert s.state is State.IDLE  # not yet: 1 s from the clear
    _run(s, 2.5, 2.8, closed=True)
    assert s.state is State.FAULT and "welding" in s.safety.latched


def test_a_contactor_that_does_not_close_for_the_insulation_check_is_a_fault() -> None:
    s = GunSession(GunRatings())
    s.handle(VehicleConnected(0.0))
    s.handle(VehicleMessage(0.0, BHM(500.0)))
    out = _run(s, 0.0, 0.5, closed=False)
    assert s.state is State.INSULATION_CHECK
    assert SetContactors(True) in out
    out = _run(s, 0.5, 1.3, closed=False)
    assert s.state is State.FAULT
    assert any(isinstance(c, StateChanged) and "did not close" in c.reason for c in out)
    assert SetContactors(False) in out


def test_feedback_that_follows_within_the_deadline_is_not_a_fault() -> None:
    s = GunSession(GunRatings())
    s.handle(VehicleConnected(0.0))
    s.handle(VehicleMessage(0.0, BHM(500.0)))
    _run(s, 0.0, 0.9, closed=False)  # the relay answers just inside 1 s
    _run(s, 0.9, 1.5, closed=True)
    assert s.state is State.INSULATION_CHECK


def test_one_welded_pole_of_two_is_found_through_the_register_codec() -> None:
    """K1 welded, K2 healthy: the mirror contacts read 0b01. Decoded by the real register
    codec (hil/plant.py polls the module simulator's registers), commanded open, that is a
    weld; read as 'both closed' (0b11 only) it would pass as open. The module here has no
    mismatch fault bit of its own: the agent's feedback watchdog must find it."""
    from hil.ev_bms import VehicleConfig
    from hil.plant import InProcessPile

    for pole in (0b01, 0b10):
        p = InProcessPile(vehicle=VehicleConfig(start_soc_pct=50.0, target_soc_pct=51.0))
        p.module.welded_poles, p.module.reports_mismatch = pole, False
        p.plug_in()
        p.run_until(lambda q: q.session.state in (State.FINISHED, State.FAULT), 600)
        assert p.session.state is State.FAULT, f"pole {pole:02b}: {p.session.state.value}"
        assert "welding" in p.session.safety.latched, p.session.safety.latched


def test_a_pole_that_does_not_close_is_found_through_the_register_codec() -> None:
    from drivers.power_module.codec import contactor_poles

    assert contactor_poles(0b11) == (True, True)
    assert contactor_poles(0b01) == (False, True) and contactor_poles(0b10) == (False, True)
    assert contactor_poles(0b00) == (False, False)
    # Commanded closed, one pole open: "not closed", so the feedback watchdog fires.
    s = GunSession(GunRatings())
    s.act.contactors_closed, s.act.contactors_changed_at = True, 0.0
    for i in range(200):
        t = i * 0.01
        if i % 10 == 0:
            s.handle(ModuleStatus(t=t, output_voltage_v=0.0, output_current_a=0.0,
                                  gun_voltage_v=0.0, temperature_c=30.0, contactors_closed=False,
                                  fault_word=0, contactors_any_closed=True))
        s.handle(Tick(t))
    assert s.state is State.FAULT and "did not close" in s.data.outcome_reason
