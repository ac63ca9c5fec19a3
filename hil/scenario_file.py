"""Scenario files: one TOML file is one HIL run (docs/HIL.md has the format).

A file names the gun, the car, the upstream (site EMS / VPP over SunSpec, a central system
over OCPP), the steps a bench operator would take (each waits for its condition, then acts)
and the expectations the run must meet. `load` reads and checks it: an unknown key, a
wrong type, an unknown step name or an action on nothing is an error that names the file,
the line and the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.ratings import GunRatings
from agent.ledger.settlement import Tariff, parse_tariff
from hil import car_can_faults
from hil.ev_bms import VehicleConfig
from hil.site_clock import parse_hhmm

SCENARIO_DIR = Path(__file__).parent / "scenarios"
FAULT_DIR = SCENARIO_DIR / "faults"


class ScenarioError(ValueError):
    """A scenario file that cannot run: the message names the file, the line and the key."""


# ---- the schema ----------------------------------------------------------------------

# Where a step may set an attribute (`set = { "io.estop_pressed" = true }`): the simulators.
SET_TARGETS = ("module", "car", "io", "meter", "pile")

STEP_WHEN = {
    "after_s": float,  # since the previous step fired (the first: since the start)
    "at_s": float,  # simulated time since the start
    "at_site_time": str,  # "HH:MM[:SS]" on the site clock
    "charging_for_s": float,  # the session has been charging this long
    "soc_at_least": float,  # the car's battery SOC, %
    "soc_at_most": float,
    "notice": str,  # the agent said a notice of this kind (since the previous step) ...
    "notice_text": str,  # ... whose detail contains this
    "transaction_started": bool,  # the central system has seen TransactionEvent Started
}
STEP_DO = {
    "setpoint_a": float,  # the EMS's signed current setpoint (- = discharge), refreshed
    "setpoint_w": float,  # ... or power setpoint, W
    "release_setpoint": bool,  # the EMS stops sending setpoints
    "car": dict,  # the car's VehicleConfig fields from now on (consent, target_soc_pct, ...)
    "consent": bool,  # the owner gives or withdraws V2G consent
    "set": dict,  # simulator attributes: "module.silent", "io.estop_pressed", ...
    "car_silent": bool,  # the BMS stops sending anything
    "car_stop": bool,  # the car asks to stop (BST)
    "meter_reset": bool,  # the DC meter's counters go back to 0
    "grid_frequency_hz": float,  # what the module measures on its AC side
    "vpp_dispatch_w": float,  # SunSpec WSet (+ = injection), refreshed until released
    "vpp_revert_s": int,  # WSetRvrtTms written with each dispatch
    "vpp_refresh_s": float,
    "vpp_release": bool,
    "vpp_drop": bool,  # the VPP's TCP link is lost
    "vpp_read": bool,  # the VPP reads 701 W back
    "csms_profile": dict,  # a SetChargingProfile for the running transaction (OCPP-J keys)
    "csms_offline": bool,
    "csms_online": bool,
    "stop": str,  # the owner / operator stops the session (the reason)
}
STEP_KEYS = {"name": str, **STEP_WHEN, **STEP_DO}

# What an expectation measures; each names how it is compared (docs/HIL.md).
MEASURES = {
    "outcome": "the session's outcome (finished, fault, ...)",
    "state_reached": "the furthest state of the normal sequence",
    "phases": "the energy-transfer directions in order",
    "phase_count": "how many energy-transfer phases",
    "last_phase": "the last energy-transfer direction",
    "final_soc_pct": "the car's SOC at the end",
    "min_soc_pct": "the lowest SOC while charging",
    "ledger_vs_battery_pct": "|ledger discharged - battery gave| / battery gave, %",
    "max_discharge_a": "the most discharge current the module delivered in the window",
    "max_charge_a": "the most charge current the module delivered in the window",
    "max_current_a": "the largest |current| the module delivered in the window",
    "discharge_began_s": "from the window's start to the first discharge > 5 A",
    "discharge_stopped_s": "from the window's start to the first sample >= -5 A",
    "median_power_w": "the median DC power in the window (- = discharge)",
    "power_change_w": "mean DC power 20-29 s after `from` minus the 10 s before",
    "time_to_90pct_s": "from `from` until the power is within 10 % of its new level",
    "jumps_across_zero": "sign changes of the current that skipped the <= 5 A band",
    "notice_count": "notices of a kind (and text) in the window",
    "v2g_negotiated": "whether V2G was negotiated",
    "vpp_read_w": "what the VPP read back as 701 W",
    "safe_state_s": "from `from` until <= 5 A, K1/K2 commanded open, in `states`, held 1 s",
    "commanded_at_most_a": "the most |current| commanded from 0.5 s after `from`, held",
    "notice_after_s": "from `from` until the notice",
    "tx_seq_in_order": "the central system's TransactionEvent seqNo 0..n-1",
    "tx_started_and_ended": "TransactionEvent Started first and Ended last",
    "tx_offline_events": "transaction events recorded offline and replayed",
    "tx_export_register": "a meter value with Energy.Active.Export.Register",
    "net_to_owner_cny": "the run's ledger settled with [tariff]: discharge paid less charge",
    "discharge_revenue_cny": "the run's discharge priced with [tariff]",
}
EXPECT_KEYS = {
    "name": str, "measure": str, "source": str,
    "equals": object, "at_least": float, "at_most": object, "near": float,
    "tolerance_pct": float, "starts_with": list,
    "from": str, "from_offset_s": float, "to": str, "to_offset_s": float,
    "notice": str, "notice_text": str, "states": list, "hold_s": float,
    "ends_run": bool,
}
SCENARIO_KEYS = {"name": str, "description": str, "max_sim_s": float, "site_start": str,
                 "site_end": str, "end_when_judged": bool, "lock_step": bool}
UPSTREAM_KEYS = {"ems": bool, "ems_allow_discharge": bool, "csms": bool,
                 "droop_rated_w": float, "setpoint_refresh_s": float}
CAR_EXTRA = {"replay_bms": str}
ANCHORS = ("start", "end", "vpp_last_write")


# ---- what a file becomes ----------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    when: dict[str, Any]
    do: dict[str, Any]
    line: int


@dataclass(frozen=True)
class Expectation:
    name: str
    measure: str
    spec: dict[str, Any]
    line: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.spec.get(key, default)


@dataclass(frozen=True)
class Upstream:
    ems: bool = False
    ems_allow_discharge: bool = False
    csms: bool = False
    droop_rated_w: float | None = None
    setpoint_refresh_s: float = 30.0  # the EMS refreshes a setpoint (valid twice as long)


@dataclass(frozen=True)
class ScenarioFile:
    path: Path
    name: str
    description: str
    gun: dict[str, Any]  # GunRatings fields the file sets
    car: dict[str, Any]  # VehicleConfig fields the file sets
    replay_bms: Path | None
    upstream: Upstream
    steps: tuple[Step, ...]
    expectations: tuple[Expectation, ...]
    max_sim_s: float | None = None
    site_start_s: float | None = None
    site_end_s: float | None = None
    end_when_judged: bool = False
    lock_step: bool = False  # step every 10 ms (True) or jump to the next due instant
    tariff: Tariff | None = None  # [tariff]: the run's ledger is settled with it

    def ratings(self, base: GunRatings) -> GunRatings:
        return dataclasses.replace(base, **self.gun)

    def vehicle(self, base: VehicleConfig) -> VehicleConfig:
        return dataclasses.replace(base, **self.car)


# ---- where a key is in the file ------------------------------------------------------------

class _Lines:
    """Line numbers of tables and keys (tomllib gives values, not positions)."""

    def __init__(self, text: str) -> None:
        self.tables: list[tuple[str, int]] = []  # (header, line) in order
        self.keys: list[tuple[int, str, int]] = []  # (table index, key, line)
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line.startswith("["):
                self.tables.append((line.strip("[] ").split("#")[0].strip("[] "), n))
            elif "=" in line and not line.startswith("#"):
                key = line.split("=", 1)[0].strip().strip('"')
                self.keys.append((len(self.tables) - 1, key, n))

    def of(self, table: str, index: int = 0, key: str | None = None) -> int:
        seen = -1
        for ti, (name, n) in enumerate(self.tables):
            if name != table:
                continue
            seen += 1
            if seen != index:
                continue
            if key is None:
                return n
            for kti, k, kn in self.keys:
                if kti == ti and k == key:
                    return kn
            return n
        return 0


class FileChecker:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, _Lines(text)

    def fail(self, line: int, what: str) -> ScenarioError:
        where = f"{self.path}:{line}" if line else str(self.path)
        return ScenarioError(f"{where}: {what}")

    def table(self, data: Any, schema: dict[str, Any], name: str, index: int = 0) -> \
            dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(self.lines.of(name, index), f"[{name}] must be a table")
        out: dict[str, Any] = {}
        for key, value in data.items():
            line = self.lines.of(name, index, key)
            if key not in schema:
                near = ", ".join(sorted(schema))
                raise self.fail(line, f"[{name}] has no key {key!r} (known: {near})")
            out[key] = self._typed(value, schema[key], f"[{name}] {key}", line)
        return out

    def _typed(self, value: Any, kind: Any, what: str, line: int) -> Any:
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(line, f"{what} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise self.fail(line, f"{what} must be finite, got {value!r}")
            return float(value)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(line, f"{what} must be a whole number, got {value!r}")
            return value
        if kind is object:
            return value
        if not isinstance(value, kind):
            raise self.fail(line, f"{what} must be a {kind.__name__}, got {value!r}")
        return value


def field_kinds(cls: type[Any]) -> dict[str, Any]:
    types = {"float": float, "int": int, "bool": bool, "str": str}
    return {f.name: types.get(str(f.type), object) for f in dataclasses.fields(cls)
            if str(f.type) in types}


def read(path: str | Path, top: set[str]) -> tuple[FileChecker, dict[str, Any]]:
    """A TOML file's tables, each one of `top`, and a checker that names its lines
    (ScenarioError: what is wrong, and where)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not TOML: {exc}") from None
    c = FileChecker(p, text)
    for key in data:
        if key not in top:
            raise c.fail(c.lines.of(key),
                         f"unknown table [{key}] (known: {', '.join(sorted(top))})")
    return c, data


def load(path: str | Path) -> ScenarioFile:
    """Read and check one scenario file (ScenarioError: what is wrong, and where)."""
    return _build(*read(path, {"scenario", "gun", "car", "upstream", "step", "expect",
                               "tariff"}))


def _build(c: FileChecker, data: dict[str, Any]) -> ScenarioFile:
    if "scenario" not in data:
        raise c.fail(0, "no [scenario] table (name, description)")
    meta = c.table(data["scenario"], SCENARIO_KEYS, "scenario")
    for key in ("name", "description"):
        if key not in meta:
            raise c.fail(c.lines.of("scenario"), f"[scenario] needs {key}")
    site = {}
    for key in ("site_start", "site_end"):
        if key in meta:
            site[key] = parse_hhmm(meta[key])
            if site[key] is None:
                raise c.fail(c.lines.of("scenario", 0, key),
                             f"[scenario] {key} {meta[key]!r} is not HH:MM[:SS]")
    gun = c.table(data.get("gun", {}), field_kinds(GunRatings), "gun")
    problems = GunRatings(**gun).problems()
    if problems:
        raise c.fail(c.lines.of("gun"), "[gun]: " + "; ".join(problems))
    car = c.table(data.get("car", {}), {**field_kinds(VehicleConfig), **CAR_EXTRA}, "car")
    replay = car.pop("replay_bms", None)
    replay_path = (c.path.parent / replay) if replay is not None else None
    up = Upstream(**c.table(data.get("upstream", {}), UPSTREAM_KEYS, "upstream"))
    tariff = None
    if "tariff" in data:
        try:
            tariff = parse_tariff(data["tariff"]) if isinstance(data["tariff"], dict) \
                else None
        except ValueError as exc:
            raise c.fail(c.lines.of("tariff"), f"[tariff]: {exc}") from None
        if tariff is None:
            raise c.fail(c.lines.of("tariff"), "[tariff] must be a table")
    steps = _steps(c, data.get("step", []))
    expectations = _expectations(c, data.get("expect", []), {s.name for s in steps}, up,
                                 "tariff" in data)
    if not expectations:
        raise c.fail(0, "no [[expect]]: a scenario must say what it expects")
    return ScenarioFile(
        c.path, meta["name"], meta["description"], gun, car, replay_path, up, steps,
        expectations, max_sim_s=meta.get("max_sim_s"), site_start_s=site.get("site_start"),
        site_end_s=site.get("site_end"), end_when_judged=meta.get("end_when_judged", False),
        lock_step=meta.get("lock_step", False), tariff=tariff)


def _steps(c: FileChecker, raw: Any) -> tuple[Step, ...]:
    if not isinstance(raw, list):
        raise c.fail(c.lines.of("step"), "step must be an array of tables: [[step]]")
    out: list[Step] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        spec = c.table(item, STEP_KEYS, "step", i)
        line = c.lines.of("step", i)
        name = spec.pop("name", None)
        if name is None:
            raise c.fail(line, "[[step]] needs a name")
        if name in names:
            raise c.fail(line, f"two steps are named {name!r}")
        names.add(name)
        when = {k: v for k, v in spec.items() if k in STEP_WHEN}
        do = {k: v for k, v in spec.items() if k in STEP_DO}
        if "at_site_time" in when and parse_hhmm(when["at_site_time"]) is None:
            raise c.fail(c.lines.of("step", i, "at_site_time"),
                         f"at_site_time {when['at_site_time']!r} is not HH:MM[:SS]")
        if "notice_text" in when and "notice" not in when:
            raise c.fail(line, f"step {name!r}: notice_text needs notice")
        for key, value in do.get("set", {}).items():
            target = key.split(".")[0]
            if target not in SET_TARGETS or key.count(".") != 1:
                raise c.fail(c.lines.of("step", i, "set"),
                             f"step {name!r}: set {key!r}: name one of "
                             f"{', '.join(SET_TARGETS)} and an attribute, e.g. io.door_open")
            wrong = car_can_faults.problem(str(value)) if key == "pile.car_can" else None
            if wrong:
                raise c.fail(c.lines.of("step", i, "set"), f"step {name!r}: {wrong}")
        if "car" in do:
            do["car"] = c.table(do["car"], field_kinds(VehicleConfig), "step", i)
        out.append(Step(name, when, do, line))
    return tuple(out)


def expect_tables(c: FileChecker, raw: Any, keys: dict[str, Any],
                  measures: Iterable[str]) -> Iterator[tuple[int, dict[str, Any], int, str]]:
    """Each [[expect]] as (index, its keys but `measure`, its line, its measure), checked
    against `keys` and `measures`."""
    if not isinstance(raw, list):
        raise c.fail(c.lines.of("expect"), "expect must be an array of tables: [[expect]]")
    known = list(measures)
    for i, item in enumerate(raw):
        spec = c.table(item, keys, "expect", i)
        measure = spec.pop("measure", None)
        if measure not in known:
            raise c.fail(c.lines.of("expect", i, "measure"),
                         f"measure {measure!r} is not one of {', '.join(known)}")
        yield i, spec, c.lines.of("expect", i), measure


def _expectations(c: FileChecker, raw: Any, steps: set[str], up: Upstream,
                  has_tariff: bool) -> tuple[Expectation, ...]:
    out: list[Expectation] = []
    for i, spec, line, measure in expect_tables(c, raw, EXPECT_KEYS, MEASURES):
        if not any(k in spec for k in ("equals", "at_least", "at_most", "near",
                                       "starts_with")):
            raise c.fail(line, f"expect {measure}: say equals, at_least, at_most, near "
                               "or starts_with")
        if "near" in spec and "tolerance_pct" not in spec:
            raise c.fail(line, f"expect {measure}: near needs tolerance_pct")
        for key in ("from", "to"):
            anchor = spec.get(key)
            if anchor is not None and anchor not in steps and anchor not in ANCHORS \
                    and parse_hhmm(anchor) is None:
                raise c.fail(c.lines.of("expect", i, key),
                             f"expect {measure}: {key} {anchor!r} is no step, no site time "
                             f"(HH:MM) and not one of {', '.join(ANCHORS)}")
        needs_from = ("safe_state_s", "commanded_at_most_a", "notice_after_s",
                      "power_change_w", "time_to_90pct_s", "discharge_stopped_s",
                      "discharge_began_s")
        if measure in needs_from and "from" not in spec:
            raise c.fail(line, f"expect {measure}: needs from (a step or a time)")
        if measure in ("notice_count", "notice_after_s") and "notice" not in spec:
            raise c.fail(line, f"expect {measure}: needs notice (its kind)")
        if measure.startswith("tx_") and not up.csms:
            raise c.fail(line, f"expect {measure}: needs [upstream] csms = true")
        if measure in ("net_to_owner_cny", "discharge_revenue_cny") and not has_tariff:
            raise c.fail(line, f"expect {measure}: needs a [tariff] table")
        if measure == "vpp_read_w" and not up.ems:
            raise c.fail(line, f"expect {measure}: needs [upstream] ems = true")
        name = spec.pop("name", None) or measure
        out.append(Expectation(name, measure, spec, line))
    return tuple(out)


def builtin(name: str) -> Path | None:
    """A built-in scenario or fault file by name (None: there is none)."""
    for d in (SCENARIO_DIR, FAULT_DIR):
        p = d / f"{name}.toml"
        if p.is_file():
            return p
    return None


def catalogue(directory: Path) -> dict[str, str]:
    """name -> description of the files in a directory of scenarios."""
    out = {}
    for p in sorted(directory.glob("*.toml")):
        try:
            sf = load(p)
        except ScenarioError as exc:
            out[p.stem] = f"(broken: {exc})"
            continue
        out[sf.name] = sf.description
    return out


def named(name: str) -> ScenarioFile:
    """A built-in scenario or fault, loaded (ScenarioError if there is none)."""
    path = builtin(name)
    if path is None:
        raise ScenarioError(f"no built-in scenario or fault named {name!r}")
    return load(path)


def plain_session() -> ScenarioFile:
    """The plain session (`pile-agent sim` with no scenario) as a file would say it: the car
    of the flags charges to its target; the session must finish."""
    return ScenarioFile(
        Path("<plain session>"), "session", "a plain charge: the car of --start-soc charges "
        "to --target-soc", {}, {}, None, Upstream(), (),
        (Expectation("the session finishes", "outcome", {"equals": "finished"}, 0),),
        lock_step=False)
