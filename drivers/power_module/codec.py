"""Commands -> register words and register words -> events. Sans-I/O.

This is the only place where the agent's sign convention (+ = into the vehicle) meets the
module's mode register + current magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.core.commands import SetBleeder, SetContactors, SetModuleOutput, StartInsulationTest
from agent.core.events import DriverError, ModuleStatus
from drivers.power_module.regmap import Access, RegisterMap

SOURCE = "power_module"
MODE_CHARGE = 1
MODE_DISCHARGE = 2
INSULATION_ABOVE_RANGE_KOHM = 0xFFFF_FFFF

ModuleCommand = SetModuleOutput | SetContactors | SetBleeder | StartInsulationTest


@dataclass(frozen=True, slots=True)
class EncodedCommand:
    """Register words for one command. trigger=True: write even if the device already holds them."""

    words: Mapping[int, int]
    trigger: bool = False


def encode_command(regmap: RegisterMap, cmd: ModuleCommand, previous_mode: int) -> EncodedCommand:
    """Translate one command; ValueError (naming the register) if a value is NaN or out of range.

    previous_mode keeps the direction when current_a is exactly 0, so ramping a discharge down
    to zero does not flip the mode register for nothing.
    """
    def words(name: str, value: float) -> dict[int, int]:
        reg = regmap[name]
        return dict(zip(reg.addresses, reg.encode(value), strict=True))

    if isinstance(cmd, SetModuleOutput):
        if not cmd.enabled:
            # Turning off must never fail because of garbage setpoints riding along.
            return EncodedCommand(words("output_enable", 0))
        if not math.isfinite(cmd.current_a):
            raise ValueError(f"SetModuleOutput.current_a {cmd.current_a!r} is not finite")
        if cmd.current_a > 0:
            mode = MODE_CHARGE
        elif cmd.current_a < 0:
            mode = MODE_DISCHARGE
        else:
            mode = previous_mode if previous_mode in (MODE_CHARGE, MODE_DISCHARGE) else MODE_CHARGE
        return EncodedCommand({
            **words("mode", mode),
            **words("setpoint_voltage", cmd.voltage_v),
            **words("setpoint_current", abs(cmd.current_a)),
            **words("output_enable", 1),
        })
    if isinstance(cmd, SetContactors):
        return EncodedCommand(words("contactor_command", 1 if cmd.closed else 0))
    if isinstance(cmd, SetBleeder):
        return EncodedCommand(words("bleeder_command", 1 if cmd.on else 0))
    if isinstance(cmd, StartInsulationTest):
        return EncodedCommand(
            {**words("insulation_test_voltage", cmd.test_voltage_v),
             **words("insulation_test_request", 1)},
            trigger=True,
        )
    raise TypeError(f"not a power-module command: {cmd!r}")


def contiguous_runs(words: Mapping[int, int]) -> list[tuple[int, list[int]]]:
    """Group address->word into (start, values) runs, one FC16 request each."""
    runs: list[tuple[int, list[int]]] = []
    for address in sorted(words):
        if runs and runs[-1][0] + len(runs[-1][1]) == address:
            runs[-1][1].append(words[address])
        else:
            runs.append((address, [words[address]]))
    return runs


def command_readback(regmap: RegisterMap, block: Sequence[int]) -> dict[int, int]:
    """The rw registers as the device reports them, from one full-span read."""
    start = regmap.span.start
    out: dict[int, int] = {}
    for reg in regmap:
        if reg.access is Access.RW:
            for address in reg.addresses:
                if 0 <= address - start < len(block):
                    out[address] = block[address - start]
    return out


def decode_status(
    regmap: RegisterMap, t: float, block: Sequence[int]
) -> ModuleStatus | DriverError:
    """One full-span read -> ModuleStatus, or DriverError naming what was implausible.

    Never raises: whatever arrives on the bus, the core gets an event.
    """
    span = regmap.span
    if len(block) != len(span):
        return DriverError(t, SOURCE, f"status block has {len(block)} words, expected {len(span)}")
    try:
        def value(name: str) -> float:
            return regmap[name].decode(regmap.words_of(name, block, span.start))

        # Module convention: + = sourcing towards the vehicle, which is also ours.
        current_a = +value("output_current")
        poles = contactor_poles(int(value("contactor_feedback")))
        insulation_ohm: float | None = None
        if value("insulation_done") == 1:
            kohm = value("insulation_resistance")
            insulation_ohm = math.inf if kohm >= INSULATION_ABOVE_RANGE_KOHM else kohm * 1000.0
        return ModuleStatus(
            t=t,
            output_voltage_v=value("output_voltage"),
            output_current_a=current_a,
            gun_voltage_v=value("gun_voltage"),
            temperature_c=value("module_temperature"),
            # Pole by pole: both closed is "closed"; either closed is "any closed", so a
            # welded K1 alone never reads as open.
            contactors_closed=poles[0], contactors_any_closed=poles[1],
            fault_word=int(value("fault_word")),
            insulation_ohm=insulation_ohm,
            capability_current_a=value("capability_current"),
            capability_power_w=value("capability_power"),
            reverse_capability_current_a=value("capability_discharge_current"),
            reverse_capability_power_w=value("capability_discharge_power"),
            # 0 Hz: the stage is not synchronised to a grid, so nothing is measured.
            grid_frequency_hz=value("grid_frequency") or None,
            ac_power_w=value("ac_power"),
        )
    except (ValueError, TypeError) as exc:
        return DriverError(t, SOURCE, f"status rejected: {exc}")


def contactor_poles(feedback: int) -> tuple[bool, bool]:
    """(both K1 and K2 closed, at least one closed) from the mirror-contact bits."""
    poles = feedback & 0b11
    return poles == 0b11, poles != 0


def decode_status_payload(
    regmap: RegisterMap, t: float, payload: bytes
) -> ModuleStatus | DriverError:
    """Raw FC03 data bytes (big-endian words) -> status. Never raises."""
    if len(payload) % 2:
        return DriverError(t, SOURCE, f"status payload has odd length {len(payload)}")
    words = [int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload), 2)]
    return decode_status(regmap, t, words)
