"""Physics of the power-module simulator, driven through its pure step() and register writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes

from hil.dc_link import TrivialBattery, terminal_voltage_v
from hil.module_sim import ModuleParams, ModuleSim

EPS = 1e-6


def write(sim: ModuleSim, **values: float) -> None:
    """Write registers by name, as the master would (also feeds the watchdog)."""
    for name, value in values.items():
        reg = sim.regmap[name]
        assert sim.accept_write(reg.address, reg.encode(value)) is None, name
    sim.since_last_request_s = 0.0


def charging(sim: ModuleSim, current_a: float, voltage_v: float = 500.0, mode: int = 1) -> None:
    write(sim, watchdog_timeout=10000, contactor_command=1, mode=mode,
          setpoint_voltage=voltage_v, setpoint_current=current_a, output_enable=1)


def test_current_rises_first_order_within_the_ramp_limit() -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
    charging(sim, 200.0)
    sim.step(0.1, battery)
    assert 0 < sim.current_a <= ModuleParams().ramp_a_per_s * 0.1 + EPS
    for _ in range(30):
        sim.step(0.1, battery)
    assert abs(sim.current_a - 200.0) < 1.0
    assert sim.output_voltage_v == terminal_voltage_v(battery, sim.current_a)
    assert battery.charge_in_ah > 0


def test_discharge_flows_out_of_the_battery() -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
    charging(sim, 80.0, voltage_v=200.0, mode=2)
    for _ in range(30):
        sim.step(0.1, battery)
    assert abs(sim.current_a + 80.0) < 1.0
    assert battery.charge_in_ah < 0
    assert sim.gun_voltage_v < battery.open_circuit_voltage_v


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            # Values between the register's 0.1 A steps too (0.0625 A once failed here).
            st.floats(0.0, 300.0), st.floats(0.0, 1000.0), st.sampled_from([1, 2]),
            st.floats(0.001, 0.5), st.floats(20.0, 90.0),
        ),
        min_size=1, max_size=40,
    )
)
def test_current_never_exceeds_setpoint_capability_or_ramp(
    steps: list[tuple[float, float, int, float, float]],
) -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True, soc=0.3)
    p = sim.params
    for current, voltage, mode, dt, temperature in steps:
        sim.temperature_c = temperature
        previous = sim.current_a
        charging(sim, current, voltage, mode)
        sim.step(dt, battery)
        cap_i, cap_p = sim.capability()
        sign = 1.0 if mode == 1 else -1.0
        # Direction follows the mode; magnitude never above setpoint (or where it came from),
        # never above the derated capability and power; growth never faster than the ramp.
        assert sign * sim.current_a >= -EPS
        assert abs(sim.current_a) <= max(abs(previous), current) + EPS
        assert abs(sim.current_a) <= cap_i + EPS
        assert abs(sim.current_a) * battery.open_circuit_voltage_v <= cap_p + 1e-3
        assert abs(sim.current_a) - abs(previous) <= p.ramp_a_per_s * dt + EPS
        terminal = terminal_voltage_v(battery, sim.current_a)
        # The voltage loop regulates at the end of the step, on the OCV the step left behind,
        # to the setpoint the register holds (the nearest 0.1 V to what was written).
        held_v = sim.regmap["setpoint_voltage"].decode(sim.regmap["setpoint_voltage"]
                                                       .encode(voltage))
        assert abs(held_v - voltage) <= 0.05 + EPS
        if sim.current_a > EPS:
            assert terminal <= held_v + EPS  # CV: never above the voltage setpoint
        if sim.current_a < -EPS:
            assert terminal >= held_v - EPS  # discharge: never pulled below it


def test_no_current_without_both_contactor_pairs() -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=False)
    charging(sim, 100.0, voltage_v=420.0)
    for _ in range(20):
        sim.step(0.05, battery)
    assert sim.current_a == 0.0
    assert abs(sim.gun_voltage_v - 420.0) < 1.0  # K1/K2 closed: gun shows the module output


def test_derating_above_55_and_trip_at_75_degrees() -> None:
    # Derating reaches 0 A at the trip point, so self-heating alone settles below it; a trip
    # needs hot surroundings (fan failure) on top of the idle losses.
    hot = ModuleParams(ambient_c=74.5)
    sim, battery = ModuleSim(hot), TrivialBattery(contactors_closed=True, capacity_ah=1e6)
    sim.temperature_c = 60.0
    assert 0.0 < sim.capability()[0] < hot.max_current_a
    charging(sim, 250.0)
    tripped_at = None
    for i in range(3000):
        sim.since_last_request_s = 0.0  # the master keeps polling
        sim.step(0.1, battery)
        assert abs(sim.current_a) <= sim.capability()[0] + EPS or not sim.output_on
        if sim.faults & sim.regmap["fault_word"].bit("over_temperature"):
            tripped_at = i
            break
    assert tripped_at is not None and sim.temperature_c >= hot.trip_c - 0.5
    assert not sim.output_on and sim.current_a == 0.0
    assert sim.regs[sim.regmap["output_enable"].address] == 0


def test_forced_over_temperature_switches_off_at_once() -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
    charging(sim, 100.0)
    for _ in range(10):
        sim.step(0.1, battery)
    sim.force_over_temperature = True
    sim.step(0.01, battery)
    assert sim.current_a == 0.0 and not sim.output_on
    assert sim.faults & sim.regmap["fault_word"].bit("over_temperature")


def test_watchdog_counts_simulated_time_since_the_last_request() -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
    charging(sim, 100.0)
    write(sim, watchdog_timeout=1000)
    watchdog = sim.regmap["fault_word"].bit("watchdog_expired")
    for _ in range(9):
        sim.step(0.1, battery)
    assert sim.output_on and not sim.faults & watchdog
    sim.step(0.1, battery)
    sim.step(0.1, battery)
    assert sim.faults & watchdog and not sim.output_on and sim.current_a == 0.0
    write(sim, output_enable=1)  # a deliberate restart clears the fault
    sim.step(0.1, battery)
    assert sim.output_on and not sim.faults & watchdog


def test_welded_contactor_keeps_feedback_and_coupling() -> None:
    sim, battery = ModuleSim(), TrivialBattery(contactors_closed=True)
    sim.welded_contactor = True
    write(sim, watchdog_timeout=10000, contactor_command=0)
    sim.step(0.1, battery)
    assert sim.contactors_closed
    assert abs(sim.gun_voltage_v - battery.open_circuit_voltage_v) < EPS
    assert sim.faults & sim.regmap["fault_word"].bit("contactor_mismatch")


def test_bleeder_brings_the_gun_below_60_v_within_1_s() -> None:
    sim = ModuleSim()
    write(sim, watchdog_timeout=10000, contactor_command=1, setpoint_voltage=1000.0,
          setpoint_current=1.0, output_enable=1)
    for _ in range(20):
        sim.step(0.05)
    assert sim.gun_voltage_v > 990.0
    write(sim, output_enable=0, contactor_command=0, bleeder_command=1)
    for _ in range(20):
        sim.step(0.05)
    assert sim.gun_voltage_v < 60.0


def test_insulation_result_needs_the_test_voltage_for_one_second() -> None:
    sim = ModuleSim()
    sim.insulation_ohm = 250e3
    write(sim, watchdog_timeout=10000, contactor_command=1, insulation_test_voltage=500.0,
          insulation_test_request=1)
    for _ in range(30):  # output still off: no result however long we wait
        sim.step(0.1)
    assert sim.regs[sim.regmap["insulation_done"].address] == 0
    write(sim, setpoint_voltage=500.0, setpoint_current=2.0, output_enable=1)
    for _ in range(9):
        sim.step(0.1)
    assert sim.regs[sim.regmap["insulation_done"].address] == 0
    for _ in range(5):
        sim.step(0.1)
    reg = sim.regmap["insulation_resistance"]
    words = sim.regs[reg.address : reg.address + 2]
    assert sim.regs[sim.regmap["insulation_done"].address] == 1
    assert reg.decode(words) == 250.0  # kOhm
    assert sim.regs[sim.regmap["insulation_test_request"].address] == 0


def test_firmware_rejects_bad_writes() -> None:
    sim = ModuleSim()
    assert sim.accept_write(sim.regmap["mode"].address, [7]) == ExcCodes.ILLEGAL_VALUE
    assert sim.accept_write(sim.regmap["gun_voltage"].address, [1]) == ExcCodes.ILLEGAL_ADDRESS
    assert sim.accept_write(10, [1]) == ExcCodes.ILLEGAL_ADDRESS
