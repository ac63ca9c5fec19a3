"""DC meter register words -> MeterReading. Sans-I/O; never raises."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.core.events import DriverError, MeterReading
from drivers.power_module.regmap import RegisterMap, load_register_map

SOURCE = "dc_meter"
MAP_PATH = Path(__file__).with_name("register_map.toml")


def load_meter_map(path: Path | None = None) -> RegisterMap:
    return load_register_map(path or MAP_PATH)


def decode_reading(regmap: RegisterMap, t: float,
                   block: Sequence[int]) -> MeterReading | DriverError:
    """One full-span read -> reading, or DriverError naming what was implausible."""
    span = regmap.span
    if len(block) != len(span):
        return DriverError(t, SOURCE, f"meter block has {len(block)} words, expected {len(span)}")
    try:
        def value(name: str) -> float:
            return regmap[name].decode(regmap.words_of(name, block, span.start))

        return MeterReading(t, value("voltage"), value("current"), value("power"),
                            value("energy_to_vehicle"), value("energy_from_vehicle"))
    except (ValueError, TypeError) as exc:
        return DriverError(t, SOURCE, f"meter reading rejected: {exc}")
