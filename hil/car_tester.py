"""`pile-agent hil car`: the simulated car (or a recorded real one) on a CAN bus against
whatever charger is there, in real time, then the charger's verdicts from the trace
(hil/charger_verdicts.py).

The car is the harness's BMS (hil/ev_bms.py) on python-can: any interface (socketcan,
slcan, udp_loopback, ...). It sees only the charger's frames: its battery takes the current
the charger reports in CCS. A scenario file gives the car ([car]) and what it does when
(steps with car actions only: `car`, `consent`, `set = { "car.X" = ... }`, `car_silent`,
`car_stop`, on `at_s`, `after_s`, `charging_for_s`, `soc_at_least/most`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import can

from agent.core.messages import CCS
from drivers.gbt27930.link import GbtLink, LinkNotice, LinkProblem, Role
from hil.charger_verdicts import CaseVerdict, judge
from hil.ev_bms import BmsSimulator, VehicleConfig
from hil.replay_bms import RawPayload, ReplayBms, load_recording
from hil.scenario_file import ScenarioError, ScenarioFile, Step

STEP_S = 0.005  # the car's task cycle: a tenth of the fastest period (BCL/CCS 50 ms)
NO_CHARGER_S = 30.0  # GB/T 27930 §1.4: the vehicle waits 30 s for the charger
LINGER_S = 1.0
CAR_ACTIONS = {"car", "consent", "set", "car_silent", "car_stop"}
CAR_CONDITIONS = {"after_s", "at_s", "charging_for_s", "soc_at_least", "soc_at_most"}


@dataclass
class CarResult:
    frames: list[tuple[float, int, bytes]] = field(default_factory=list)
    verdicts: list[CaseVerdict] = field(default_factory=list)
    phase: str = "wait"
    ended: str = ""
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


class _Recorder:
    """The link's frame log: every frame both ways, on the car's clock."""

    def __init__(self, frames: list[tuple[float, int, bytes]]) -> None:
        self.frames = frames

    def write(self, t: float, can_id: int, data: bytes, extended: bool = True) -> None:
        self.frames.append((t, can_id, bytes(data)))


def car_steps(sf: ScenarioFile) -> tuple[Step, ...]:
    """The file's steps, each a car action on a car condition (ScenarioError otherwise)."""
    for step in sf.steps:
        actions = set(step.do) - CAR_ACTIONS
        conditions = set(step.when) - CAR_CONDITIONS
        targets = [k for k in step.do.get("set", {}) if not k.startswith("car.")]
        if actions or conditions or targets:
            what = sorted(actions | conditions) + targets
            raise ScenarioError(f"{sf.path}:{step.line}: step {step.name!r}: "
                                f"{', '.join(what)}: a car against a charger can only act on "
                                "itself (car, consent, set car.*, car_silent, car_stop) on "
                                "at_s, after_s, charging_for_s or soc_at_least/most")
    return sf.steps


class CarTester:
    def __init__(self, bus: can.BusABC, vehicle: VehicleConfig | None = None,
                 replay: str | None = None, steps: tuple[Step, ...] = (),
                 say: Callable[[str], None] | None = None) -> None:
        self.result = CarResult()
        self.link = GbtLink(bus, Role.BMS, log=_Recorder(self.result.frames))
        self.bms: BmsSimulator | ReplayBms = ReplayBms(load_recording(replay)) if replay \
            else BmsSimulator(vehicle or VehicleConfig())
        self.steps = list(steps)
        self.say = say or (lambda _line: None)
        self._fired_at = 0.0
        self._charging_since: float | None = None

    async def run(self, max_s: float) -> CarResult:
        r, wall0 = self.result, time.monotonic()
        t0, last = wall0, wall0
        done_at: float | None = None
        while True:
            now = time.monotonic()
            t, dt = now - t0, now - last
            last = now
            self._step(t, dt)
            if done_at is None and self.bms.finished:
                done_at = t
                r.ended = "the session ended (BSD/CSD)"
            if done_at is not None and t - done_at >= LINGER_S:
                break
            if t >= max_s:
                r.ended = f"--max-s {max_s:g} s reached in phase {self.bms.phase}"
                break
            if t >= NO_CHARGER_S and not any(i & 0xFF == 0x56 for _t, i, _d in r.frames):
                r.ended = f"no charger answered within {NO_CHARGER_S:g} s"
                break
            await asyncio.sleep(STEP_S)
        r.phase, r.wall_s = self.bms.phase, time.monotonic() - wall0
        r.verdicts = judge(r.frames)
        return r

    def _step(self, t: float, dt: float) -> None:
        bms = self.bms
        for item in self.link.poll(t):
            if not isinstance(item, LinkProblem | LinkNotice):
                bms.receive(item, t)  # type: ignore[arg-type]
        self._act(t)
        for message in bms.poll(t):
            if isinstance(message, RawPayload):
                self.link.send_payload(message.pgn, message.payload, t, message.priority)
            else:
                self.link.send(message, t)
        # The battery takes what the charger says it delivers (CCS, + = into the vehicle).
        seen = bms.seen.get(CCS)
        ccs = seen[1] if seen is not None and t - seen[0] <= 1.0 else None
        amps = ccs.output_current_a if isinstance(ccs, CCS) and bms.phase == "charging" \
            else 0.0
        if dt > 0:
            bms.battery.accept_current(amps, dt)

    def _act(self, t: float) -> None:
        bms = self.bms
        if bms.phase == "charging" and self._charging_since is None:
            self._charging_since = t
        while self.steps and self._due(self.steps[0], t):
            step = self.steps.pop(0)
            self._fired_at = t
            self.result.notes.append(f"{t:8.2f} s  {step.name}")
            self.say(f"[{t:8.2f} s] step: {step.name}")
            self._do(step, t)

    def _due(self, step: Step, t: float) -> bool:
        w, soc = step.when, self.bms.battery.soc_pct
        if t - self._fired_at < w.get("after_s", 0.0) or t < w.get("at_s", 0.0):
            return False
        if "charging_for_s" in w and (self._charging_since is None
                                      or t - self._charging_since < w["charging_for_s"]):
            return False
        return bool(w.get("soc_at_least", -1.0) <= soc <= w.get("soc_at_most", 101.0))

    def _do(self, step: Step, t: float) -> None:
        bms, d = self.bms, step.do
        if isinstance(bms, BmsSimulator):
            if "car" in d:
                bms.config = dataclasses.replace(bms.config, **d["car"])
            if "consent" in d:
                bms.consent = d["consent"]
        for key, value in d.get("set", {}).items():
            setattr(bms, key.split(".", 1)[1], value)
        if d.get("car_silent"):
            bms.silence(t)
        if d.get("car_stop"):
            bms.request_stop()


def parse_can(text: str) -> tuple[str, str]:
    """'INTERFACE:CHANNEL' (socketcan:can0, udp_loopback:gun1, slcan:/dev/ttyACM0)."""
    interface, sep, channel = text.partition(":")
    if not sep or not interface or not channel:
        raise ValueError(f"--can {text!r}: write INTERFACE:CHANNEL, e.g. socketcan:can0")
    return interface, channel


def verdict_table(verdicts: list[CaseVerdict]) -> str:
    lines, phase = [], ""
    for v in verdicts:
        if v.case.phase != phase:
            phase = v.case.phase
            lines.append(f"  {phase}")
        lines.append(f"    {v.case.id}  {v.status:4}  {v.case.title}: {v.detail}"
                     + (f"\n              first offending frame: {v.frame}" if v.frame else ""))
    failed = sum(1 for v in verdicts if v.status == "FAIL")
    judged = sum(1 for v in verdicts if v.status != "N/A")
    lines.append(f"  {judged} cases judged, {failed} failed, "
                 f"{len(verdicts) - judged} not applicable (N/A)")
    return "\n".join(lines)


def write_report(directory: Path, title: str, result: CarResult) -> None:
    """junit.xml (one testcase per case), report.html (the verdict table) and the traffic
    as candump, .asc and .blf."""
    from agent.runtime.session_traces import FORMATS, TraceFiles, TraceSettings
    from hil import report
    from hil.report import RunSummary
    from hil.scenario_engine import Recording, Verdict

    directory.mkdir(parents=True, exist_ok=True)
    files = TraceFiles(TraceSettings(directory, formats=FORMATS), "can", "can0", 0.0)
    try:
        for t, can_id, data in result.frames:
            files.write(t, can_id, data)
    finally:
        files.close()
    verdicts = [Verdict(f"{v.case.id} {v.case.title}", v.case.phase, v.status,
                        v.frame or v.status, v.detail, v.case.source) for v in result.verdicts]
    summary = RunSummary(title, "GB/T 34658-style verdicts on the charger, from the trace of "
                         "the simulated car against it", result.phase, result.ended,
                         result.frames[-1][0] if result.frames else 0.0, result.wall_s,
                         (), result.notes, ["can.asc", "can.blf", "can.log"])
    report.write(directory, summary, verdicts, Recording())


async def run_car_cli(can_spec: str, sf: ScenarioFile | None, replay: str | None,
                      max_s: float, report_dir: str | None, out: IO[str]) -> int:
    interface, channel = parse_can(can_spec)
    vehicle = sf.vehicle(VehicleConfig()) if sf is not None else None
    steps = car_steps(sf) if sf is not None else ()
    kwargs: dict[str, Any] = {"bitrate": 250_000} if interface != "udp_loopback" else {}
    with can.Bus(interface=interface, channel=channel, **kwargs) as bus:
        tester = CarTester(bus, vehicle, replay, steps,
                           lambda line: print(line, file=out, flush=True))
        print(f"pile-agent hil car: the car on {interface}:{channel}, waiting for a charger",
              file=out, flush=True)
        result = await tester.run(max_s)
    print(f"car: {result.ended}; {len(result.frames)} frames\n"
          f"charger verdicts (docs/HIL.md):\n{verdict_table(result.verdicts)}", file=out)
    if report_dir:
        write_report(Path(report_dir), sf.name if sf else "hil car", result)
        print(f"report: {Path(report_dir) / 'report.html'}", file=out)
    return 0 if result.passed and any(v.status == "PASS" for v in result.verdicts) else 1
