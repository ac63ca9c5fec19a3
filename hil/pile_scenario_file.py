"""Pile scenario files (`pile-agent sim --guns N --scenario FILE.toml`): one TOML file is
one run of a whole pile, N guns sharing a pool of module groups (docs/HIL.md has the
format).

The file is written once for any N: a value that differs from gun to gun or grows with
the pile is an expression in `gun` and `n` (hil/gun_expr.py), e.g. `plug_at_s =
"0.2 + 30 * (gun - 1)"` or `grid_limit_w = "75000 * n"`. `[car]` is every gun's car and
`[car.on_gun.K]` changes gun K's. Steps fire at times; a step acts on a gun, on each gun
(`gun = "each"`) or on each but one (`gun = "each but 1"`). The pile's invariants (no gun
commanded above its groups, no group switched under load or closed to two guns, import and
export within the site's limits) are judged on every run; `[[expect]]` adds the rest.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.module_pool import Group
from agent.core.ratings import GunRatings
from agent.core.upstream import UpstreamPolicy
from hil import gun_expr
from hil.ev_bms import VehicleConfig
from hil.pool_layout import GROUP_A, GROUP_W, ring_groups
from hil.scenario_file import (
    Expectation,
    FileChecker,
    ScenarioError,
    expect_tables,
    field_kinds,
    read,
)

PILE_DIR = Path(__file__).parent / "scenarios" / "pile"
EXPR = "expression"  # a schema kind: a number, or an expression in gun / n

SCENARIO_KEYS = {"name": str, "description": str, "min_guns": int, "end_s": EXPR,
                 "linger_s": float, "lock_step": bool}
PILE_KEYS = {"pool": str, "group_a": float, "group_w": float, "grid_limit_w": EXPR,
             "export_limit_w": EXPR, "pile_power_w": EXPR}
POOLS = ("ring",)
CAR_EXTRA = {"plug_at_s": EXPR}
STEP_KEYS = {
    "name": str, "at_s": EXPR, "gun": object,
    "stop": str,  # the owner or the operator stops the gun's session (the reason)
    "setpoint_w": EXPR, "setpoint_a": EXPR,  # the EMS's signed setpoint (- = discharge)
    "refresh_s": float, "until_s": EXPR,  # ... refreshed (valid twice as long) until then
    "group_fault": str,  # the first healthy group serving `gun` trips (or `group`)
    "group": str,
    "group_clear": bool,  # the group a group_fault step tripped (or `group`) recovers
}
STEP_ACTIONS = ("stop", "setpoint_w", "setpoint_a", "group_fault", "group_clear")

# measure -> (whether it is per gun, what it is)
MEASURES = {
    "outcome": (True, "the gun's session outcome (finished, fault, ...)"),
    "energised": (True, "whether the gun reached energy transfer"),
    "charged_kwh": (True, "the energy the gun's session charged"),
    "discharged_kwh": (True, "the energy the gun's session discharged"),
    "max_current_a": (True, "the largest |current| the gun's module delivered in the window"),
    "above_pool": (True, "decisions above the capability the pool gave the gun"),
    "groups_given_away": (True, "groups that served the gun by `from` and another gun after"),
    "groups_moved": (False, "groups that served more than one gun"),
    "faulted_group_taken_out": (False, "the pool took the group a step faulted out"),
    "peak_import_w": (False, "the most DC power the guns drew together"),
    "peak_export_w": (False, "the most DC power the guns gave back together"),
    "switched_under_load": (False, "group contactor moves while its gun carried > 5 A"),
    "joined_two_guns": (False, "matrix reads with a group closed to two guns"),
    "gun_hours": (False, "gun-hours of energy transfer"),
}
EXPECT_KEYS = {"name": str, "measure": str, "gun": object, "source": str,
               "equals": object, "at_least": float, "at_most": float, "near": float,
               "tolerance_pct": float, "from": str, "from_offset_s": float, "to": str,
               "to_offset_s": float}
ANCHORS = ("start", "end")
# The DC power is measured after the module's own current loop settles; the limit applies
# to the commanded voltage (>= the measured one) at each decision: 2 % (as the old tables).
SITE_LIMIT_MARGIN = 1.02
_EACH_BUT = re.compile(r"each but (\d+)$")


@dataclass(frozen=True)
class PlugIn:
    config: VehicleConfig
    plug_at_s: float


@dataclass(frozen=True)
class PileStep:
    name: str
    at_s: float | str
    guns: str | int  # a gun, "each", or "each but K"
    do: dict[str, Any]
    line: int

    def targets(self, n: int) -> list[int]:
        return select(self.guns, n)


@dataclass(frozen=True)
class PileScenarioFile:
    path: Path
    name: str
    description: str
    min_guns: int
    end_expr: float | str
    linger_s: float
    lock_step: bool
    pile: dict[str, Any]
    gun: dict[str, Any]
    car: dict[str, Any]
    car_on_gun: dict[int, dict[str, Any]]
    steps: tuple[PileStep, ...]
    expectations: tuple[Expectation, ...]
    upstream: UpstreamPolicy = dataclasses.field(default_factory=UpstreamPolicy)

    # ---- what the simulator asks, for n guns -----------------------------------------------

    def end_s(self, n: int) -> float:
        return gun_expr.evaluate(self.end_expr, n=n)

    def step_at(self, step: PileStep, n: int) -> float:
        return gun_expr.evaluate(step.at_s, n=n)

    def groups(self, n: int) -> list[Group]:
        return ring_groups(n, self.pile.get("group_a", GROUP_A),
                           self.pile.get("group_w", GROUP_W))

    def grid_limit_w(self, n: int) -> float:
        return self.pile_value("grid_limit_w", n)

    def export_limit_w(self, n: int) -> float:
        return self.pile_value("export_limit_w", n)

    def pile_power_w(self, n: int) -> float:
        if "pile_power_w" in self.pile:
            return self.pile_value("pile_power_w", n)
        return sum(g.power_w for g in self.groups(n))

    def check_for(self, n: int) -> None:
        """ScenarioError unless every value of the file evaluates for a pile of n guns."""
        try:
            for g in range(1, n + 1):
                problems = self.ratings(g, n).problems()
                if problems:
                    raise ScenarioError(f"{self.path}: [gun] for gun {g} of {n}: "
                                        + "; ".join(problems))
                self.vehicle(g, n)
            for step in self.steps:
                self.step_at(step, n)
                for key in ("setpoint_w", "setpoint_a", "until_s"):
                    if key in step.do:
                        gun_expr.evaluate(step.do[key], n=n)
            self.end_s(n)
            for key in ("grid_limit_w", "export_limit_w", "pile_power_w"):
                self.pile_value(key, n)
        except (gun_expr.ExprError, TypeError) as exc:
            raise ScenarioError(f"{self.path}: for {n} guns: {exc}") from None

    def pile_value(self, key: str, n: int) -> float:
        """A [pile] limit for n guns (inf where the file sets none)."""
        return gun_expr.evaluate(self.pile[key], n=n) if key in self.pile else math.inf

    def ratings(self, gun: int, n: int) -> GunRatings:
        kinds = field_kinds(GunRatings)
        values = {k: _value(v, kinds[k], gun=gun, n=n) for k, v in self.gun.items()}
        return GunRatings(**{**values, "charger_number": gun})

    def vehicle(self, gun: int, n: int) -> PlugIn:
        spec = {**self.car, **self.car_on_gun.get(gun, {})}
        plug_at = gun_expr.evaluate(spec.pop("plug_at_s", 0.2), gun=gun, n=n)
        kinds = field_kinds(VehicleConfig)
        values = {k: _value(v, kinds[k], gun=gun, n=n) for k, v in spec.items()}
        return PlugIn(VehicleConfig(**values), plug_at)


def _value(v: Any, kind: Any, gun: int, n: int) -> Any:
    """A field's value for one gun: text with its fields filled, an expression evaluated
    (a whole number where the field is one)."""
    if not isinstance(v, str):
        return v
    if kind is str:
        return gun_expr.text(v, gun=gun, n=n)
    value = gun_expr.evaluate(v, gun=gun, n=n)
    return round(value) if kind is int else value


def select(guns: str | int, n: int) -> list[int]:
    """The guns a step or an expectation names, on a pile of n."""
    if isinstance(guns, int):
        return [guns] if 1 <= guns <= n else []
    if guns == "each":
        return list(range(1, n + 1))
    m = _EACH_BUT.match(guns)
    assert m is not None, guns  # checked on load
    return [g for g in range(1, n + 1) if g != int(m[1])]


# ---- reading and checking a file ----------------------------------------------------------------

def is_pile_file(path: str | Path) -> bool:
    """Whether a TOML file is a pile scenario (it has a [pile] table)."""
    try:
        return "pile" in tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def load(path: str | Path) -> PileScenarioFile:
    """Read and check one pile scenario file (ScenarioError: what is wrong, and where)."""
    return _build(*read(path, {"scenario", "pile", "gun", "car", "step", "expect"}))


def _build(c: FileChecker, data: dict[str, Any]) -> PileScenarioFile:
    for key in ("scenario", "pile"):
        if key not in data:
            raise c.fail(0, f"no [{key}] table")
    meta = _table(c, data["scenario"], SCENARIO_KEYS, "scenario", names=("n",))
    for key in ("name", "description", "end_s"):
        if key not in meta:
            raise c.fail(c.lines.of("scenario"), f"[scenario] needs {key}")
    min_guns = meta.get("min_guns", 2)
    if min_guns < 1:
        raise c.fail(c.lines.of("scenario", 0, "min_guns"), "[scenario] min_guns must be >= 1")
    pile = _table(c, data["pile"], PILE_KEYS, "pile", names=("n",))
    if pile.get("pool", "ring") not in POOLS:
        raise c.fail(c.lines.of("pile", 0, "pool"),
                     f"[pile] pool {pile['pool']!r} is not one of {', '.join(POOLS)}")
    gun = _table(c, data.get("gun", {}), _expr_fields(GunRatings, {"charger_number"}), "gun")
    car_raw = dict(data.get("car", {})) if isinstance(data.get("car", {}), dict) else {}
    on_gun_raw = car_raw.pop("on_gun", {})
    car_schema = {**_expr_fields(VehicleConfig, set()), **CAR_EXTRA}
    car = _table(c, car_raw, car_schema, "car")
    on_gun: dict[int, dict[str, Any]] = {}
    if not isinstance(on_gun_raw, dict):
        raise c.fail(c.lines.of("car"), "[car] on_gun must be tables: [car.on_gun.1]")
    for key, spec in on_gun_raw.items():
        header = f"car.on_gun.{key}"
        if not str(key).isdigit() or int(key) < 1:
            raise c.fail(c.lines.of(header), f"[{header}]: name a gun by its number, from 1")
        on_gun[int(key)] = _table(c, spec, car_schema, header)
    steps = _steps(c, data.get("step", []))
    expectations = _expectations(c, data.get("expect", []), {s.name for s in steps}, steps)
    sf = PileScenarioFile(c.path, meta["name"], meta["description"], min_guns, meta["end_s"],
                          meta.get("linger_s", 15.0), meta.get("lock_step", False), pile, gun,
                          car, on_gun, steps, expectations)
    _try_every_gun(sf)
    return sf


def _expr_fields(cls: type[Any], leave_out: set[str]) -> dict[str, Any]:
    """A dataclass's fields as a schema, its numbers allowed as expressions."""
    return {k: (EXPR if v in (float, int) else v) for k, v in field_kinds(cls).items()
            if k not in leave_out}


def _table(c: FileChecker, raw: Any, schema: dict[str, Any], name: str, index: int = 0,
           names: tuple[str, ...] = gun_expr.NAMES) -> dict[str, Any]:
    plain = {k: (object if v == EXPR else v) for k, v in schema.items()}
    out = c.table(raw, plain, name, index)
    for key, value in out.items():
        if schema[key] == EXPR:
            out[key] = _expr(c, value, f"[{name}] {key}", c.lines.of(name, index, key), names)
    return out


def _expr(c: FileChecker, value: Any, what: str, line: int,
          names: tuple[str, ...]) -> float | str:
    if isinstance(value, str):
        try:
            gun_expr.check(value, names)
        except gun_expr.ExprError as exc:
            raise c.fail(line, f"{what}: {exc}") from None
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise c.fail(line, f"{what} must be a number or an expression in "
                           f"{', '.join(names)}, got {value!r}")
    return float(value)


def _guns(c: FileChecker, value: Any, what: str, line: int) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and (value == "each" or _EACH_BUT.match(value)):
        return value
    raise c.fail(line, f"{what} must be a gun number, \"each\" or \"each but K\", "
                       f"got {value!r}")


def _steps(c: FileChecker, raw: Any) -> tuple[PileStep, ...]:
    if not isinstance(raw, list):
        raise c.fail(c.lines.of("step"), "step must be an array of tables: [[step]]")
    out: list[PileStep] = []
    for i, item in enumerate(raw):
        spec = _table(c, item, STEP_KEYS, "step", i, names=("n",))
        line = c.lines.of("step", i)
        name = spec.pop("name", None)
        if name is None:
            raise c.fail(line, "[[step]] needs a name")
        if any(s.name == name for s in out):
            raise c.fail(line, f"two steps are named {name!r}")
        if "at_s" not in spec:
            raise c.fail(line, f"step {name!r} needs at_s (a time or an expression in n)")
        actions = [k for k in STEP_ACTIONS if k in spec]
        if len(actions) != 1:
            raise c.fail(line, f"step {name!r} must do one of {', '.join(STEP_ACTIONS)} "
                               f"(it does {', '.join(actions) or 'nothing'})")
        needs_gun = actions[0] in ("stop", "setpoint_w", "setpoint_a") or \
            (actions[0] == "group_fault" and "group" not in spec)
        if needs_gun and "gun" not in spec:
            raise c.fail(line, f"step {name!r}: {actions[0]} needs gun")
        guns = _guns(c, spec.pop("gun"), f"step {name!r} gun",
                     c.lines.of("step", i, "gun")) if "gun" in spec else "each"
        at = spec.pop("at_s")
        out.append(PileStep(name, at, guns, spec, line))
    return tuple(out)


def _expectations(c: FileChecker, raw: Any, steps: set[str],
                  step_list: tuple[PileStep, ...]) -> tuple[Expectation, ...]:
    out: list[Expectation] = []
    for i, spec, line, measure in expect_tables(c, raw, EXPECT_KEYS, MEASURES):
        per_gun = MEASURES[measure][0]
        if per_gun and "gun" not in spec:
            raise c.fail(line, f"expect {measure}: name the gun (a number, \"each\" or "
                               "\"each but K\")")
        if not per_gun and "gun" in spec:
            raise c.fail(line, f"expect {measure}: is the pile's, not a gun's")
        if "gun" in spec:
            spec["gun"] = _guns(c, spec["gun"], f"expect {measure} gun",
                                c.lines.of("expect", i, "gun"))
        if not any(k in spec for k in ("equals", "at_least", "at_most", "near")):
            raise c.fail(line, f"expect {measure}: say equals, at_least, at_most or near")
        if "near" in spec and "tolerance_pct" not in spec:
            raise c.fail(line, f"expect {measure}: near needs tolerance_pct")
        for key in ("from", "to"):
            anchor = spec.get(key)
            if anchor is not None and anchor not in steps and anchor not in ANCHORS:
                raise c.fail(c.lines.of("expect", i, key),
                             f"expect {measure}: {key} {anchor!r} is no step and not one of "
                             f"{', '.join(ANCHORS)}")
        if measure == "groups_given_away" and "from" not in spec:
            raise c.fail(line, f"expect {measure}: needs from (a step)")
        if measure == "faulted_group_taken_out" and \
                not any("group_fault" in s.do for s in step_list):
            raise c.fail(line, f"expect {measure}: no step has group_fault")
        name = spec.pop("name", None) or measure
        out.append(Expectation(name, measure, spec, line))
    return tuple(out)


def _try_every_gun(sf: PileScenarioFile) -> None:
    """Evaluate the file for a pile of min_guns and of 12 guns: an expression that divides
    by zero, a car or ratings no gun could have, fail on load rather than in the run."""
    for n in sorted({sf.min_guns, max(sf.min_guns, 12)}):
        sf.check_for(n)


def builtin(name: str) -> Path | None:
    p = PILE_DIR / f"{name}.toml"
    return p if p.is_file() else None


def named(name: str) -> PileScenarioFile:
    path = builtin(name)
    if path is None:
        raise ScenarioError(f"no built-in pile scenario named {name!r}")
    return load(path)


def catalogue() -> dict[str, str]:
    out = {}
    for p in sorted(PILE_DIR.glob("*.toml")):
        try:
            out[p.stem] = load(p).description
        except ScenarioError as exc:
            out[p.stem] = f"(broken: {exc})"
    return out
