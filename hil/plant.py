"""An in-process pile: the core against the car and module simulators, no sockets.

Commands go through the real register codec into the module simulator, and messages
through the real CAN codec (bytes and back) to the BMS; only the transports are
skipped. Deterministic and fast, so scenario tests and hypothesis state machines can
run thousands of sessions; `hil.sim` runs the same parts over real transports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.core.commands import (
    Command,
    CurrentDecided,
    SessionReport,
    SetBleeder,
    SetContactors,
    SetModuleOutput,
    StartInsulationTest,
    StateChanged,
    Transmit,
)
from agent.core.events import Event, ModuleLinkLost, Tick, VehicleConnected
from agent.core.messages import BmsMessage, ChargerMessage
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from drivers.gbt27930.codec import decode, encode
from drivers.gbt27930.link import decode_received, events_from
from drivers.power_module.codec import MODE_CHARGE, decode_status, encode_command
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.module_sim import ModuleParams, ModuleSim

STEP_S = 0.01
MODULE_POLL_S = 0.1


@dataclass
class PlantLog:
    states: list[tuple[float, str, str]] = field(default_factory=list)
    to_vehicle: list[tuple[float, ChargerMessage]] = field(default_factory=list)
    to_charger: list[tuple[float, BmsMessage]] = field(default_factory=list)
    module_commands: list[tuple[float, Command]] = field(default_factory=list)
    decisions: list[tuple[float, CurrentDecided]] = field(default_factory=list)
    reports: list[SessionReport] = field(default_factory=list)
    all_commands: list[tuple[float, Command]] = field(default_factory=list)


class InProcessPile:
    def __init__(
        self,
        ratings: GunRatings | None = None,
        vehicle: VehicleConfig | None = None,
        module: ModuleParams | None = None,
        session: GunSession | None = None,
    ) -> None:
        self.ratings = ratings or GunRatings()
        self.session = session or GunSession(self.ratings)
        self.bms = BmsSimulator(vehicle or VehicleConfig())
        self.module = ModuleSim(module or ModuleParams())
        self.t = 0.0
        self.log = PlantLog()
        self.module_silent = False  # drops module polls (as a dead RS-485 line would)
        # Scenario hook: rewrite or drop (None) what the car says before the agent hears it.
        self.vehicle_to_charger: Callable[[BmsMessage], BmsMessage | None] = lambda m: m
        # Scenario hook on the wire: rewrite the bytes of a message (PGN, payload) -> payload.
        self.vehicle_wire: Callable[[int, bytes], bytes] = lambda _pgn, payload: payload
        self._mode = MODE_CHARGE
        self._next_poll = 0.0
        self._inbox_bms: list[ChargerMessage] = []

    # ---- driving -------------------------------------------------------------------

    def feed(self, event: Event) -> list[Command]:
        commands = self.session.handle(event)
        for c in commands:
            self._execute(c)
        return commands

    def plug_in(self) -> None:
        self.feed(VehicleConnected(self.t, wall_clock_s=1_767_225_600.0))

    def step(self, extra: list[Event] | None = None) -> None:
        t = self.t
        for m in self._inbox_bms:
            self.bms.receive(m, t)
        self._inbox_bms = []
        for msg in self.bms.poll(t):
            self.log.to_charger.append((t, msg))
            heard = self.vehicle_to_charger(msg)
            if heard is not None:
                pgn, payload = encode(heard)
                # Through the link's own decoding: oddities and rejections become notices.
                for event in events_from(t, decode_received(pgn, self.vehicle_wire(
                        pgn, payload))):
                    self.feed(event)
        self.bms.battery.current_a = 0.0
        self.module.step(STEP_S, self.bms.battery)
        if t >= self._next_poll - 1e-9:
            self._next_poll = t + MODULE_POLL_S
            self.feed(self._poll_module(t))
        for event in extra or []:
            self.feed(event)
        self.feed(Tick(t))
        self.t = round(t + STEP_S, 6)

    def run_until(self, done: Callable[[InProcessPile], bool], max_s: float) -> bool:
        end = self.t + max_s
        while self.t < end:
            self.step()
            if done(self):
                return True
        return False

    # ---- plumbing --------------------------------------------------------------------

    def _poll_module(self, t: float) -> Event:
        if self.module_silent or self.module.silent:
            return ModuleLinkLost(t, "no answer (simulated)")
        self.module.since_last_request_s = 0.0
        status = decode_status(self.module.regmap, t, self.module.regs)
        return status if not hasattr(status, "detail") else ModuleLinkLost(t, "bad status")

    def _execute(self, c: Command) -> None:
        t = self.t
        self.log.all_commands.append((t, c))
        match c:
            case Transmit(message=message):
                self.log.to_vehicle.append((t, message))
                pgn, payload = encode(message)
                self._inbox_bms.append(decode(pgn, payload))  # type: ignore[arg-type]
            case SetModuleOutput() | SetContactors() | SetBleeder() | StartInsulationTest():
                self.log.module_commands.append((t, c))
                if self.module_silent or self.module.silent:
                    return
                encoded = encode_command(self.module.regmap, c, self._mode)
                for address, word in sorted(encoded.words.items()):
                    self.module.accept_write(address, [word])
                if isinstance(c, SetModuleOutput) and c.enabled and c.current_a != 0:
                    self._mode = MODE_CHARGE if c.current_a > 0 else 2
            case StateChanged(source=src, dest=dest):
                self.log.states.append((t, src, dest))
            case CurrentDecided():
                self.log.decisions.append((t, c))
            case SessionReport():
                self.log.reports.append(c)


def commanded_current(log: PlantLog) -> list[tuple[float, float]]:
    """(t, commanded A) for every module setpoint, 0 when the output is off."""
    out = []
    for t, c in log.module_commands:
        if isinstance(c, SetModuleOutput):
            out.append((t, c.current_a if c.enabled else 0.0))
    return out


