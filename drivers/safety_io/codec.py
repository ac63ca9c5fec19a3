"""Register blocks of the I/O board and the IMD ⇄ core events. Never raises on input."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from agent.core.events import Event, InsulationStatus, SafetyInputs, TemperatureReading
from drivers.power_module.regmap import RegisterMap, load_register_map
from drivers.safety_io.pt1000 import celsius_from_ohm

IO_MAP_PATH = Path(__file__).with_name("io_board_map.toml")
IMD_MAP_PATH = Path(__file__).with_name("imd_map.toml")
IMD_ABOVE_RANGE_KOHM = 0xFFFF_FFFF
SENSORS = (("connector_dc_plus_ohm", "connector_dc_plus"),
           ("connector_dc_minus_ohm", "connector_dc_minus"), ("cable_ohm", "cable"))


def load_io_map() -> RegisterMap:
    return load_register_map(IO_MAP_PATH)


def load_imd_map() -> RegisterMap:
    return load_register_map(IMD_MAP_PATH)


def _raw(regmap: RegisterMap, name: str, words: Sequence[int]) -> float | None:
    reg = regmap[name]
    start = reg.address - regmap.span.start
    chunk = list(words[start:start + reg.width])
    if len(chunk) != reg.width or any(not 0 <= w <= 0xFFFF for w in chunk):
        return None
    value = 0
    for w in chunk:
        value = value << 16 | w
    return value * reg.scale


def decode_io(regmap: RegisterMap, t: float, words: Sequence[int]) -> list[Event]:
    """Temperatures (NaN °C when implausible, always with raw ohm) and the inputs."""
    events: list[Event] = []
    for reg_name, sensor in SENSORS:
        ohm = _raw(regmap, reg_name, words)
        events.append(TemperatureReading(
            t, sensor, math.nan if ohm is None else celsius_from_ohm(ohm), raw_ohm=ohm))
    inputs = _raw(regmap, "inputs", words)
    bits = regmap["inputs"]
    if inputs is None:
        # Unknown inputs are read as the unsafe case: pressed, open, tripped.
        return [*events, SafetyInputs(t, emergency_stop=True, door_open=True,
                                      gun_locked=False, safety_relay_tripped=True)]
    word = int(inputs)
    cc1 = _raw(regmap, "cc1_voltage", words) if "cc1_voltage" in regmap.registers else None
    events.append(SafetyInputs(
        t,
        emergency_stop=not word & bits.bit("estop_loop_closed"),
        door_open=not word & bits.bit("door_closed"),
        gun_locked=bool(word & bits.bit("gun_locked")),
        safety_relay_tripped=bool(word & bits.bit("safety_relay_tripped")),
        trip_by_heartbeat=bool(word & bits.bit("safety_relay_tripped"))
        and bool(word & bits.bit("tripped_by_heartbeat")),
        cc1_voltage_v=cc1,
    ))
    return events


def decode_imd(regmap: RegisterMap, t: float, words: Sequence[int]) -> InsulationStatus:
    status = _raw(regmap, "status", words)
    kohm = _raw(regmap, "resistance", words)
    if status is None or kohm is None:
        return InsulationStatus(t, None, measurement_done=False, device_fault=True)
    bits = regmap["status"]
    word = int(status)
    valid = bool(word & bits.bit("measurement_valid"))
    ohm = math.inf if kohm == IMD_ABOVE_RANGE_KOHM else kohm * 1000.0
    return InsulationStatus(t, ohm if valid else None, measurement_done=valid,
                            device_fault=bool(word & bits.bit("device_fault")))
