"""What the power module's fault word means to the session.

The bit numbers are the register map's (`drivers/power_module/register_map.toml`,
fault_word); a test checks the two agree. Each bit says whether it is an emergency
(open K1/K2 at once: the module can no longer be trusted to control current) and
whether it latches (needs service before the next session).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.messages import ChargerFault


@dataclass(frozen=True, slots=True)
class ModuleFaultBit:
    name: str
    emergency: bool
    latched: bool
    cst: ChargerFault


MODULE_FAULT_BITS: dict[int, ModuleFaultBit] = {
    0: ModuleFaultBit("over_temperature", False, False, ChargerFault.INTERNAL_OVER_TEMPERATURE),
    1: ModuleFaultBit("over_voltage", True, True, ChargerFault.OTHER),
    2: ModuleFaultBit("over_current", True, True, ChargerFault.OTHER),
    3: ModuleFaultBit("internal", True, True, ChargerFault.OTHER),
    4: ModuleFaultBit("watchdog_expired", False, False, ChargerFault.ENERGY_UNAVAILABLE),
    5: ModuleFaultBit("contactor_mismatch", True, True, ChargerFault.OTHER),
    6: ModuleFaultBit("input_fault", False, False, ChargerFault.ENERGY_UNAVAILABLE),
    # Grid side of the bidirectional stage: the stage has already stopped inverting (its own
    # protection), so the session ends with an error shutdown, not latched: the grid recovers.
    7: ModuleFaultBit("grid_over_voltage", False, False, ChargerFault.ENERGY_UNAVAILABLE),
    8: ModuleFaultBit("grid_under_voltage", False, False, ChargerFault.ENERGY_UNAVAILABLE),
    9: ModuleFaultBit("grid_frequency", False, False, ChargerFault.ENERGY_UNAVAILABLE),
    10: ModuleFaultBit("anti_islanding", False, False, ChargerFault.ENERGY_UNAVAILABLE),
}


def active_faults(word: int) -> list[ModuleFaultBit]:
    """Known faults set in the word; an unknown bit counts as an internal fault."""
    out = [bit for n, bit in MODULE_FAULT_BITS.items() if word >> n & 1]
    unknown = word & ~sum(1 << n for n in MODULE_FAULT_BITS)
    if unknown:
        out.append(ModuleFaultBit(f"unknown_bits_0x{unknown:04X}", True, True,
                                  ChargerFault.OTHER))
    return out
