"""A BMS that answers the charger as a recorded vehicle did (a candump trace).

`load_recording` takes the vehicle's side of a trace: every message the BMS sent, as the
bytes it sent (multi-packet ones reassembled from their TP.DT frames), in order, with
the recorded periods when the logger's timestamps advance. `ReplayBms` runs the same
phase logic as the simulated BMS, reacting to this charger's CHM, CRM, CML/CTS, CRO and
CST, and in each phase sends the recorded bytes of each message in recorded order (the
last one held once a message's recording runs out). Where the trace has no recording of
a message (a car that was never asked for it, or a transfer the recorded charger never
accepted), the simulated BMS's own message goes out (optional ones, BMV, BMT and BSP, stay
unsent), built from a battery sized by what
the trace does show (BHM, BRM, BCP, BCS); the report says which was which.

Not replayed: BEM, which a car sends about the *recorded* charger's timeouts.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.messages import BCP, BCS, BHM, BRM, CST, BmsMessage, GbtMessage
from drivers.gbt27930.candump import read_candump
from drivers.gbt27930.codec import PGN, PRIORITY, TYPE_BY_PGN, decode, name_of
from drivers.gbt27930.link import BMS_ADDRESS, CHARGER_ADDRESS
from drivers.gbt27930.tp import CM_RTS, PGN_TP_CM, PGN_TP_DT
from hil.ev_battery import BatteryParams
from hil.ev_bms import PERIOD_S, BmsSimulator, VehicleConfig

NOT_REPLAYED = frozenset({"BEM"})
# Sent only when the recorded car sent them: GB/T 27930-2015 makes them optional, and a
# replay must not show the charger cell data the real car never gave.
OPTIONAL = frozenset({"BMV", "BMT", "BSP"})
# A period measured from fewer intervals than this is noise, not the car's period.
_MIN_INTERVALS = 3


@dataclass(frozen=True, slots=True)
class RawPayload:
    """A message's bytes as the recorded car sent them."""

    pgn: int
    priority: int
    payload: bytes


@dataclass
class Recording:
    path: str
    payloads: dict[str, list[bytes]] = field(default_factory=dict)  # BMS message -> bytes
    periods_s: dict[str, float] = field(default_factory=dict)  # measured, where possible
    announced: dict[str, int] = field(default_factory=dict)  # TP sizes never transferred
    charger_stop: CST | None = None  # the recorded charger's CST, if it stopped the session
    frames: int = 0

    def first(self, cls: type[GbtMessage]) -> GbtMessage | None:
        """The first recorded message of a type that decodes, else None."""
        for raw in self.payloads.get(cls.__name__, []):
            try:
                return decode(PGN[cls], raw)
            except ValueError:
                continue
        return None


def load_recording(path: str | Path) -> Recording:
    rec = Recording(str(path))
    times: dict[str, list[float]] = {}
    transfer: tuple[int, int, bytearray] | None = None  # (PGN, size, data) from the BMS
    for ts, ident, data in read_candump(path):
        rec.frames += 1
        pf, dest, source = (ident >> 16) & 0xFF, (ident >> 8) & 0xFF, ident & 0xFF
        pgn = pf << 8
        if source == CHARGER_ADDRESS and TYPE_BY_PGN.get(pgn) is CST:
            try:
                stop = decode(pgn, data)
            except ValueError:
                continue  # a garbled CST says nothing about how the session ended
            rec.charger_stop = stop if isinstance(stop, CST) else None
        if source != BMS_ADDRESS or dest != CHARGER_ADDRESS:
            continue
        if pgn == PGN_TP_CM:
            if len(data) >= 8 and data[0] == CM_RTS:
                size, tp_pgn = int.from_bytes(data[1:3], "little"), data[6] << 8
                transfer = (tp_pgn, size, bytearray())
                if name_of(tp_pgn) not in rec.payloads:
                    rec.announced.setdefault(name_of(tp_pgn), size)
            continue
        if pgn == PGN_TP_DT:
            if transfer is None or len(data) < 2:
                continue
            tp_pgn, size, buf = transfer
            buf += data[1:8]
            if len(buf) < size:
                continue
            transfer, pgn, data = None, tp_pgn, bytes(buf[:size])
        name = name_of(pgn)
        if name in NOT_REPLAYED or pgn not in TYPE_BY_PGN:
            continue
        rec.payloads.setdefault(name, []).append(bytes(data))
        rec.announced.pop(name, None)
        times.setdefault(name, []).append(ts)
    for name, stamps in times.items():
        steps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
        if len(steps) >= _MIN_INTERVALS:
            rec.periods_s[name] = statistics.median(steps)
    if not rec.payloads and not rec.announced:
        raise RecordingError(f"{path}: no GB/T 27930 frames from a BMS (source 0x{BMS_ADDRESS:02X} "
                             f"to 0x{CHARGER_ADDRESS:02X}) in {rec.frames} candump lines")
    return rec


class RecordingError(ValueError):
    """A trace with nothing of a vehicle in it to replay."""


def vehicle_config(rec: Recording) -> VehicleConfig:
    """A battery the recorded car could have: its BCP (or BHM) voltages, its SOC, its rated
    capacity, and an OCV curve scaled so the battery reads what the car reported."""
    bcp, brm, bhm, bcs = rec.first(BCP), rec.first(BRM), rec.first(BHM), rec.first(BCS)
    default = VehicleConfig()
    max_cell = bcp.max_cell_voltage_v if isinstance(bcp, BCP) and bcp.max_cell_voltage_v \
        else default.max_cell_voltage_v
    if isinstance(bcp, BCP) and bcp.max_total_voltage_v > 0:
        max_total = bcp.max_total_voltage_v
    elif isinstance(bhm, BHM) and bhm.max_charge_voltage_v > 0:
        max_total = bhm.max_charge_voltage_v
    else:
        max_total = default.max_total_voltage_v
    # Series cells, kept to what a traction pack has (an odd BCP must not build a model of
    # thousands of cells; the OCV scale below still matches the reported voltage).
    cells = min(max(1, round(max_total / max_cell)), 400)
    soc = bcp.soc_pct if isinstance(bcp, BCP) else default.start_soc_pct
    if isinstance(bcp, BCP) and bcp.battery_voltage_v > 0:
        volts = bcp.battery_voltage_v
    elif isinstance(bcs, BCS) and bcs.measured_voltage_v > 0:
        volts = bcs.measured_voltage_v
    else:
        volts = 0.85 * max_total
    table = BatteryParams(cells_in_series=cells).ocv_table
    scale = volts / (cells * _ocv(table, soc))
    capacity = brm.rated_capacity_ah if isinstance(brm, BRM) and brm.rated_capacity_ah > 0 \
        else default.battery.capacity_ah
    bro = rec.payloads.get("BRO", [])
    waits = next((i for i, raw in enumerate(bro) if raw[:1] == b"\xaa"), 0)
    return VehicleConfig(
        battery=BatteryParams(cells_in_series=cells, capacity_ah=capacity,
                              ocv_table=tuple((s, v * scale) for s, v in table)),
        start_soc_pct=soc, target_soc_pct=100.0, max_cell_voltage_v=max_cell,
        max_charge_current_a=bcp.max_charge_current_a if isinstance(bcp, BCP) else 250.0,
        # The car closed K5/K6 after as many BRO(0x00) as it sent before BRO(0xAA).
        contactor_close_delay_s=max(waits * PERIOD_S["BRO"], 0.5),
        battery_type=brm.battery_type if isinstance(brm, BRM) else default.battery_type,
    )


def _ocv(table: tuple[tuple[float, float], ...], soc: float) -> float:
    for (s0, v0), (s1, v1) in itertools.pairwise(table):
        if s0 <= soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return table[-1][1] if soc > table[-1][0] else table[0][1]


class ReplayBms(BmsSimulator):
    def __init__(self, recording: Recording) -> None:
        super().__init__(vehicle_config(recording))
        self.recording = recording
        self.replayed: Counter[str] = Counter()
        self.synthesized: Counter[str] = Counter()
        self._cursor: Counter[str] = Counter()

    def period_s(self, name: str) -> float:
        return self.recording.periods_s.get(name, PERIOD_S[name])

    @property
    def energy_transfer_over(self) -> bool:
        """The recording's charging demand has all been replayed (or there was none)."""
        return self._cursor["BCL"] >= len(self.recording.payloads.get("BCL", []))

    def poll(self, t: float) -> list[BmsMessage | RawPayload]:  # type: ignore[override]
        out: list[BmsMessage | RawPayload] = []
        for message in super().poll(t):
            raw = self._recorded(message)
            name = type(message).__name__
            if raw is None and name in OPTIONAL:
                continue
            if raw is None:
                self.synthesized[name] += 1
                out.append(message)
            else:
                self.replayed[name] += 1
                cls = type(message)
                out.append(RawPayload(PGN[cls], PRIORITY[cls], raw))
        return out

    def _recorded(self, message: BmsMessage) -> bytes | None:
        name = type(message).__name__
        recorded = self.recording.payloads.get(name)
        if not recorded:
            return None
        if name == "BRO":
            # The phase decides readiness (this charger's CML, the car's contactor delay);
            # the bytes are the car's own for that readiness.
            ready = int(message.ready).to_bytes(1, "little")  # type: ignore[union-attr]
            return next((raw for raw in recorded if raw[:1] == ready), None)
        i = self._cursor[name]
        if i >= len(recorded):
            return recorded[-1]  # held: the car's last word on it
        self._cursor[name] += 1
        return recorded[i]

    def summary(self) -> dict[str, object]:
        rec = self.recording
        return {
            "recording": rec.path, "frames": rec.frames,
            "recorded": {name: len(p) for name, p in sorted(rec.payloads.items())},
            "replayed": dict(sorted(self.replayed.items())),
            "synthesized": dict(sorted(self.synthesized.items())),
            "announced_never_sent": dict(sorted(rec.announced.items())),
            "periods": "recorded" if rec.periods_s else
                       "GB/T 27930-2015 §10 (the trace's timestamps do not advance)",
        }
