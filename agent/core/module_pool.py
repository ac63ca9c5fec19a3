"""The pile's pool of power-module groups, shared by its guns through a contactor matrix.
Sans-I/O: needs, measurements and contactor feedback in; matrix commands and each gun's
module capability out. It decides which group feeds which gun; each gun's arbiter still
decides its current, with the capability as its module-capability candidate.

The rules:
- A group feeds one gun at a time, only a gun it can reach (the matrix's wiring).
- Planning: every vehicle first gets one group it can reach (in priority order: its own if
  it has one, else an unclaimed one, which may be another gun's second group); then every
  gun keeps its own groups up to its demand, and then, in priority order, takes unclaimed
  ones up to its demand;
  a group nobody needs stays on an active gun (no switching for nothing). A plan is made
  again only when a need moves by the smallest group's power, a gun starts or stops, a
  group faults or returns, or the contactor feedback disagrees with the assignment.
- Moving a group (break before make): the gun it leaves is held at 0 A capability until its
  current, read on a sample taken after the hold began, is <= 5 A (GB/T 18487.1-2023
  E.5.1: no switching under load) and the
  matrix contactor, commanded open, reads open; only then is the contactor to the new gun
  commanded closed, and the group counts for the new gun only when that feedback reads
  closed. The feedback is the truth throughout. A group whose contactor does not follow
  within `FEEDBACK_S` is faulted until service clears it (a welded or dead contactor).
- A faulted group counts for no gun from the moment it is reported, and leaves its gun as
  a move does: the gun is held at 0 A until it reads <= 5 A, then the contactor opens,
  then the others serve on. A tripped group carries nothing, but one whose fault clears
  (a module that restarts on its own) before its contactor has opened would carry its
  share through it (Annex E); the pause is the gun's ramp-down and the contactor's
  operating time. A group whose matrix contactor did not follow is only ever commanded
  open (it is welded or dead; nothing waits on it).
- The pile's rating and the site's grid limit are shared among the charging guns (in
  priority order up to their demand, guns of one priority max-min fair, then what is left
  evenly); the export limit among the discharging ones. No credit is taken for one gun's
  discharge to let another charge more: if the discharge stops, the import must still be
  within the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.core import timing as T

# No switching under load: the <= 5 A point of a direction change (GB/T 18487.1-2023
# Annex E); a matrix contactor's feedback within the K1/K2 budget (invariant I4).
SWITCH_CURRENT_A = T.DIRECTION_CHANGE_CURRENT_A
FEEDBACK_S = T.CONTACTOR_FEEDBACK.seconds


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    current_a: float  # the group's rated output current
    power_w: float
    reach: frozenset[int]  # the guns its matrix contactors can connect it to


@dataclass(frozen=True, slots=True)
class GunNeed:
    gun: int
    power_w: float  # what the gun's vehicle could take (or give) now; 0: idle
    discharging: bool = False
    priority: int = 0  # higher first
    measured_a: float = 0.0  # |output current| as last read
    # When that reading was sampled (None: at this step). A move leaves its gun only on a
    # reading sampled after its hold began: one taken before may show a current that has
    # risen since (an up-ramp passes 5 A between two 100 ms polls).
    measured_at: float | None = None


@dataclass(frozen=True, slots=True)
class MatrixCommand:
    group: str
    gun: int
    closed: bool


@dataclass(frozen=True, slots=True)
class Capability:
    current_a: float
    power_w: float


@dataclass
class _Move:
    group: str
    to: int | None
    since: float
    phase: str  # "hold" (waiting for <= 5 A), "opening", "closing"
    faulted: bool = False  # its group leaves because it was reported faulted


@dataclass
class ModulePool:
    groups: tuple[Group, ...]
    pile_power_w: float = math.inf
    grid_limit_w: float = math.inf
    export_limit_w: float = math.inf
    assigned: dict[str, int | None] = field(default_factory=dict)  # confirmed by feedback
    faulted: dict[str, str] = field(default_factory=dict)  # reported, and the matrix's
    # Groups whose matrix contactor did not follow: out until service clears them (as a
    # welded K1/K2 latches, invariant I12).
    matrix_faults: dict[str, str] = field(default_factory=dict)
    moves: dict[str, _Move] = field(default_factory=dict)
    target: dict[str, int | None] = field(default_factory=dict)  # the latest plan
    log: list[str] = field(default_factory=list)
    _planned_for: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        for g in self.groups:
            self.assigned.setdefault(g.id, None)

    # ---- planning ----------------------------------------------------------------------

    def plan(self, needs: Sequence[GunNeed]) -> dict[str, int | None]:
        """Where each healthy group should be (pure: nothing is switched here)."""
        healthy = sorted((g for g in self.groups if g.id not in self.faulted),
                         key=lambda g: -g.power_w)
        order = sorted((n for n in needs if n.power_w > 0), key=lambda n: -n.priority)
        want = {n.gun: n.power_w for n in order}
        got = dict.fromkeys(want, 0.0)
        target: dict[str, int | None] = {}

        def take(gun: int, g: Group) -> None:
            target[g.id] = gun
            got[gun] += g.power_w

        def own(gun: int) -> list[Group]:
            return [g for g in healthy if g.id not in target and self.assigned[g.id] == gun]

        def free(gun: int) -> list[Group]:
            # Unclaimed groups the gun reaches; those idle or on an inactive gun first.
            out = [g for g in healthy if g.id not in target and gun in g.reach]
            return sorted(out, key=lambda g: self.assigned[g.id] in want)

        # Every connected vehicle gets one group first (in priority order): its own if it
        # has one, else an unclaimed one (which may be another gun's second group).
        for n in order:
            mine = own(n.gun) or free(n.gun)[:1]
            if mine:
                take(n.gun, mine[0])
        # Then each keeps its own groups up to its demand (no switching for nothing: a gun
        # never pauses to hand a group to another that merely comes first), and only then
        # each takes unclaimed ones, in priority order.
        for pick in (own, free):
            for n in order:
                for g in pick(n.gun):
                    if got[n.gun] < want[n.gun] and g.id not in target:
                        take(n.gun, g)
        # Leftovers stay on an active gun, else join the first active gun they reach (its
        # vehicle may ask for more), else nowhere.
        for g in healthy:
            if g.id in target:
                continue
            gun = self.assigned[g.id]
            reach = [n.gun for n in order if n.gun in g.reach]
            target[g.id] = gun if gun in want else (reach[0] if reach else None)
        return target

    def _replan_key(self, needs: Sequence[GunNeed]) -> tuple[object, ...]:
        # A plan is redone when a gun starts or stops, a fault changes, or a need moves by
        # more than the smallest group's power (a step the plan could act on).
        step = min((g.power_w for g in self.groups), default=1.0)
        return (tuple(sorted(self.faulted)),
                tuple(sorted((n.gun, n.discharging, n.priority, math.floor(n.power_w / step))
                             for n in needs if n.power_w > 0)))

    # ---- one step ----------------------------------------------------------------------

    def step(self, now: float, needs: Sequence[GunNeed],
             feedback: Mapping[str, int | None],
             faults: Mapping[str, str], live: bool = True,
             ) -> tuple[list[MatrixCommand], dict[int, Capability]]:
        """feedback: the gun each group's matrix contactor reads closed to (None: open).
        faults: group -> reason, as reported now (a group not in it is healthy).
        live: False while the matrix board does not answer (its last read stands in for
        feedback): no move goes on, and a switch's FEEDBACK_S counts only while it answers
        (silence is not a contactor that failed to move)."""
        for gid, why in faults.items():
            if gid not in self.faulted:
                self.log.append(f"{now:.2f} s group {gid} faulted: {why}; it leaves its gun "
                                "at <= 5 A, the others serve on")
        for gid in [g for g in self.faulted if g not in faults and g not in self.matrix_faults]:
            self.log.append(f"{now:.2f} s group {gid} back in the pool")
        known = {g.id for g in self.groups}
        self.faulted = {**{g: w for g, w in faults.items() if g in known},
                        **self.matrix_faults}
        commands: list[MatrixCommand] = []
        for gid in self.faulted:
            commands += self._leave_faulted(gid, now, feedback.get(gid))
        for gid in [gid for gid, m in self.moves.items()
                    if m.faulted and m.phase == "hold" and gid not in self.faulted]:
            del self.moves[gid]  # its fault cleared before anything was switched: it stays
        for g in self.groups:
            # The feedback is the truth: a group that reads open no longer feeds its gun
            # (a faulted group's contactor was opened), one that reads closed feeds that
            # gun (a close that landed after its move was called off); then plan again.
            if g.id not in self.moves and feedback.get(g.id) != self.assigned[g.id]:
                self.assigned[g.id] = feedback.get(g.id)
                self._planned_for = ()
        key = self._replan_key(needs)
        if key != self._planned_for:
            self._planned_for = key
            self.target = self.plan(needs)
        for gid, gun in self.target.items():
            # A move under way finishes first; then the group goes where the latest plan
            # wants it (the plan may have changed meanwhile).
            if gid not in self.moves and gid not in self.faulted \
                    and gun != self.assigned.get(gid):
                self.moves[gid] = _Move(gid, gun, now, "hold")
        by_gun = {n.gun: n for n in needs}
        for gid in list(self.moves):
            if live:
                commands += self._advance(self.moves[gid], now, by_gun, feedback)
            elif self.moves[gid].phase != "hold":
                self.moves[gid].since = now
        for gid in self.matrix_faults:
            # A contactor that did not follow is commanded open, whatever it carries: it
            # is welded (nothing opens it) or dead (it is open).
            gun = feedback.get(gid)
            if gun is not None:
                commands.append(MatrixCommand(gid, gun, closed=False))
        return commands, self.capabilities(needs, feedback)

    def _leave_faulted(self, gid: str, now: float, gun: int | None) -> list[MatrixCommand]:
        """A faulted group goes nowhere: one closed to a gun leaves it as a move does (the
        gun held until <= 5 A, then the contactor opened); a close under way is called off.
        Planned again once its fault clears."""
        m = self.moves.get(gid)
        cancel = [MatrixCommand(gid, m.to, closed=False)] if m is not None \
            and m.phase == "closing" and m.to is not None and m.to != gun else []
        if gid in self.matrix_faults or gun is None:
            self.moves.pop(gid, None)
        elif m is None or m.phase == "closing":
            self.moves[gid] = _Move(gid, None, now, "hold", faulted=True)
        else:
            m.to, m.faulted = None, True  # a hold or an opening goes on, to nowhere
        return cancel

    def _advance(self, m: _Move, now: float, needs: Mapping[int, GunNeed],
                 feedback: Mapping[str, int | None]) -> list[MatrixCommand]:
        old = feedback.get(m.group)  # the gun it is closed to now, whatever was planned
        if old is not None and old == m.to:
            self.assigned[m.group] = m.to
            self.log.append(f"{now:.2f} s group {m.group} -> gun {m.to}")
            del self.moves[m.group]
            return []
        if m.phase == "hold":
            if old is not None and not _unloaded(needs.get(old), m.since):
                return []  # the gun's capability is held at 0 A meanwhile (capabilities)
            m.phase, m.since = "opening", now
        if m.phase == "opening":
            if old is not None:
                if now - m.since > FEEDBACK_S:
                    self._fail(m, now, f"matrix contactor to gun {old} did not open")
                    return []
                return [MatrixCommand(m.group, old, closed=False)]
            self.assigned[m.group] = None
            if m.to is None or m.group in self.faulted:
                del self.moves[m.group]
                return []
            m.phase, m.since = "closing", now
        if m.phase == "closing":
            assert m.to is not None
            if now - m.since > FEEDBACK_S:
                self._fail(m, now, f"matrix contactor to gun {m.to} did not close")
                return [MatrixCommand(m.group, m.to, closed=False)]
            return [MatrixCommand(m.group, m.to, closed=True)]
        return []

    def _fail(self, m: _Move, now: float, why: str) -> None:
        self.faulted[m.group] = self.matrix_faults[m.group] = why
        self.log.append(f"{now:.2f} s group {m.group} faulted: {why}")
        del self.moves[m.group]

    # ---- what each gun may use ---------------------------------------------------------

    def capabilities(self, needs: Sequence[GunNeed],
                     feedback: Mapping[str, int | None]) -> dict[int, Capability]:
        """Each gun's module capability: its healthy groups whose contactor reads closed to
        it, 0 A while a group is to leave it (until that contactor reads open), and its
        share of the pile rating and the grid (or export) limit."""
        guns = {n.gun for n in needs} | {g for g in self.assigned.values() if g is not None}
        held = {feedback.get(m.group) for m in self.moves.values()
                if m.phase in ("hold", "opening")}
        amps = dict.fromkeys(guns, 0.0)
        watts = dict.fromkeys(guns, 0.0)
        for g in self.groups:
            gun = self.assigned.get(g.id)
            if gun is not None and g.id not in self.faulted and feedback.get(g.id) == gun:
                amps[gun] += g.current_a
                watts[gun] += g.power_w
        shares = self._shares(needs, watts)
        return {gun: Capability(0.0 if gun in held else amps[gun],
                                0.0 if gun in held else min(watts[gun], shares.get(gun, 0.0)))
                for gun in guns}

    def _shares(self, needs: Sequence[GunNeed], watts: Mapping[int, float]) -> dict[int, float]:
        out: dict[int, float] = {}
        for discharging, budget in ((False, min(self.pile_power_w, self.grid_limit_w)),
                                    (True, min(self.pile_power_w, self.export_limit_w))):
            side = sorted((n for n in needs if n.discharging is discharging),
                          key=lambda n: -n.priority)
            left = budget
            for level in sorted({n.priority for n in side}, reverse=True):
                # Priority order; within a level, max-min fair: each up to what it needs
                # and can use, the smallest first, the rest splitting what is left evenly.
                members = sorted((n for n in side if n.priority == level),
                                 key=lambda n: min(n.power_w, watts.get(n.gun, 0.0)))
                for k, n in enumerate(members):
                    give = min(n.power_w, watts.get(n.gun, 0.0), left / (len(members) - k))
                    out[n.gun] = give
                    left -= give
            if left > 0 and side:  # the rest evenly, so a rising demand finds headroom
                extra = left / len(side)
                for n in side:
                    out[n.gun] += extra
        return out


def _unloaded(need: GunNeed | None, since: float) -> bool:
    """The gun carries <= 5 A on a reading sampled after `since` (its hold's start, when its
    capability went to 0 A). A gun the pool is not told of carries nothing of ours."""
    if need is None:
        return True
    sampled_after = need.measured_at is None or need.measured_at > since
    return sampled_after and need.measured_a <= SWITCH_CURRENT_A
