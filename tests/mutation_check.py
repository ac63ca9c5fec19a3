"""Mutation check of the safety suite: remove one arbiter limit, disable one watchdog or
interlock, or bring back one of the blind spots an audit found (what the charger
advertises, the car's voltage demand and alarms, both sides of the precharge and
insulation windows, one welded pole, the gun lock in precharge, config and flags); run the
tests, and report whether they failed (they must), which test caught it, and on what.

    python -m tests.mutation_check                # all mutations, a summary table
    python -m tests.mutation_check limit:EV_MAX   # one, with hypothesis's shrunk example
    python -m tests.mutation_check watchdog:BHM tests/test_safety_stateful.py   # one file

The table stops each failing test at its first counterexample (SAFETY_NO_SHRINK=1) and
each mutant at its first failing test (-x): the safety suite runs first, so a mutant it
catches is named with the suite's test. Run one mutation on its own for the shrunk example.
    MUTATION_LOGS=DIR python -m tests.mutation_check   # keep each mutant's full output

The tests: the one-fault-at-a-time properties (tests/test_safety_watchdogs.py), the
stateful suite (tests/test_safety_stateful.py: everything at once, at random), then the
unit tests that hold the codecs, the config, the flags and the contactor poles.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

from agent import cli
from agent.core import (
    arbiter,
    gbt_profile,
    module_pool,
    outgoing,
    pile_split,
    plant_checks,
    plug_detection,
    ratings,
    steps,
    thermal_guard,
    timing,
)
from agent.core import health_policy as health_module
from agent.core import metering as metering_module
from agent.core import module_faults as module_faults_module
from agent.core import transfer_control as transfer_module
from agent.core import upstream as upstream_module
from agent.core.arbiter import Limit, VoltageDecision
from agent.core.commands import LedgerInterval, ResetSafetyTrip, SessionReport
from agent.core.events import (
    EnergyHistory,
    Event,
    InsulationStatus,
    ModuleLinkLost,
    ModuleStatus,
    SafetyInputs,
    SafetyIoLost,
    VehicleDisconnected,
)
from agent.core.health_policy import HealthPolicy
from agent.core.messages import BSM, CCS, CDP, CML, Level
from agent.core.messages import ChargerFault as ChargerFaultEnum
from agent.core.ratings import GunRatings
from agent.core.safety import Fault, SafetySupervisor
from agent.core.safety_handling import SafetyHandling
from agent.core.session import GunSession
from agent.core.session_base import SessionBase
from agent.core.session_data import SessionData
from agent.core.states import State
from agent.core.transfer_control import TransferControl
from agent.core.upstream import UpstreamArbiter
from agent.core.vehicle_view import VehicleView
from agent.ledger import outbox as outbox_module
from agent.ledger import store as store_module
from agent.ledger.store import Ledger
from agent.runtime.gun_runtime import GunRuntime
from drivers.gbt27930 import codec as gbt_codec
from drivers.gbt27930.wire import current_raw
from drivers.ocpp import profiles as profiles_module
from drivers.ocpp.profiles import ProfileStore
from drivers.power_module import codec as module_codec
from drivers.power_module import regmap as regmap_module
from drivers.power_module.link import ModuleLink
from drivers.sunspec import ems_controls as ems_module
from drivers.sunspec.ems_controls import EmsControls
from drivers.sunspec.server import SunSpecServer

INF = timing.Timing(math.inf, "mutation: disabled")
# The safety suite first (the table then names it when it catches a mutant), then the unit
# tests that hold the codecs, the config and the sequence windows on every side.
SAFETY_TESTS = ["tests/test_safety_watchdogs.py", "tests/test_v2g_watchdogs.py",
                "tests/test_safety_stateful.py", "tests/test_pile_safety.py",
                "tests/test_vehicle_data.py", "tests/test_contactor_feedback.py",
                "tests/test_config.py", "tests/test_gbt_codec_roundtrip.py",
                "tests/test_v2g_session.py", "tests/test_arbiter.py",
                "tests/test_upstream_arbiter.py", "tests/test_sunspec_server.py",
                "tests/test_ocpp_client.py", "tests/test_plant_checks.py",
                "tests/test_module_link.py", "tests/test_ledger_faults.py",
                "tests/test_audit_mutants.py", "tests/test_module_status_words.py",
                "tests/test_plug_detection.py", "tests/test_pile_split.py",
                "tests/test_safety_io.py", "tests/test_shutdown_paths.py",
                "tests/test_energy_history_path.py", "tests/test_heartbeat_on_the_wire.py",
                "tests/test_session_scenarios.py"]
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
    original = UpstreamArbiter.limit_a

    def limit_a(self: UpstreamArbiter, now: float, charging: bool, volts: float,
                target_volts: float | None = None) -> tuple[float, bool]:
        return original(self, -math.inf, charging, volts, target_volts)

    return mock.patch.object(UpstreamArbiter, "limit_a", limit_a)


def _no_ramp(decide: Callable[..., arbiter.CurrentDecision]) -> Callable[..., object]:
    def patched(limits: arbiter.CurrentLimits, previous_a: float, dt_s: float,
                ramp_up_a_per_s: float) -> arbiter.CurrentDecision:
        return decide(limits, previous_a, dt_s, math.inf)
    return patched


def _cml_as(make: Callable[[float, float, float, float], CML]) -> AbstractContextManager[object]:
    """What the charger advertises, changed (outgoing.py builds CML from the ratings)."""
    return mock.patch.object(outgoing, "CML", make)


def _cml_max_current_with_discharge_sign() -> AbstractContextManager[object]:
    def encode(m: CML) -> bytes:
        return gbt_codec._pack("CML", {
            "max_voltage": round(m.max_voltage_v * 10), "min_voltage": round(m.min_voltage_v * 10),
            "max_current": current_raw(+m.max_current_a, "CML.max_current"),
            "min_current": current_raw(-m.min_current_a, "CML.min_current")})
    return mock.patch.dict(gbt_codec._ENCODERS, {CML: encode})


def _voltage_from_bcp_max() -> AbstractContextManager[object]:
    def decide(demand: float, ev_max: float, bhm: float, charger: float) -> object:
        return arbiter.decide_voltage(ev_max, ev_max, bhm, charger)
    return mock.patch.object(transfer_module, "decide_voltage", decide)


def _bsm_ignores_insulation() -> AbstractContextManager[object]:
    def abnormal(self: BSM) -> bool:
        return (self.cell_voltage is not Level.NORMAL or self.soc is not Level.NORMAL
                or self.over_current or self.over_temperature or self.connector_fault)
    return mock.patch.object(BSM, "abnormal", abnormal)


def _insulation_relaxed_while_charging() -> AbstractContextManager[object]:
    """The IMD's <= 100 ohm/V fault line during charging moved to 50 ohm/V."""
    original = SafetyHandling._on_insulation

    def relaxed(self: GunSession, status: InsulationStatus) -> None:
        if self.state is State.CHARGING and status.resistance_ohm is not None:
            status = dataclasses.replace(status, resistance_ohm=status.resistance_ohm * 2)
        original(self, status)
    return mock.patch.object(SafetyHandling, "_on_insulation", relaxed)


def _gun_lock_ignored_in_precharge() -> AbstractContextManager[object]:
    original = SessionBase._gun_lock_refuses

    def refuses(self: GunSession) -> bool:
        return False if self.state is State.PRECHARGE else original(self)
    return mock.patch.object(SessionBase, "_gun_lock_refuses", refuses)


def _without_rating_check(probe: GunRatings) -> AbstractContextManager[object]:
    """GunRatings.problems() without the check that refuses `probe`."""
    kept = tuple(c for c in ratings.RATING_CHECKS if c[0](probe))
    assert len(kept) == len(ratings.RATING_CHECKS) - 1, "the probe must fail one check"
    return mock.patch.object(ratings, "RATING_CHECKS", kept)


class _Flags(argparse.Namespace):
    """`pile-agent sim`'s flags for a check's message: a flag not given reads as None."""

    def __getattr__(self, name: str) -> None:
        return None


def _without_sim_check(flag: str) -> AbstractContextManager[object]:
    # Every message is asked of a probe (a message that named a flag the probe lacked once
    # crashed the harness itself, which the table counted as CAUGHT).
    probe = _Flags(speed=0.0, max_sim_s=1.0, start_soc=20.0, target_soc=80.0, guns=1,
                   can_log=None, replay_bms=None, ledger=":memory:")
    kept = tuple(c for c in cli.SIM_CHECKS if not c[1](probe).startswith(flag))
    assert len(kept) == len(cli.SIM_CHECKS) - 1, flag
    return mock.patch.object(cli, "SIM_CHECKS", kept)


# Each class the audit found surviving (issue 7): what the charger advertises, the car's
# voltage demand and alarms, both sides of the precharge and insulation windows, one welded
# pole, the gun lock in precharge, and config / flags that were accepted.
BLIND_SPOTS: dict[str, Mutation] = {
    "advertised:cml-max-current-sign": _cml_max_current_with_discharge_sign,
    "advertised:cml-above-rating": partial(_cml_as, lambda a, b, c, d: CML(a, b, min(c * 1.2,
                                                                                     400.0), d)),
    "advertised:cml-min-above-max": partial(_cml_as, lambda a, b, c, d: CML(a, b, c, c + 10.0)),
    "ev:voltage-from-bcp-max": _voltage_from_bcp_max,
    "bsm:insulation-flag-ignored": _bsm_ignores_insulation,
    "bsm:untrusted-10-not-set": lambda: mock.patch.object(gbt_codec, "_flag",
                                                          lambda raw: raw == 1),
    "precharge:closes-above-battery": lambda: mock.patch.object(
        steps, "precharge_gap_holds", lambda b, o: 1.0 <= abs(b - o) <= 10.0),
    "precharge:plausibility-one-side": lambda: mock.patch.object(
        steps, "battery_voltage_plausible", lambda m, r: m - r <= 0.05 * r),
    "insulation:charging-threshold-relaxed": _insulation_relaxed_while_charging,
    "insulation:test-voltage-max": lambda: mock.patch.object(
        steps, "insulation_test_voltage", max),
    "insulation:measured-at-half-voltage": lambda: mock.patch.object(
        timing, "INSULATION_AT_TEST_VOLTAGE", 0.5),
    "contactor:one-welded-pole-hidden": lambda: mock.patch.object(
        module_codec, "contactor_poles", lambda fb: ((fb & 3) == 3, (fb & 3) == 3)),
    "interlock:gun-lock-in-precharge": _gun_lock_ignored_in_precharge,
    "config:gbt-400-a-ceiling": partial(_without_rating_check,
                                        GunRatings(max_current_a=500.0, max_power_w=4e5)),
    "config:min-current-above-max": partial(_without_rating_check,
                                            GunRatings(min_current_a=300.0)),
    "cli:speed": partial(_without_sim_check, "--speed"),
    "cli:can-log": partial(_without_sim_check, "--can-log"),
}

def _upstream_discharge_never_expires() -> AbstractContextManager[object]:
    original = UpstreamArbiter.limit_a

    def limit_a(self: UpstreamArbiter, now: float, charging: bool, volts: float,
                target_volts: float | None = None) -> tuple[float, bool]:
        return original(self, now if charging else -math.inf, charging, volts, target_volts)

    return mock.patch.object(UpstreamArbiter, "limit_a", limit_a)


def _grid_trips_ignored() -> AbstractContextManager[object]:
    """The module's grid-side trips (fault bits 7-10) read as if clear."""
    original = GunSession._on_module_status

    def on_status(self: GunSession, status: ModuleStatus) -> None:
        original(self, dataclasses.replace(status, fault_word=status.fault_word & ~0x0780))
    return mock.patch.object(GunSession, "_on_module_status", on_status)


def _discharge_limits_changed(change: Callable[[TransferControl, arbiter.CurrentLimits],
                                               arbiter.CurrentLimits]
                              ) -> AbstractContextManager[object]:
    original = TransferControl._discharge_limits

    def limits(self: TransferControl, state_limit_a: float, view: VehicleView
               ) -> tuple[arbiter.CurrentLimits, VoltageDecision]:
        lim, voltage = original(self, state_limit_a, view)
        return change(self, lim), voltage
    return mock.patch.object(TransferControl, "_discharge_limits", limits)


def _view_changed(change: Callable[[SessionData], SessionData]) -> AbstractContextManager[object]:
    """The vehicle view built from changed session data (what the profile reads wrong)."""
    original = transfer_module.view_of

    def view_of(d: SessionData, now: float) -> VehicleView:
        return original(change(d), now)
    return mock.patch.object(transfer_module, "view_of", view_of)


def _bds_does_not_narrow(d: SessionData) -> SessionData:
    if d.bds is None or d.bdp is None:
        return d
    wide = dataclasses.replace(d.bds, max_discharge_current_a=d.bdp.max_discharge_current_a,
                               soc_floor_pct=d.bdp.soc_floor_pct)
    return dataclasses.replace(d, bds=wide)


def _owner_policies_ignored() -> AbstractContextManager[object]:
    def health_policy(self: TransferControl) -> HealthPolicy:
        return self.operator_policy
    return mock.patch.object(TransferControl, "health_policy", health_policy)


def _ccs_discharge_sent_as_charge() -> AbstractContextManager[object]:
    original = gbt_codec._ENCODERS[CCS]

    def encode(m: CCS) -> bytes:
        return original(dataclasses.replace(m, output_current_a=abs(m.output_current_a)))
    return mock.patch.dict(gbt_codec._ENCODERS, {CCS: encode})


# Discharge (issue 8): each V2G interlock and each limit the arbiter does not hold as a
# candidate of its own (the limit:* mutants above cover the seven discharge candidates).
V2G: dict[str, Mutation] = {
    "v2g:bds-staleness": partial(_no_deadline, "V2G_STATUS"),
    "v2g:bdp-answer-window": partial(_no_deadline, "V2G_ANSWER"),
    "v2g:direction-budget": partial(_no_deadline, "DIRECTION_CHANGE_BUDGET"),
    "v2g:direction-dwell": lambda: mock.patch.object(
        timing, "DIRECTION_DWELL", timing.Timing(0.0, "mutation: no dwell")),
    "v2g:direction-5a": lambda: mock.patch.object(timing, "DIRECTION_CHANGE_CURRENT_A", 1e9),
    "v2g:upstream-expiry": _upstream_discharge_never_expires,
    "v2g:grid-trips": _grid_trips_ignored,
    "v2g:voltage-floor": lambda: mock.patch.object(
        transfer_module, "decide_discharge_voltage",
        lambda ev_min, charger_min: arbiter.decide_discharge_voltage(0.0, charger_min)),
    "v2g:export-limit": partial(_discharge_limits_changed, lambda s, lim: dataclasses.replace(
        lim, grid_limit_w=s.ratings.grid_limit_w)),
    "v2g:module-reverse-capability": partial(
        _discharge_limits_changed, lambda s, lim: dataclasses.replace(
            lim, module_capability_a=math.inf, power_limit_w=s.ratings.max_discharge_power_w)),
    "v2g:charger-discharge-rating": partial(
        _discharge_limits_changed, lambda s, lim: dataclasses.replace(
            lim, charger_max_a=s.ratings.max_current_a)),
    "v2g:bds-does-not-narrow": partial(_view_changed, _bds_does_not_narrow),
    "v2g:consent-ignored": partial(_view_changed, lambda d: dataclasses.replace(
        d, bdp=d.bdp and dataclasses.replace(d.bdp, consent=True),
        bds=d.bds and dataclasses.replace(d.bds, consent=True))),
    "v2g:owner-policy-ignored": _owner_policies_ignored,
    "v2g:energy-history-ignored": partial(_ignore_event, EnergyHistory),
    "advertised:cdp-above-rating": lambda: mock.patch.object(
        outgoing, "CDP", lambda o, a, w, v, *rest: CDP(o, a * 1.2, w, v)),
    "advertised:ccs-discharge-sign": _ccs_discharge_sent_as_charge,
}

class MutantBroken(Exception):
    """The mutation's own code no longer fits the code it changes (a signature moved on): the
    mutant then crashes, and a test that fails on that crash has caught nothing."""


def _wrapped(owner: type, name: str,
             change: Callable[..., object]) -> AbstractContextManager[object]:
    """Patch owner.name with change(original, self, *args)."""
    original = getattr(owner, name)
    signature = inspect.signature(change)

    def patched(self: object, *args: object, **kwargs: object) -> object:
        try:
            signature.bind(original, self, *args, **kwargs)
        except TypeError as e:
            raise MutantBroken(f"{change.__name__} cannot take the call to {name}: {e}") from e
        return change(original, self, *args, **kwargs)

    return mock.patch.object(owner, name, patched)


def _fallback_discharges(original: Callable[..., tuple[float, bool]], self: UpstreamArbiter,
                         now: float, charging: bool, *rest: object,
                         **named: object) -> tuple[float, bool]:
    amps, fallback = original(self, now, charging, *rest, **named)
    return (self.policy.fallback_charge_a if fallback and not charging else amps), fallback


def _problem_unless(words: tuple[str, ...]) -> Callable[..., str]:
    def change(original: Callable[..., str], self: object, *args: object) -> str:
        problem = original(self, *args)
        return "" if any(w in problem for w in words) else problem
    return change


def _ems_discharge_ungated(original: Callable[..., object], self: EmsControls, t: float,
                           written: list[object]) -> object:
    for w in written:
        self._apply(t, w.point.write, w.value)  # type: ignore[attr-defined]
    return None


_ORIGINAL_PERIOD = profiles_module._period


def _period_range_unchecked(p: dict[str, object]) -> object:
    """The period's own checks, but a setpoint is never held to [dischargeLimit, limit]."""
    loose = _ORIGINAL_PERIOD({**p, "limit": None, "discharge_limit": None})
    if isinstance(loose, profiles_module.Rejection):
        return _ORIGINAL_PERIOD(p)
    return dataclasses.replace(loose, limit=p.get("limit"),  # type: ignore[type-var]
                               discharge_limit=p.get("discharge_limit"))


# Upstream (issue 9): the setpoint arbiter, the OCPP profile rules, the SunSpec edge.
UPSTREAM: dict[str, Mutation] = {
    "upstream:fallback-discharges": partial(_wrapped, UpstreamArbiter, "limit_a",
                                            _fallback_discharges),
    "upstream:no-rate-limit": partial(_wrapped, UpstreamArbiter, "_problem",
                                      _problem_unless(("too frequent",))),
    "upstream:range-unchecked": partial(_wrapped, UpstreamArbiter, "_problem",
                                        _problem_unless(("rated", "below 0"))),
    "upstream:no-voltage-floor": lambda: mock.patch.object(
        UpstreamArbiter, "_volts", lambda self, v: v if math.isfinite(v) else 1.0),
    "upstream:lowest-priority-leads": lambda: mock.patch.object(
        UpstreamArbiter, "leader", lambda self, now: min(
            (o for o in self.live(now) if o.sp.setpoint is not None or o.curve),
            key=lambda o: (o.priority, -o.accepted_at), default=None)),
    "ocpp:max-offline-ignored": partial(
        _wrapped, ProfileStore, "offers",
        lambda original, self, now, offline_s=0.0: original(self, now, 0.0)),
    "ocpp:setpoint-range-unchecked": lambda: mock.patch.object(
        profiles_module, "_period", _period_range_unchecked),
    "sunspec:discharge-ungated": partial(_wrapped, EmsControls, "on_write",
                                         _ems_discharge_ungated),
}

_CONNECTOR_NO_TRIP = (("connector", dataclasses.replace(thermal_guard.CONNECTOR, trip_c=math.inf)),
                      ("cable", thermal_guard.CABLE), ("module", thermal_guard.MODULE))

def _capability_zero_unlimited(original: Callable[..., object], self: TransferControl,
                               *args: object) -> object:
    """The bug the fault campaign found: a module reporting 0 A capability is read as 'no
    limit' (`capability or math.inf`)."""
    limits = original(self, *args)
    assert isinstance(limits, arbiter.CurrentLimits)
    if limits.module_capability_a == 0.0:
        return dataclasses.replace(limits, module_capability_a=math.inf)
    return limits


def _link_trusts_read_back() -> AbstractContextManager[object]:
    """The driver takes the module's read-back for what it was told (the original bug): a
    word that reads back as commanded is not written, and nothing is re-asserted."""
    def stage(self: ModuleLink, cmd: object) -> None:
        encoded = module_codec.encode_command(self.regmap, cmd,  # type: ignore[arg-type]
                                              self._latest(self.regmap["mode"].address))
        self._commanded.update(encoded.words)
        known = {**self._written, **self.__dict__.get("_read_back", {})}
        self._queue({a: w for a, w in encoded.words.items()
                     if encoded.trigger or known.get(a) != w}, encoded.words)

    def reassert(self: ModuleLink, read_back: dict[int, int], status: object) -> None:
        self.__dict__["_read_back"] = read_back

    return _patches(mock.patch.object(ModuleLink, "stage", stage),
                    mock.patch.object(ModuleLink, "_reassert", reassert))


def _patches(*patches: AbstractContextManager[object]) -> AbstractContextManager[object]:
    stack = ExitStack()
    for patch in patches:
        stack.enter_context(patch)
    return stack


# The output unit held to what it was told (issue 24: docs/SAFETY.md I16-I18, I1's 0 A).
PLANT: dict[str, Mutation] = {
    "plant:over-voltage-ignored": lambda: mock.patch.object(
        plant_checks.OverVoltageWatch, "sample", lambda self, *a: None),
    "plant:over-current-ignored": lambda: mock.patch.object(
        plant_checks.OverCurrentWatch, "sample", lambda self, *a: None),
    "plant:over-current-no-settling": lambda: mock.patch.object(
        timing, "SETTLE_MIN", timing.Timing(0.0, "mutation")),
    "plant:zero-capability-unlimited": partial(_wrapped, TransferControl, "_charge_limits",
                                               _capability_zero_unlimited),
    "link:trusts-read-back": _link_trusts_read_back,
    "ledger:no-checkpoint": lambda: mock.patch.object(
        metering_module.Metering, "checkpoint", lambda self, wall: None),
}


def _cdp_with_charge_sign(m: CDP) -> bytes:
    """CDP's maximum discharge current encoded with CML's charge sign."""
    return gbt_codec._pack("CDP", {
        "offered": gbt_codec.consent_byte(m.offered),
        "max_discharge_current": current_raw(-m.max_discharge_current_a, "CDP"),
        "max_discharge_power": gbt_codec._r(m.max_discharge_power_w, 100, "CDP"),
        "min_input_voltage": gbt_codec._r(m.min_input_voltage_v, 0.1, "CDP"),
        "version": m.version})


def _bdp_consent_stands(original: Callable[..., tuple[object, bool]], d: SessionData,
                        now: float) -> tuple[object, bool]:
    """With no BDS ever received, the BDP's consent stands in energy transfer too."""
    limits, consent = original(d, now)
    if d.bds is None and d.bdp is not None and limits is not None:
        return limits, d.bdp.consent
    return limits, consent


def _unknown_soc_allows(original: Callable[..., tuple[float, str]], policy: HealthPolicy,
                        view: VehicleView, direction: object) -> tuple[float, str]:
    if view.soc_pct is None:
        return math.inf, ""
    return original(policy, view, direction)


def _loopback_always_writes() -> AbstractContextManager[object]:
    original = SunSpecServer.__init__

    def init(self: SunSpecServer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self.allowed_writers = (*self.allowed_writers, "127.0.0.1")

    return mock.patch.object(SunSpecServer, "__init__", init)


def _gate_on_first_point(self: EmsControls, t: float, written: list[Any]) -> int | None:
    """EmsControls.on_write checking the discharge gate and the ratings on the write's first
    point only."""
    for w in written[:1]:
        if w.point.write == "wset_w" and w.value < 0 and not self.settings.allow_discharge:
            return ems_module.ILLEGAL_DATA_VALUE
        if w.point.write == "wset_w" and upstream_module.setpoint_problem(
                w.value, "W", self.settings.ratings):
            return ems_module.ILLEGAL_DATA_VALUE
    for w in written:
        self._apply(t, w.point.write, w.value)
    return None


def _charging_only_discharges(original: Callable[..., Any], p: object, q: object,
                              until: float) -> Any:
    offer = original(p, q, until)
    if offer.mode == "ChargingOnly":
        return dataclasses.replace(offer, discharge_limit=math.inf)
    return offer


def _synchronous_normal() -> AbstractContextManager[object]:
    original = store_module.open_durable

    def opened(path: object, schema: str) -> Any:
        db = original(path, schema)  # type: ignore[arg-type]
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    return _patches(mock.patch.object(store_module, "open_durable", opened),
                    mock.patch.object(outbox_module, "open_durable", opened))


def _report_before_write(original: Callable[..., None], self: GunRuntime,
                         command: object) -> None:
    if isinstance(command, LedgerInterval | SessionReport):
        self._report(command)  # type: ignore[arg-type]
    original(self, command)


def _function(module: object, name: str,
              change: Callable[..., object]) -> AbstractContextManager[object]:
    """Patch module.name (a function) with change(original, *args)."""
    original = getattr(module, name)
    return mock.patch.object(module, name, partial(change, original))


def _unplug_clears_latches(original: Callable[..., Any], self: GunSession,
                           event: Event) -> Any:
    if isinstance(event, VehicleDisconnected):
        self.safety.latched.clear()
    return original(self, event)


def _current_scale_wrong() -> AbstractContextManager[object]:
    """register_map.toml with output_current at 0.01 A a count instead of 0.1 A: encoder and
    decoder agree with each other, so only words written from the device's layout see it."""
    original = regmap_module.parse_register_map

    def parse(document: Any) -> Any:
        regs = [dict(r, scale=0.01, min=-327.68, max=327.67)
                if r.get("name") == "output_current" else r
                for r in document.get("register", [])]
        return original({**document, "register": regs})

    return mock.patch.object(regmap_module, "parse_register_map", parse)


# What an audit found the whole suite let through (issue 25: tests/test_audit_mutants.py).
AUDIT: dict[str, Mutation] = {
    "audit:cdp-charge-sign": lambda: mock.patch.dict(gbt_codec._ENCODERS,
                                                     {CDP: _cdp_with_charge_sign}),
    "audit:bdp-consent-without-bds": partial(_function, gbt_profile, "_discharge",
                                             _bdp_consent_stands),
    "audit:unknown-soc-allows-discharge": lambda: _patches(
        _function(health_module, "soc_window_limit", _unknown_soc_allows),
        _function(transfer_module, "soc_window_limit", _unknown_soc_allows)),
    "audit:loopback-always-writes": _loopback_always_writes,
    "audit:discharge-gate-first-point": lambda: mock.patch.object(
        EmsControls, "on_write", _gate_on_first_point),
    "audit:charging-only-discharges": partial(_function, profiles_module, "_tx_offer",
                                              _charging_only_discharges),
    "audit:ledger-synchronous-normal": _synchronous_normal,
    "audit:report-before-write": partial(_wrapped, GunRuntime, "_execute",
                                         _report_before_write),
    "audit:register-scale": _current_scale_wrong,
    # Stale and over-long offers taken (the world's oracle once read the core's own policy).
    "audit:upstream-policy-loosened": partial(
        _wrapped, UpstreamArbiter, "__post_init__",
        lambda original, self: (original(self), setattr(self, "policy", dataclasses.replace(
            self.policy, max_delivery_age_s=120.0, max_validity_s=7200.0)))),
    # I5 / I12 (the world's oracle once took the core's own emergency and latch verdicts):
    # the gun lock opening under load handled as an emergency (K1/K2 opened under load);
    # an unplug that clears the latched faults (a welded contactor no longer blocks a start).
    "audit:error-stop-as-emergency": partial(
        _wrapped, SessionBase, "_fault",
        lambda original, self, reason, **kw: original(
            self, reason, **{**kw, "emergency": kw.get("emergency", False)
                             or kw.get("code") == "gun_lock"})),
    "audit:latch-cleared-on-unplug": partial(_wrapped, GunSession, "handle",
                                             _unplug_clears_latches),
    # The day's discharge budget counted from a day too early (the real path: the ledger's
    # records by VIN since local midnight, tests/test_energy_history_path.py).
    "audit:history-counts-yesterday": partial(
        _wrapped, Ledger, "discharged_today",
        lambda original, self, vin, day_start: original(self, vin, day_start - 86_400.0)),
    "audit:fault-bit-misclassified": lambda: mock.patch.dict(
        module_faults_module.MODULE_FAULT_BITS,
        {2: module_faults_module.ModuleFaultBit("over_current", False, False,
                                                ChargerFaultEnum.OTHER)}),
}


def _kick_regardless(original: Callable[..., None], self: SafetyHandling) -> None:
    saved, self.act.internal_error = self.act.internal_error, ""
    try:
        original(self)
    finally:
        self.act.internal_error = saved


# The service's own safety rules (issue 20).
SERVICE: dict[str, Mutation] = {
    # A plug bounce starts a session.
    "service:plug-no-confirm": lambda: mock.patch.object(
        plug_detection, "CONNECT_CONFIRM", timing.Timing(0.0, "mutation")),
    # A pile-level limit shared as if every gun could have its whole capacity.
    "service:split-ignores-the-total": partial(
        _function, pile_split, "water_fill",
        lambda _original, total, capacities, priorities: dict(capacities)),
    # A core that failed once feeds the safety controller's watchdog again (I15).
    "service:heartbeat-after-internal-error": partial(
        _wrapped, SafetyHandling, "_kick_heartbeat", _kick_regardless),
    # The heartbeat trip re-armed whatever is at stake.
    "service:rearm-at-stake": lambda: mock.patch.object(
        SafetyHandling, "_rearm_heartbeat_trip", _rearm_regardless),
    # A shutdown no module reading confirms keeps feeding the safety controller's watchdog
    # (a module that refuses every write keeps 250 A with K1/K2 closed).
    "service:unconfirmed-safe-state-keeps-the-heartbeat": lambda: mock.patch.object(
        SafetyHandling, "_confirm_safe_state", lambda self: None),
    # Python 3.11's asyncio.wait_for back in every bounded wait: a stop that arrives as a
    # wait ends is dropped, and the loop runs on (issue 25: a 20-minute hang).
    "service:wait-for-drops-a-stop": lambda: _everywhere("within", asyncio.wait_for),
    # A group leaves its gun on a <= 5 A reading taken before its hold began (the gun's
    # current may have risen past 5 A since: P2).
    "pile:switch-on-an-old-reading": lambda: mock.patch.object(
        module_pool, "_unloaded", lambda need, since: need is None
        or need.measured_a <= module_pool.SWITCH_CURRENT_A),
}

def _waiting_modules() -> list[str]:
    """The product's modules that bound a wait with drivers.task_end.within (read from the
    source, so a new one is mutated too)."""
    root = Path(__file__).parents[1]
    return sorted(".".join(p.relative_to(root).with_suffix("").parts)
                  for d in ("agent", "drivers") for p in (root / d).rglob("*.py")
                  if p.name != "task_end.py" and "within(" in p.read_text())


def _everywhere(name: str, replacement: object) -> AbstractContextManager[object]:
    stack = ExitStack()
    for module in _waiting_modules():
        stack.enter_context(mock.patch.object(importlib.import_module(module), name,
                                              replacement))
    return stack


def _rearm_regardless(self: SafetyHandling) -> bool:
    i = self.safety.inputs
    if i is None or not i.trip_by_heartbeat:
        return False
    self._out.append(ResetSafetyTrip("mutation"))
    return True


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
    **BLIND_SPOTS,
    **V2G,
    **UPSTREAM,
    **PLANT,
    **AUDIT,
    **SERVICE,
}


def run_one(name: str, tests: list[str]) -> int:
    import pytest

    # The energy-transfer control imported decide_current by name; patch that reference
    # too (after the mutation, so it picks up a mutated function).
    with MUTATIONS[name](), mock.patch.object(transfer_module, "decide_current",
                                              arbiter.decide_current):
        # No pytest-timeout for one mutant run by hand: shrinking a stateful counterexample
        # takes minutes. The full table runs without shrinking, where a test that hangs
        # (one child slept an hour in the run of 462defc) is cut at 20 minutes.
        # -x: the first test that catches the mutant names it; the rest need not run.
        timeout = "1200" if os.environ.get("SAFETY_NO_SHRINK") else "0"
        return pytest.main(["-q", "-x", "-p", "no:cacheprovider", "--no-header",
                            f"--timeout={timeout}", *(tests or SAFETY_TESTS)])


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
              for f in re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, re.MULTILINE)]
    stateful = out.stdout[out.stdout.find("test_safety_invariants_hold"):]
    first_error = next((ln.strip(" |E") for ln in stateful.splitlines()
                        if "AssertionError:" in ln), "")
    # Caught means a test failed; a harness that crashed before any test ran catches nothing,
    # and neither does a test that failed on the mutation's own crash (MutantBroken).
    broken = "MutantBroken" in out.stdout
    caught = out.returncode != 0 and bool(failed) and not broken
    if broken:
        first_error = "the mutant itself broke (MutantBroken): " + first_error
    return name, caught, ", ".join(failed), first_error


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
