"""Mutation check of the safety suite: remove one arbiter limit or disable one watchdog
or interlock, run the stateful suite, and report whether it failed (it must) and on what example.

    python -m tests.mutation_check            # all mutations, a summary table
    python -m tests.mutation_check EV_MAX     # one, with hypothesis's shrunk example
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from unittest import mock

from agent.core import arbiter, timing
from agent.core.arbiter import Limit
from agent.core.events import Event, ModuleLinkLost
from agent.core.safety import SafetySupervisor
from agent.core.session import GunSession

INF = timing.Timing(float("inf"), "mutation: disabled")


def _without_limit(limit: Limit) -> AbstractContextManager[object]:
    kept = tuple(c for c in arbiter.CANDIDATES if c[0] is not limit)
    return mock.patch.object(arbiter, "CANDIDATES", kept)


def _ignore_link_lost() -> AbstractContextManager[object]:
    original = GunSession.handle

    def handle(self: GunSession, event: Event) -> list[object]:
        return [] if isinstance(event, ModuleLinkLost) else original(self, event)  # type: ignore[return-value]

    return mock.patch.object(GunSession, "handle", handle)


MUTATIONS: dict[str, Callable[[], AbstractContextManager[object]]] = {
    **{f"limit:{lim.name}": (lambda lim=lim: _without_limit(lim))  # type: ignore[misc]
       for lim in arbiter.Limit if lim not in (Limit.INVALID_INPUT, Limit.RAMP)},
    "watchdog:BCL": lambda: mock.patch.dict(timing.TIMEOUTS, {"BCL": INF}),
    "watchdog:BCS": lambda: mock.patch.dict(timing.TIMEOUTS, {"BCS": INF}),
    "watchdog:BHM": lambda: mock.patch.dict(timing.TIMEOUTS, {"BHM": INF}),
    "watchdog:BRM": lambda: mock.patch.dict(timing.TIMEOUTS, {"BRM": INF}),
    "watchdog:module-stale": lambda: mock.patch.object(timing, "MODULE_STATUS_STALE", INF),
    "watchdog:module-link-lost": _ignore_link_lost,
    "interlock:gun-lock": lambda: mock.patch.object(SafetySupervisor, "gun_unlocked",
                                                    lambda self: False),
    "ramp": lambda: mock.patch.object(arbiter, "decide_current", _no_ramp(arbiter.decide_current)),
}


def _no_ramp(decide: Callable[..., arbiter.CurrentDecision]) -> Callable[..., object]:
    def patched(limits: arbiter.CurrentLimits, previous_a: float, dt_s: float,
                ramp_up_a_per_s: float) -> arbiter.CurrentDecision:
        return decide(limits, previous_a, dt_s, float("inf"))
    return patched


def run_one(name: str) -> int:
    import pytest

    from agent.core import session as session_module

    # The session module imported decide_current by name; patch that reference too (after
    # the mutation, so it picks up a mutated function).
    with MUTATIONS[name](), mock.patch.object(session_module, "decide_current",
                                              arbiter.decide_current):
        # No pytest-timeout here: shrinking a stateful counterexample takes minutes.
        return pytest.main(["-q", "-x", "-p", "no:cacheprovider", "--no-header", "--timeout=0",
                                "tests/test_safety_stateful.py"])


def _run_in_child(name: str) -> tuple[str, bool, str]:
    env = {**os.environ, "SAFETY_EXAMPLES": os.environ.get("SAFETY_EXAMPLES", "500"),
           "SAFETY_NO_DB": "1"}
    out = subprocess.run([sys.executable, "-m", "tests.mutation_check", name], env=env,
                         capture_output=True, text=True)
    log_dir = os.environ.get("MUTATION_LOGS")
    if log_dir:
        with open(os.path.join(log_dir, name.replace(":", "_") + ".log"), "w") as fh:
            fh.write(out.stdout + out.stderr)
    first_error = next((ln.strip(" |") for ln in out.stdout.splitlines()
                        if "AssertionError:" in ln), "")
    return name, out.returncode != 0, first_error


def main(argv: list[str]) -> int:
    if argv:
        return run_one(argv[0])
    # Two at a time: the machines have two cores; shrinking a failure can take minutes.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run_in_child, MUTATIONS))
    for name, caught, first_error in results:
        print(f"{name:28} {'CAUGHT' if caught else 'SURVIVED'}  {first_error}", flush=True)
    return 0 if all(caught for _n, caught, _e in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
