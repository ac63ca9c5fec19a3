"""The matrix board's register blocks ⇄ core events and commands. Never raises on input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.core.commands import SetMatrix
from agent.core.events import MatrixStatus
from drivers.power_module.regmap import RegisterMap, RegisterMapError, load_register_map

MAP_PATH = Path(__file__).with_name("matrix_map.toml")


def load_matrix_map() -> RegisterMap:
    regmap = load_register_map(MAP_PATH)
    stride = regmap.meta.get("block_stride")
    if not isinstance(stride, int) or stride < len(regmap.span):
        raise RegisterMapError(f"{MAP_PATH}: block_stride must cover one group's block")
    return regmap


def stride(regmap: RegisterMap) -> int:
    return int(regmap.meta["block_stride"])


# Modbus Application Protocol V1.1b3 §6.3: at most 125 registers per read.
MAX_READ_REGISTERS = 125


def read_chunks(regmap: RegisterMap, n_groups: int) -> list[tuple[int, int]]:
    """(first address, count) of the reads that cover every group's block, whole blocks per
    read; the words they return, concatenated, are what `decode_status` takes."""
    per_read = max(1, MAX_READ_REGISTERS // stride(regmap))
    out = []
    for first in range(0, n_groups, per_read):
        n = min(per_read, n_groups - first)
        out.append((regmap.span.start + first * stride(regmap), n * stride(regmap)))
    return out


def _word(regmap: RegisterMap, words: Sequence[int], group: int, name: str) -> int | None:
    at = group * stride(regmap) + regmap[name].address - regmap.span.start
    value = words[at] if at < len(words) else None
    return value if isinstance(value, int) and 0 <= value <= 0xFFFF else None


def fault_names(regmap: RegisterMap, word: int) -> str:
    bits = regmap["fault_word"].bits
    names = [bits.get(i, f"bit{i}") for i in range(16) if word >> i & 1]
    return ", ".join(names)


def decode_status(regmap: RegisterMap, t: float, words: Sequence[int],
                  n_groups: int) -> MatrixStatus:
    """A group whose words are missing or implausible reads as faulted and open."""
    feedback: list[int] = []
    faults: list[str] = []
    amps: list[float] = []
    for g in range(n_groups):
        fb, fw = _word(regmap, words, g, "contactor_feedback"), _word(regmap, words, g,
                                                                       "fault_word")
        cur = _word(regmap, words, g, "output_current")
        feedback.append(fb if fb is not None else 0)
        faults.append("unreadable block" if fb is None or fw is None
                      else fault_names(regmap, fw))
        amps.append(regmap["output_current"].decode([cur]) if cur is not None else 0.0)
    return MatrixStatus(t, tuple(feedback), tuple(faults), tuple(amps))


def encode_command(regmap: RegisterMap, command: SetMatrix) -> tuple[int, list[int]]:
    """(address, words) to write; ValueError for a group or mask the board cannot take."""
    limit = int(regmap.meta.get("max_groups", 16))
    if not 0 <= command.group < limit:
        raise ValueError(f"matrix group {command.group} outside 0..{limit - 1}")
    reg = regmap["contactor_command"]
    return command.group * stride(regmap) + reg.address, reg.encode(command.closed_guns)
