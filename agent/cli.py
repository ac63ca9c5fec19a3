"""`pile-agent`: `sim` runs the agent against the built-in simulated pile, `run` against
the interfaces in a pile.toml."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pile-agent", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run a whole session against the simulated pile and car")
    sim.add_argument("--speed", type=float, default=0.0,
                     help="simulated seconds per real second; 0 (default) = as fast as possible")
    sim.add_argument("--can-log", metavar="FILE", help="write the CAN traffic in candump format")
    sim.add_argument("--plain", action="store_true",
                     help="a plain charge (20 %% -> 80 %%) instead of the V2G evening that "
                          "`pile-agent sim` runs by default")
    sim.add_argument("--start-soc", type=float, default=None,
                     help="vehicle SOC at plug-in, %% (a plain charge; default 20)")
    sim.add_argument("--target-soc", type=float, default=None,
                     help="SOC the BMS stops at, %% (a plain charge; default 80)")
    sim.add_argument("--max-sim-s", type=float, default=3600.0,
                     help="give up after this much simulated time")
    sim.add_argument("--json", action="store_true", help="print the final summary as JSON")
    sim.add_argument("--quiet", action="store_true", help="no live progress lines")
    sim.add_argument("--fault", metavar="NAME",
                     help="inject a fault during the session and check the agent reaches the "
                          "safe state in time (exit 0 only then); --fault list shows them")
    sim.add_argument("--replay-bms", metavar="CANDUMP",
                     help="the car answers as the vehicle recorded in this candump trace did; "
                          "reports how far the session got (exit 0 only if it finished)")

    sim.add_argument("--scenario", metavar="NAME|FILE.toml",
                     help="a scenario: a built-in by name (--scenario list shows them) or your "
                          "own scenario file (docs/HIL.md); exit 0 only when its expectations "
                          "hold")
    sim.add_argument("--report", metavar="DIR",
                     help="write a report of the run there: JUnit XML, an HTML page with "
                          "plots, the CAN traffic as candump, .asc and .blf")
    sim.add_argument("--site-time", metavar="HH:MM",
                     help="a scenario on the site clock starts at this local time")
    sim.add_argument("--site-until", metavar="HH:MM",
                     help="... and the owner leaves at this local time")
    sim.add_argument("--ledger", metavar="FILE", default=":memory:",
                     help="keep the energy ledger in this SQLite file (default: in memory)")
    sim.add_argument("--lock-step", action="store_true",
                     help="step simulated time every 10 ms instead of jumping to the next "
                          "instant anyone is due (for comparison; one gun)")
    sim.add_argument("--guns", type=int, default=1,
                     help="run N guns of one pile sharing a module pool (with --scenario: "
                          "`--guns 2 --scenario list` shows the pile scenarios)")

    rec = sub.add_parser("records", help="list, export and settle the energy ledger")
    rec.add_argument("--ledger", metavar="FILE", required=True)
    rec.add_argument("--format", choices=("text", "csv", "json"), default="text")
    rec.add_argument("--tariff", metavar="PILE_TOML", help="[tariff] table to settle with")

    bench = sub.add_parser("bench", help="reaction latencies, CCS period, CPU, memory and "
                                         "simulation speed over the simulators (JSON)")
    bench.add_argument("--trials", type=int, default=20, help="repetitions per reaction")
    bench.add_argument("--pretty", action="store_true", help="indented JSON")
    bench.add_argument("--scale", default="1,4,12", metavar="N,N,...",
                       help="gun counts of the scale points (default 1,4,12)")
    bench.add_argument("--station-guns", type=int, default=12, metavar="N",
                       help="guns of the simulated station run (default 12)")
    bench.add_argument("--day-guns", type=int, default=36, metavar="N",
                       help="guns of the station-day at the energy level (default 36)")
    bench.add_argument("--day-hours", type=float, default=24.0, metavar="H",
                       help="its simulated hours (default 24)")
    bench.add_argument("--soak", type=float, metavar="MINUTES",
                       help="instead: the service against the served pile for MINUTES of "
                            "real time (sessions per gun, faults, RSS growth, CPU, CCS p99, "
                            "records lost or duplicated)")
    bench.add_argument("--overhead", type=int, metavar="GUNS",
                       help="instead: the agent's CPU and CCS p99 on GUNS charging guns with "
                            "the metrics, status and JSON logs on and scraped vs off")
    bench.add_argument("--overhead-trials", type=int, default=3, metavar="N",
                       help="pairs of runs for --overhead (default 3)")
    bench.add_argument("--soak-guns", type=int, default=4, metavar="N",
                       help="guns of the soak's pile (default 4)")

    day = sub.add_parser("station-day",
                         help="a whole station's day at the energy level: the module pool and "
                              "the limit arbiter over simulated cars, no protocol messages")
    day.add_argument("--guns", type=int, default=36, help="guns of the station (default 36)")
    day.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    day.add_argument("--seed", type=int, default=1, help="draw of the day's cars (default 1)")
    day.add_argument("--step-s", type=float, default=1.0,
                     help="time step while anyone is plugged in (default 1 s)")
    day.add_argument("--grid-kw", type=float, help="site import limit (default 44.4 kW a gun)")
    day.add_argument("--export-kw", type=float, help="site export limit (default 22.2 kW a gun)")
    day.add_argument("--v2g-share", type=float, default=0.25,
                     help="share of the guns that discharge for the VPP (default 0.25)")
    day.add_argument("--dispatch", metavar="HH:MM-HH:MM", default="18:00-21:00",
                     help="the VPP's discharge window (default 18:00-21:00)")
    day.add_argument("--dispatch-kw", type=float, default=None,
                     help="what the VPP asks of the station then (default 1000 kW), "
                          "split over the V2G cars staying past the window")
    day.add_argument("--tariff", metavar="PILE_TOML",
                     help="price the day with this [tariff] table (default: 0.8 CNY/kWh, "
                          "discharge unpaid)")
    day.add_argument("--json", action="store_true", help="print the figures as JSON")
    day.add_argument("--report", metavar="DIR",
                     help="draw the day: report.html (import and export per quarter hour "
                          "against the limits, the VPP window, guns busy, what bound) and "
                          "junit.xml")

    hil = sub.add_parser("hil", help="the hardware-in-the-loop harness as a product")
    hil_sub = hil.add_subparsers(dest="hil_command", required=True)
    serve = hil_sub.add_parser(
        "serve", help="serve the simulated hardware a pile.toml names (on loopback), with "
                      "cars that come and go, until stopped")
    what = serve.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", metavar="PILE_TOML")
    what.add_argument("--example-config", action="store_true",
                      help="print a ready pile.toml: a 2-gun V2G pile on loopback")
    serve.add_argument("--seed", type=int, default=1, help="draw of the cars (default 1)")
    serve.add_argument("--v2g-share", type=float, default=0.5,
                       help="share of the cars that offer V2G (default 0.5)")
    serve.add_argument("--cars", type=int, default=0,
                       help="cars per gun, then none (default 0: for ever)")
    serve.add_argument("--fault-share", type=float, default=0.0,
                       help="share of the cars whose BMS falls silent mid-session (a fault "
                            "the agent must end the session on; default 0)")
    serve.add_argument("--stay-s", type=float, default=45.0,
                       help="a car's owner is back after this; the car stops and leaves "
                            "(default 45 s)")
    serve.add_argument("--external-cars", metavar="CAR_TOML", nargs="?", const="",
                       help="no simulated cars: each gun reads plugged and feeds a battery "
                            "emulator (the car of this scenario file, or the default car) "
                            "for `pile-agent hil car` on its CAN channel")
    car = hil_sub.add_parser(
        "car", help="the simulated car on a CAN bus against whatever charger is there, then "
                    "GB/T 34658-style verdicts on the charger (docs/HIL.md)")
    car.add_argument("--can", required=True, metavar="INTERFACE:CHANNEL",
                     help="the bus: socketcan:can0, slcan:/dev/ttyACM0, udp_loopback:NAME")
    who = car.add_mutually_exclusive_group()
    who.add_argument("--scenario", metavar="CAR_TOML",
                     help="the car ([car]) and what it does when (car steps) from a file")
    who.add_argument("--replay-bms", metavar="CANDUMP",
                     help="the car answers as the vehicle recorded in this trace did")
    car.add_argument("--max-s", type=float, default=600.0,
                     help="give up after this many seconds (default 600)")
    car.add_argument("--report", metavar="DIR",
                     help="junit.xml, report.html and the traffic as can.log/.asc/.blf")
    judge = hil_sub.add_parser(
        "judge", help="GB/T 34658-style verdicts on the charger in a recorded CAN trace "
                      "(candump, .asc or .blf; both directions)")
    judge.add_argument("trace", metavar="TRACE")

    run = sub.add_parser("run", help="run the agent against real interfaces until stopped "
                                     "(SIGTERM/SIGINT)")
    run.add_argument("--config", required=True, metavar="PILE_TOML")
    run.add_argument("--can-log", metavar="FILE", help="write the CAN traffic in candump format")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="text: lines for people (default); json: one JSON object a line "
                          "(time, gun, session, event, reason)")

    status = sub.add_parser("status", help="each gun of the running agent, from its status "
                                           "endpoint ([status] in the config)")
    status.add_argument("--config", required=True, metavar="PILE_TOML")
    status.add_argument("--json", action="store_true", help="the endpoint's JSON as it is")

    diag = sub.add_parser("diagnostics", help="one archive of a time window: events, the "
                                              "sessions' CAN traces, the ledger's rows, the "
                                              "config (secrets redacted), versions")
    diag.add_argument("--config", required=True, metavar="PILE_TOML")
    diag.add_argument("--since", metavar="TIME", help="ISO 8601, local time unless it says "
                                                      "(default: 24 h before --until)")
    diag.add_argument("--until", metavar="TIME", default="now", help="ISO 8601 or now")
    diag.add_argument("--out", metavar="FILE", help="the .tar.gz to write (default: "
                                                    "pile-agent-diagnostics-<until>.tar.gz)")
    diag.add_argument("--unit", default="pile-agent",
                      help="the systemd unit whose journal to include ('' for none)")
    return p


def _diagnostics(args: argparse.Namespace) -> int:
    from agent.diagnostics import build_archive, parse_time
    from agent.runtime.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pile-agent diagnostics: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        until = parse_time(args.until)
        since = parse_time(args.since) if args.since else until - 86_400.0
    except ValueError as exc:
        print(f"pile-agent diagnostics: --since/--until: {exc} (ISO 8601, e.g. "
              "2026-12-06T08:00)", file=sys.stderr)
        return 2
    if since > until:
        print("pile-agent diagnostics: --since is after --until", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(until))
    out = Path(args.out or f"pile-agent-diagnostics-{stamp}.tar.gz")
    try:
        build_archive(config, since, until, out, unit=args.unit)
    except OSError as exc:
        print(f"pile-agent diagnostics: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _writable(path: str | None) -> bool:
    """Opening the file is the only honest test (root passes every permission check, a
    full or read-only disk passes none of them); it is created here, and written later."""
    if path is None:
        return True
    try:
        with open(path, "a"):
            return True
    except OSError:
        return False


def _readable(path: str | None) -> bool:
    return path is None or (Path(path).is_file() and os.access(path, os.R_OK))


MAX_GUNS = 64  # a station's worth (36 guns) with room; each gun opens three loopback servers
# Every bad value gets a sentence naming it and exit 2, before anything starts.
SimCheck = tuple[Callable[[argparse.Namespace], bool], Callable[[argparse.Namespace], str]]
SIM_CHECKS: tuple[SimCheck, ...] = (
    (lambda a: math.isfinite(a.speed) and a.speed >= 0,
     lambda a: f"--speed {a.speed}: must be a finite number >= 0 (0 = as fast as possible)"),
    (lambda a: 1 <= a.guns <= MAX_GUNS,
     lambda a: f"--guns {a.guns}: must be 1-{MAX_GUNS}"),
    (lambda a: a.guns == 1 or (a.fault is None and a.replay_bms is None and a.can_log is None
                               and a.site_time is None and a.site_until is None
                               and a.speed == 0.0 and not a.lock_step),
     lambda a: "--guns: a pile scenario runs flat out; --fault, --replay-bms, --can-log, "
               "--site-time/--site-until, --speed and --lock-step are for one gun"),
    (lambda a: math.isfinite(a.max_sim_s) and a.max_sim_s > 0,
     lambda a: f"--max-sim-s {a.max_sim_s}: must be a finite number > 0"),
    (lambda a: 0.0 <= a.start_soc < a.target_soc <= 100.0,
     lambda a: f"--start-soc {a.start_soc} / --target-soc {a.target_soc}: need "
               "0 <= --start-soc < --target-soc <= 100"),
    (lambda a: _writable(a.can_log),
     lambda a: f"--can-log {a.can_log}: cannot write there"),
    (lambda a: a.report is None or _writable_dir(a.report),
     lambda a: f"--report {a.report}: cannot make or write that directory"),
    (lambda a: a.ledger == ":memory:" or _writable(a.ledger),
     lambda a: f"--ledger {a.ledger}: cannot write there"),
    (lambda a: _readable(a.replay_bms),
     lambda a: f"--replay-bms {a.replay_bms}: no readable file there"),
    (lambda a: all(v is None or _time_of_day(v) is not None
                   for v in (a.site_time, a.site_until)),
     lambda a: f"--site-time {a.site_time} / --site-until {a.site_until}: HH:MM or HH:MM:SS"),
    (lambda a: not a.plain or (a.scenario is None and a.fault is None
                               and a.replay_bms is None),
     lambda a: "--plain: a plain charge; not with --scenario, --fault or --replay-bms"),
    (lambda a: a.fault is None or a.scenario is None,
     lambda a: f"--fault {a.fault} / --scenario {a.scenario}: one or the other (a fault is "
               "injected into the plain session; a scenario scripts its own)"),
    (lambda a: (a.site_time is None and a.site_until is None) or a.scenario is not None,
     lambda a: "--site-time / --site-until: only with --scenario"),
    (lambda a: a.site_time is None or a.site_until is None
     or (_time_of_day(a.site_time) or 0.0) < (_time_of_day(a.site_until) or 0.0),
     lambda a: f"--site-until {a.site_until}: must be after --site-time {a.site_time} "
               "(the same day)"),
)


def _time_of_day(text: str) -> float | None:
    from hil.site_clock import parse_hhmm

    return parse_hhmm(text)


# What `pile-agent sim` runs when no flag names a session: V2G as the pilots run it.
DEMO_SCENARIO = "v2g-evening"


def _plain_or_demo(args: argparse.Namespace) -> None:
    """No scenario, fault, replayed car, SOC, site time or --plain named, on one gun: the
    V2G evening demo; otherwise the SOCs default to a 20 -> 80 % charge (and a site time
    without --scenario is refused, as before)."""
    named = (args.plain or args.scenario is not None or args.fault is not None
             or args.replay_bms is not None or args.start_soc is not None
             or args.target_soc is not None or args.guns != 1
             or args.site_time is not None or args.site_until is not None)
    if not named:
        args.scenario = DEMO_SCENARIO
    args.start_soc = 20.0 if args.start_soc is None else args.start_soc
    args.target_soc = 80.0 if args.target_soc is None else args.target_soc


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _is_file(name: str) -> bool:
    """A --scenario that names a file (a path, or anything ending .toml), not a built-in."""
    return name.endswith(".toml") or os.sep in name


def _scenario_file(fault: str | None, scenario: str | None) -> Any:
    """The scenario file a --fault or --scenario names (a built-in by name, or a path)."""
    from hil.pile_scenario_file import is_pile_file
    from hil.scenario_file import FAULT_DIR, SCENARIO_DIR, ScenarioError, load

    if fault is not None:
        return load(FAULT_DIR / f"{fault}.toml")
    if scenario is None:
        return None
    if _is_file(scenario) and is_pile_file(scenario):
        raise ScenarioError(f"{scenario}: a pile scenario ([pile]): run it with --guns N")
    return load(scenario if _is_file(scenario) else SCENARIO_DIR / f"{scenario}.toml")


def _pile_sim(args: argparse.Namespace) -> int:
    """`sim --guns N`: a pile scenario (a built-in by name, or a file) on N guns."""
    from hil import pile_scenario_file, sim_loop
    from hil.pile_sim import run_pile_sim_cli
    from hil.scenario_file import ScenarioError

    name = args.scenario or "pool-share"
    try:
        if _is_file(name) and not pile_scenario_file.is_pile_file(name):
            raise ScenarioError(f"{name}: a one-gun scenario (no [pile] table): run it "
                                "without --guns")
        sf = pile_scenario_file.load(name) if _is_file(name) \
            else pile_scenario_file.named(name)
        if args.guns < sf.min_guns:
            raise ScenarioError(f"--guns {args.guns}: {sf.name} needs at least {sf.min_guns}")
        sf.check_for(args.guns)
    except ScenarioError as exc:
        print(f"pile-agent sim: {exc}", file=sys.stderr)
        return 2
    return sim_loop.run(run_pile_sim_cli(sf, args.guns, args.json, live=not args.quiet,
                                         report_dir=args.report))


def _list_or_check(flag: str, name: str | None, known: dict[str, str]) -> int | None:
    """`--flag list` prints the table (exit 0); an unknown name is exit 2; else None."""
    if name == "list":
        for key, description in known.items():
            print(f"{key:26} {description}")
        return 0
    if name is not None and name not in known:
        print(f"pile-agent sim: unknown {flag} {name!r}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    return None


def _window(text: str) -> tuple[float, float] | None:
    """HH:MM-HH:MM as (start s, end s) of the day, end after start; None if not."""
    start, sep, end = text.partition("-")
    a, b = _time_of_day(start), _time_of_day(end)
    return (a, b) if sep and a is not None and b is not None and a < b else None


def _positive(x: float | None) -> bool:
    return x is None or (math.isfinite(x) and x > 0)


DAY_CHECKS: tuple[SimCheck, ...] = (
    (lambda a: 1 <= a.guns <= 200, lambda a: f"--guns {a.guns}: must be 1-200"),
    (lambda a: math.isfinite(a.hours) and 0 < a.hours <= 24 * 7,
     lambda a: f"--hours {a.hours}: must be a number in (0, 168]"),
    (lambda a: math.isfinite(a.step_s) and 0.1 <= a.step_s <= 60,
     lambda a: f"--step-s {a.step_s}: must be 0.1-60 s"),
    (lambda a: _positive(a.grid_kw) and _positive(a.export_kw) and _positive(a.dispatch_kw),
     lambda a: f"--grid-kw {a.grid_kw} / --export-kw {a.export_kw} / --dispatch-kw "
               f"{a.dispatch_kw}: each a number > 0"),
    (lambda a: math.isfinite(a.v2g_share) and 0 <= a.v2g_share <= 1,
     lambda a: f"--v2g-share {a.v2g_share}: must be 0-1"),
    (lambda a: _window(a.dispatch) is not None,
     lambda a: f"--dispatch {a.dispatch}: HH:MM-HH:MM, the end after the start"),
    (lambda a: _readable(a.tariff), lambda a: f"--tariff {a.tariff}: no readable file there"),
)


def _station_day(args: argparse.Namespace) -> int:
    for ok, message in DAY_CHECKS:
        if not ok(args):
            print(f"pile-agent station-day: {message(args)}", file=sys.stderr)
            return 2
    from agent.records_cli import load_tariff
    from hil.station_cars import Dispatch
    from hil.station_day import DayOptions, run_station_day_cli

    try:
        tariff = load_tariff(args.tariff)
    except ValueError as exc:
        print(f"pile-agent station-day: --tariff: {exc}", file=sys.stderr)
        return 2
    window = _window(args.dispatch)
    assert window is not None  # checked above
    watts = args.dispatch_kw * 1000 if args.dispatch_kw is not None else Dispatch().export_w
    options = DayOptions(
        guns=args.guns, seed=args.seed, hours=args.hours, step_s=args.step_s,
        v2g_share=args.v2g_share, dispatch=Dispatch(window[0], window[1], watts),
        grid_limit_w=args.grid_kw * 1000 if args.grid_kw else None,
        export_limit_w=args.export_kw * 1000 if args.export_kw else None, tariff=tariff)
    if args.report is not None and not _writable_dir(args.report):
        print(f"pile-agent station-day: --report {args.report}: cannot make or write that "
              "directory", file=sys.stderr)
        return 2
    return run_station_day_cli(options, args.json, report_dir=args.report)


def _hil_serve(args: argparse.Namespace) -> int:
    from hil.served_pile import EXAMPLE_CONFIG, CarPlan, serve

    if args.example_config:
        print(EXAMPLE_CONFIG, end="")
        return 0
    if not all(math.isfinite(x) and 0 <= x <= 1 for x in (args.v2g_share, args.fault_share)) \
            or args.cars < 0 or not (math.isfinite(args.stay_s) and 5 <= args.stay_s <= 86_400):
        print(f"pile-agent hil serve: --v2g-share {args.v2g_share} / --fault-share "
              f"{args.fault_share} / --cars {args.cars} / --stay-s {args.stay_s}: shares 0-1, "
              "cars >= 0, a stay of 5-86400 s", file=sys.stderr)
        return 2
    from agent.runtime.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pile-agent hil serve: bad config: {exc}", file=sys.stderr)
        return 2
    plan = CarPlan(seed=args.seed, v2g_share=args.v2g_share, cars=args.cars,
                   stay_s=args.stay_s, fault_share=args.fault_share)
    external = None
    if args.external_cars is not None:
        from hil.ev_bms import VehicleConfig
        from hil.scenario_file import ScenarioError, load

        try:
            external = load(args.external_cars).vehicle(VehicleConfig()) \
                if args.external_cars else VehicleConfig()
        except ScenarioError as exc:
            print(f"pile-agent hil serve: --external-cars: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(serve(config, plan, sys.stdout, external))


def _hil_car(args: argparse.Namespace) -> int:
    from hil.car_tester import parse_can, run_car_cli
    from hil.scenario_file import ScenarioError, load

    problems = []
    try:
        parse_can(args.can)
    except ValueError as exc:
        problems.append(str(exc))
    if not (math.isfinite(args.max_s) and 1 <= args.max_s <= 86_400):
        problems.append(f"--max-s {args.max_s}: 1-86400 s")
    if not _readable(args.replay_bms):
        problems.append(f"--replay-bms {args.replay_bms}: no readable file there")
    if args.report is not None and not _writable_dir(args.report):
        problems.append(f"--report {args.report}: cannot make or write that directory")
    sf = None
    if args.scenario is not None and not problems:
        try:
            sf = load(args.scenario)
            from hil.car_tester import car_steps

            car_steps(sf)
        except ScenarioError as exc:
            problems.append(str(exc))
    for problem in problems:
        print(f"pile-agent hil car: {problem}", file=sys.stderr)
    if problems:
        return 2
    import can

    try:
        return asyncio.run(run_car_cli(args.can, sf, args.replay_bms, args.max_s, args.report,
                                       sys.stdout))
    except (can.CanError, OSError, ValueError) as exc:
        print(f"pile-agent hil car: {args.can}: {exc}", file=sys.stderr)
        return 2


def _hil_judge(trace: str) -> int:
    """Verdicts on the charger of a recorded trace: 0 if none failed, 1 if one did."""
    import can

    from hil.car_tester import verdict_table
    from hil.charger_verdicts import judge

    try:
        frames = [(m.timestamp, m.arbitration_id, bytes(m.data))
                  for m in can.LogReader(trace) if not m.is_error_frame]
    except (OSError, ValueError, EOFError, struct.error, can.CanError) as exc:
        # A truncated or foreign file: python-can's readers raise what their parsers do.
        print(f"pile-agent hil judge: {trace}: not a readable CAN trace ({exc})",
              file=sys.stderr)
        return 2
    if not frames:
        print(f"pile-agent hil judge: {trace}: no CAN frames in it", file=sys.stderr)
        return 2
    verdicts = judge(frames)
    print(f"charger verdicts for {trace} ({len(frames)} frames):\n{verdict_table(verdicts)}")
    return 0 if all(v.passed for v in verdicts) else 1


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`pile-agent sim --fault list | head`): not an error of ours.
        # Python's recipe: point stdout at devnull so the exit flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "diagnostics":
        return _diagnostics(args)
    if args.command == "status":
        from agent.status_cli import run_status

        return run_status(args.config, args.json)
    if args.command == "records":
        from agent.records_cli import run_records

        return run_records(args.ledger, args.format, args.tariff)
    if args.command == "bench" and args.overhead is not None:
        if not 1 <= args.overhead <= 16 or not 1 <= args.overhead_trials <= 20:
            print(f"pile-agent bench: --overhead {args.overhead} / --overhead-trials "
                  f"{args.overhead_trials}: 1-16 guns, 1-20 trials", file=sys.stderr)
            return 2
        from hil.bench_overhead import main as overhead_main

        return overhead_main(args.overhead, args.overhead_trials, args.pretty)
    if args.command == "bench" and args.soak is not None:
        if not (math.isfinite(args.soak) and 0 < args.soak <= 7 * 24 * 60) \
                or not 1 <= args.soak_guns <= 16:
            print(f"pile-agent bench: --soak {args.soak} / --soak-guns {args.soak_guns}: "
                  "minutes in (0, 10080], 1-16 guns", file=sys.stderr)
            return 2
        import json

        from hil.soak import soak

        print(json.dumps(asyncio.run(soak(args.soak, args.soak_guns)),
                         indent=2 if args.pretty else None))
        return 0
    if args.command == "bench":
        if not 1 <= args.trials <= 1000:
            print(f"pile-agent bench: --trials {args.trials}: must be 1-1000", file=sys.stderr)
            return 2
        try:
            scale = tuple(int(n) for n in args.scale.split(","))
        except ValueError:
            scale = ()
        if not scale or not all(1 <= n <= 16 for n in scale) \
                or not 1 <= args.station_guns <= 16:
            print(f"pile-agent bench: --scale {args.scale} / --station-guns "
                  f"{args.station_guns}: gun counts 1-16 (one pile's matrix), comma-separated",
                  file=sys.stderr)
            return 2
        if not 1 <= args.day_guns <= 200 or not (math.isfinite(args.day_hours)
                                                 and 0 < args.day_hours <= 168):
            print(f"pile-agent bench: --day-guns {args.day_guns} / --day-hours "
                  f"{args.day_hours}: 1-200 guns, (0, 168] hours", file=sys.stderr)
            return 2
        from hil.bench import main as bench_main

        return bench_main(args.trials, args.pretty, scale, args.station_guns, args.day_guns,
                          args.day_hours)
    if args.command == "station-day":
        return _station_day(args)
    if args.command == "hil" and args.hil_command == "car":
        return _hil_car(args)
    if args.command == "hil" and args.hil_command == "judge":
        return _hil_judge(args.trace)
    if args.command == "hil":
        return _hil_serve(args)
    if args.command == "sim":
        from hil import pile_scenario_file, sim_loop
        from hil.scenario_file import FAULT_DIR, SCENARIO_DIR, ScenarioError, catalogue
        from hil.sim import SimOptions, run_sim_cli

        scenarios = catalogue(SCENARIO_DIR) if args.guns == 1 \
            else pile_scenario_file.catalogue()
        for flag, name, table in (("fault", args.fault, catalogue(FAULT_DIR)),
                                  ("scenario", args.scenario, scenarios)):
            if flag == "scenario" and name is not None and _is_file(name):
                continue
            code = _list_or_check(flag, name, table)
            if code is not None:
                return code

        _plain_or_demo(args)
        for ok, message in SIM_CHECKS:
            if not ok(args):
                print(f"pile-agent sim: {message(args)}", file=sys.stderr)
                return 2
        if args.guns > 1:
            return _pile_sim(args)
        if args.replay_bms is not None:
            from hil.replay_bms import RecordingError, load_recording

            try:
                load_recording(args.replay_bms)
            except (RecordingError, OSError, UnicodeDecodeError) as exc:
                print(f"pile-agent sim: --replay-bms: {exc}", file=sys.stderr)
                return 2
        try:
            scenario = _scenario_file(args.fault, args.scenario)
        except ScenarioError as exc:
            print(f"pile-agent sim: {exc}", file=sys.stderr)
            return 2
        options = SimOptions(
            speed=args.speed, can_log=args.can_log, start_soc_pct=args.start_soc,
            target_soc_pct=args.target_soc, max_sim_s=args.max_sim_s,
            json_summary=args.json, live=not args.quiet,
            replay_bms=args.replay_bms, scenario=scenario, ledger=args.ledger,
            report_dir=args.report,
            site_start_s=_time_of_day(args.site_time) if args.site_time else None,
            site_end_s=_time_of_day(args.site_until) if args.site_until else None,
            lock_step=args.lock_step,
        )
        return sim_loop.run(run_sim_cli(options, as_fault=args.fault is not None))
    from agent.runtime.config import ConfigError, load_config
    from agent.runtime.realtime import run_pile

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pile-agent run: bad config: {exc}", file=sys.stderr)
        return 2
    if not _writable(args.can_log):
        print(f"pile-agent run: --can-log {args.can_log}: cannot write there", file=sys.stderr)
        return 2
    return asyncio.run(run_pile(config, can_log=args.can_log, log_format=args.log_format))


if __name__ == "__main__":
    sys.exit(main())
