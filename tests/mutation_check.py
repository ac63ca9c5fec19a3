"""Mutation check of the safety suite: remove one arbiter limit, or disable one watchdog or
interlock, run the safety tests, and report whether they failed (they must), which test
failed, and on what example.

    python -m tests.mutation_check                # all mutations, a summary table (~30 min)
    python -m tests.mutation_check limit:EV_MAX   # one, with hypothesis's shrunk example
    python -m tests.mutation_check watchdog:BHM tests/test_safety_stateful.py   # one file

The table stops each failing test at its first counterexample (SAFETY_NO_SHRINK=1);
run one mutation on its own for the shrunk one.
    MUTATION_LOGS=DIR python -m tests.mutation_check   # keep each mutant's full output

The safety tests are the stateful suite (tests/test_safety_stateful.py: everything at
once, at random) and the one-fault-at-a-time properties (tests/test_safety_watchdogs.py);
both run on every mutant, and the table names each test that failed and the stateful
suite's first error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import partial
from unittest import mock

from agent.core import arbiter, thermal_guard, timing
from agent.core.arbiter import Limit
from agent.core.events import Event, ModuleLinkLost, SafetyInputs, SafetyIoLost
from agent.core.safety import Fault, SafetySupervisor
from agent.core.session import GunSession

INF = timing.Timing(math.inf, "mutation: disabled")
SAFETY_TESTS = ["tests/test_safety_watchdogs.py", "tests/test_safety_stateful.py"]
Mutation = Callable[[], AbstractContextManager[object]]


def _without_limit(limit: Limit) -> AbstractContextManager[object]:
    kept = tuple(c for c in arbiter.CANDIDATES if c[0] is not limit)
    return mock.patch.object(arbiter, "CANDIDATES", kept)


def _no_timeout(name: str) -> AbstractContextManager[object]:
    return mock.patch.dict(timing.TIMEOUTS, {name: INF})


def _no_deadline(constant: str) -> AbstractContextManager[object]:
    return mock.patch.object(timing, constant, INF)


def _ignore_event(kind: type[Event]) -> AbstractContextManager[object]:
    original = GunSession.handle

    def handle(self: GunSession, event: Event) -> list[object]:
        return [] if isinstance(event, kind) else original(self, event)  # type: ignore[return-value]

    return mock.patch.object(GunSession, "handle", handle)


def _ignore_input(field: str) -> AbstractContextManager[object]:
    """The supervisor reads the I/O board as if `field` were never set."""
    original = SafetySupervisor.input_fault

    def input_fault(self: SafetySupervisor) -> Fault | None:
        inputs = self.inputs
        if not isinstance(inputs, SafetyInputs):
            return original(self)
        self.inputs = dataclasses.replace(inputs, **{field: False})
        try:
            return original(self)
        finally:
            self.inputs = inputs

    return mock.patch.object(SafetySupervisor, "input_fault", input_fault)


def _thermal(**changes: object) -> AbstractContextManager[object]:
    return mock.patch.object(thermal_guard, "ThermalConfig",
                             partial(thermal_guard.ThermalConfig, **changes))


def _upstream_never_expires() -> AbstractContextManager[object]:
    original = SafetySupervisor.upstream_limit_a

    def upstream_limit_a(self: SafetySupervisor, now: float, charging: bool) -> tuple[float, bool]:
        return original(self, -math.inf, charging)

    return mock.patch.object(SafetySupervisor, "upstream_limit_a", upstream_limit_a)


def _no_ramp(decide: Callable[..., arbiter.CurrentDecision]) -> Callable[..., object]:
    def patched(limits: arbiter.CurrentLimits, previous_a: float, dt_s: float,
                ramp_up_a_per_s: float) -> arbiter.CurrentDecision:
        return decide(limits, previous_a, dt_s, math.inf)
    return patched


_CONNECTOR_NO_TRIP = (("connector", dataclasses.replace(thermal_guard.CONNECTOR, trip_c=math.inf)),
                      ("cable", thermal_guard.CABLE), ("module", thermal_guard.MODULE))

MUTATIONS: dict[str, Mutation] = {
    **{f"limit:{lim.name}": partial(_without_limit, lim)
       for lim in arbiter.Limit if lim not in (Limit.INVALID_INPUT, Limit.RAMP)},
    "ramp": lambda: mock.patch.object(arbiter, "decide_current",
                                      _no_ramp(arbiter.decide_current)),
    **{f"watchdog:{name}": partial(_no_timeout, name)
       for name in ("BHM", "BRM", "BCP", "BRO", "BRO_AA", "BCL", "BCS")},
    "watchdog:module-stale": partial(_no_deadline, "MODULE_STATUS_STALE"),
    "watchdog:module-link-lost": partial(_ignore_event, ModuleLinkLost),
    "watchdog:safety-io-stale": partial(_no_deadline, "SAFETY_IO_STALE"),
    "watchdog:safety-io-lost": partial(_ignore_event, SafetyIoLost),
    "watchdog:sensor-silent": partial(_thermal, silent_s=math.inf),
    "watchdog:contactor-feedback": partial(_no_deadline, "CONTACTOR_FEEDBACK"),
    "watchdog:stop-current-budget": partial(_no_deadline, "STOP_CURRENT_BUDGET"),
    "watchdog:insulation-budget": partial(_no_deadline, "INSULATION_CHECK_BUDGET"),
    "watchdog:precharge-budget": partial(_no_deadline, "PRECHARGE_BUDGET"),
    "watchdog:upstream-expiry": _upstream_never_expires,
    "interlock:gun-lock": lambda: mock.patch.object(SafetySupervisor, "gun_unlocked",
                                                    lambda self: False),
    "interlock:emergency-stop": partial(_ignore_input, "emergency_stop"),
    "interlock:door": partial(_ignore_input, "door_open"),
    "interlock:insulation-threshold": lambda: mock.patch.object(
        timing, "INSULATION_FAULT_OHM_PER_V", 0.0),
    "interlock:thermal-trip": partial(_thermal, kinds=_CONNECTOR_NO_TRIP),
}


def run_one(name: str, tests: list[str]) -> int:
    import pytest

    from agent.core import session as session_module

    # The session module imported decide_current by name; patch that reference too (after
    # the mutation, so it picks up a mutated function).
    with MUTATIONS[name](), mock.patch.object(session_module, "decide_current",
                                              arbiter.decide_current):
        # No pytest-timeout here: shrinking a stateful counterexample takes minutes.
        return pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "--timeout=0",
                            *(tests or SAFETY_TESTS)])


def _run_in_child(name: str) -> tuple[str, bool, str, str]:
    """(mutation, caught, the tests that failed, the stateful suite's first error)."""
    env = {**os.environ, "SAFETY_EXAMPLES": os.environ.get("SAFETY_EXAMPLES", "500"),
           "SAFETY_NO_DB": "1", "SAFETY_NO_SHRINK": "1"}
    out = subprocess.run([sys.executable, "-m", "tests.mutation_check", name], env=env,
                         capture_output=True, text=True)
    log_dir = os.environ.get("MUTATION_LOGS")
    if log_dir:
        with open(os.path.join(log_dir, name.replace(":", "_") + ".log"), "w") as fh:
            fh.write(out.stdout + out.stderr)
    failed = [f.split("::")[-1].replace("test_", "", 1)[:40]
              for f in re.findall(r"^FAILED (\S+)", out.stdout, re.MULTILINE)]
    stateful = out.stdout[out.stdout.find("test_safety_invariants_hold"):]
    first_error = next((ln.strip(" |E") for ln in stateful.splitlines()
                        if "AssertionError:" in ln), "")
    return name, out.returncode != 0, ", ".join(failed), first_error


def main(argv: list[str]) -> int:
    if argv:
        return run_one(argv[0], argv[1:])
    # Two at a time: the machines have two cores; shrinking a failure can take minutes.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run_in_child, MUTATIONS))
    for name, caught, tests, first_error in results:
        print(f"{name:30} {'CAUGHT' if caught else 'SURVIVED'}  {tests}  | {first_error}",
              flush=True)
    return 0 if all(caught for _n, caught, _t, _e in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
