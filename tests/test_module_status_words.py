"""The power module read through fixed register words, written here from the device's
documented layout (address, type, scale, sign), not with the project's encoder: a wrong
scale, sign or pole in register_map.toml is found (issue 25). And each fault bit of the
documented fault word, raised while charging, gets the reaction its meaning asks for."""

from __future__ import annotations

import math

import pytest

from agent.core.events import ModuleStatus
from agent.core.states import State
from drivers.power_module.codec import decode_status
from drivers.power_module.regmap import load_register_map
from tests.safety_world import MODULE_FAULT_REACTION, TICK, SafetyWorld

MAP = load_register_map()

# Addresses 16-31 of the documented layout (one FC03 over 0-31); words in hex as a module
# would send them: 400.0 V (0.1 V) = 4000 = 0x0FA0; -12.3 A (int16, 0.1 A) = -123 = 0xFF85;
# 398.7 V = 0x0F93; 41.5 degC = 415 = 0x019F; feedback both poles = 3; no fault; output on;
# 1,500 kohm (uint32, high word first) = 0x0000 0x05DC; insulation done = 1; capability
# 207.5 A = 0x081B, 150 kW (10 W) = 15000 = 0x3A98; reverse 180.2 A = 0x070A, 90 kW = 9000
# = 0x2328; 50.02 Hz (0.01 Hz) = 5002 = 0x138A; AC -5 kW (10 W, int16) = -500 = 0xFE0C.
WORDS = {16: 0x0FA0, 17: 0xFF85, 18: 0x0F93, 19: 0x019F, 20: 0x0003, 21: 0x0000,
         22: 0x0001, 23: 0x0000, 24: 0x05DC, 25: 0x0001, 26: 0x081B, 27: 0x3A98,
         28: 0x070A, 29: 0x2328, 30: 0x138A, 31: 0xFE0C}


def test_a_status_of_documented_words_reads_as_the_device_means_it() -> None:
    block = [WORDS.get(a, 0) for a in MAP.span]
    st = decode_status(MAP, 1.0, block)
    assert isinstance(st, ModuleStatus), st
    expected = {"output_voltage_v": 400.0, "output_current_a": -12.3, "gun_voltage_v": 398.7,
                "temperature_c": 41.5, "capability_current_a": 207.5,
                "capability_power_w": 150_000.0, "reverse_capability_current_a": 180.2,
                "reverse_capability_power_w": 90_000.0, "grid_frequency_hz": 50.02,
                "ac_power_w": -5_000.0, "insulation_ohm": 1_500_000.0}
    for field, value in expected.items():
        assert math.isclose(getattr(st, field), value, abs_tol=1e-6), (field, getattr(st, field))
    assert st.contactors_closed and st.contactors_any_closed and st.fault_word == 0


@pytest.mark.parametrize(("bits", "both", "any_"), [(0b00, False, False), (0b01, False, True),
                                                      (0b10, False, True), (0b11, True, True)])
def test_contactor_feedback_pole_by_pole(bits: int, both: bool, any_: bool) -> None:
    """Bit 0 K1 (DC+), bit 1 K2 (DC-): one welded pole alone is never 'open'."""
    block = [{**WORDS, 20: bits}.get(a, 0) for a in MAP.span]
    st = decode_status(MAP, 1.0, block)
    assert isinstance(st, ModuleStatus)
    assert (st.contactors_closed, st.contactors_any_closed) == (both, any_)


# The documented fault bits and what each must do while charging: the world's table
# (tests/safety_world.py MODULE_FAULT_REACTION, written from each bit's meaning and clauses).
FAULT_BITS = {name: (emergency, latched)
              for name, emergency, latched in MODULE_FAULT_REACTION.values()}


def test_every_documented_fault_bit_is_classified() -> None:
    assert {n: name for n, (name, _e, _l) in MODULE_FAULT_REACTION.items()} \
        == dict(MAP["fault_word"].bits)


@pytest.mark.parametrize("name", sorted(FAULT_BITS))
def test_each_fault_bit_gets_its_reaction(name: str) -> None:
    emergency, latched = FAULT_BITS[name]
    bit = next(n for n, v in MAP["fault_word"].bits.items() if v == name)
    w = SafetyWorld()
    w.plug(bhm=800.0, bcp_max_a=200.0, bcp_max_v=500.0, battery_v=380.0, demand=150.0,
           lie=1.0, grid_kw=float("inf"), mute="", require_io=False)
    for _ in range(round(8.0 / TICK)):
        w.tick()
    assert w.s.state is State.CHARGING and w.plant.current_a > 50.0
    w.plant.fault_word = 1 << bit
    w.plant.current_stuck = True  # the current does not fall: only an emergency opens now
    for _ in range(round(0.3 / TICK)):
        w.tick()
    assert w.s.state is State.FAULT, (name, w.s.state)
    assert not w.plant.enabled
    assert (not w.plant.k12_cmd) is emergency, (name, "K1/K2 commanded open at once")
    assert (name in " ".join(w.s.safety.latched) or any(
        name in code for code in w.s.safety.latched)) is latched, (name, w.s.safety.latched)
