"""The pile level: the guns' sessions share one pool of module groups (module_pool.py)
switched by a contactor matrix. Sans-I/O: the matrix board's reads in; matrix commands and
each gun's PoolCapability out, which the gun's session hands to its arbiter as the
module-pool candidate (the arbiter stays the only place that decides a current).

What each gun needs is read from its session: a connected vehicle before energy transfer
needs one group (to test insulation and precharge); in energy transfer, what the arbiter
would allow if the pile had power to spare (`wanted_current` x voltage, at most the
gun's rating). A gun that is stopping, finished or faulted needs nothing; its groups
move only once its current reads <= 5 A.

The matrix board is believed only while it answers: with no read for
`MATRIX_STATUS_STALE` (or a lost bus), every group counts as unavailable and every gun's
pool capability is 0 A, so each arbiter ramps down (the modules' own links watch K1/K2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core import timing as T
from agent.core.arbiter import wanted_current
from agent.core.commands import Command, Notice, SetMatrix
from agent.core.direction import Direction
from agent.core.events import MatrixLost, MatrixStatus, PoolCapability
from agent.core.module_pool import Capability, GunNeed, ModulePool
from agent.core.session import GunSession
from agent.core.states import State

# The matrix board is polled like a module (100 ms); its reads age out as a module's do.
MATRIX_STATUS_STALE = T.MODULE_STATUS_STALE
# A connected vehicle before energy transfer: one group (the pool gives every vehicle one
# group first), nothing more until it asks for current.
ONE_GROUP_W = 1.0
_CONNECTED = (State.HANDSHAKE, State.INSULATION_CHECK, State.IDENTIFICATION,
              State.PARAMETER_EXCHANGE, State.PRECHARGE)


def gives_less(cap: PoolCapability, last: PoolCapability | None) -> bool:
    """A pool word that gives a gun less than its last one (or its first word): the runtime
    has the gun decide on it at once; a word that gives as much or more can wait for the
    gun's next step (event-driven time). A word for the other direction gives the last
    one's direction nothing."""
    return last is None or cap.current_a < last.current_a or cap.power_w < last.power_w \
        or cap.discharging is not last.discharging


def need_of(gun: int, session: GunSession, priority: int = 0) -> GunNeed:
    """What the gun's session asks of the pool now."""
    st, at = session.plant.status, session.plant.sampled_at
    # A current not read within the module's stale budget may be anything: the gun's groups
    # stay where they are (a move waits for a reading at <= 5 A sampled after its hold).
    fresh = st is not None and at is not None \
        and session.now - at <= T.MODULE_STATUS_STALE.seconds
    measured = abs(st.output_current_a) if fresh and st is not None else math.inf
    state, r = session.state, session.ratings
    if state in _CONNECTED:
        return GunNeed(gun, ONE_GROUP_W, priority=priority, measured_a=measured,
                       measured_at=at)
    if state is not State.CHARGING or session.limits is None:
        return GunNeed(gun, 0.0, priority=priority, measured_a=measured, measured_at=at)
    limits = session.limits
    discharging = session.data.direction.active is Direction.DISCHARGE
    rating = r.max_discharge_power_w if discharging else r.max_power_w
    watts = min(wanted_current(limits) * abs(limits.voltage_v), rating)
    # A vehicle in energy transfer keeps at least one group, whatever it asks this instant
    # (a pause or a direction change must not send its groups away).
    return GunNeed(gun, max(watts, ONE_GROUP_W), discharging=discharging,
                   priority=priority, measured_a=measured, measured_at=at)


@dataclass
class PileCoordinator:
    pool: ModulePool
    priorities: Mapping[int, int]  # gun -> priority (higher first); absent: 0

    def __post_init__(self) -> None:
        self._index = {g.id: i for i, g in enumerate(self.pool.groups)}
        self._status: MatrixStatus | None = None
        self._lost = ""
        self._commanded = [0] * len(self.pool.groups)
        self._logged = 0

    def handle(self, event: MatrixStatus | MatrixLost) -> None:
        if isinstance(event, MatrixLost):
            self._lost = event.detail
            return
        if len(event.feedback) == len(self._index) == len(event.faults):
            self._status, self._lost = event, ""
        else:
            self._lost = (f"matrix board read has {len(event.feedback)} groups, the pile "
                          f"has {len(self._index)}")

    def step(self, now: float, sessions: Mapping[int, GunSession]
             ) -> tuple[list[Command], dict[int, PoolCapability]]:
        needs = [need_of(gun, s, self.priorities.get(gun, 0)) for gun, s in sessions.items()]
        feedback, faults, opens, live = self._read(now, sessions)
        commands, caps = self.pool.step(now, needs, feedback, faults, live)
        out: list[Command] = []
        masks = list(self._commanded)
        for i in opens:
            masks[i] = 0
        for c in commands:
            bit = 1 << (c.gun - 1)
            i = self._index[c.group]
            masks[i] = masks[i] | bit if c.closed else masks[i] & ~bit
        for i, mask in enumerate(masks):
            if mask & (mask - 1):
                # Never two guns on one group, whatever the plan said: open it instead.
                masks[i] = mask = 0
                out.append(Notice(now, "module_pool", f"{now:.2f} s group "
                                  f"{self.pool.groups[i].id}: two guns asked, opened"))
            if mask != self._commanded[i]:
                out.append(SetMatrix(i, mask))
        self._commanded = masks
        for line in self.pool.log[self._logged:]:
            out.append(Notice(now, "module_pool", line))
        self._logged = len(self.pool.log)
        none = Capability(0.0, 0.0)
        return out, {n.gun: PoolCapability(now, caps.get(n.gun, none).current_a,
                                           caps.get(n.gun, none).power_w, n.discharging)
                     for n in needs}

    def _read(self, now: float, sessions: Mapping[int, GunSession]
              ) -> tuple[dict[str, int | None], dict[str, str], list[int], bool]:
        """The pool's view of the matrix: feedback per group, faults, the groups whose
        contactors must all open (read closed to two guns, or to a gun that is not ours),
        and whether the board answers (else its last read stands in for feedback)."""
        status = self._status
        groups = self.pool.groups
        if status is None or self._lost or now - status.t > MATRIX_STATUS_STALE.seconds:
            why = f"matrix board: {self._lost}" if self._lost else (
                "matrix board not read yet" if status is None
                else f"matrix board silent for {now - status.t:.2f} s")
            return ({g.id: self._gun_of(status.feedback[i], sessions) if status else None
                     for i, g in enumerate(groups)},
                    {g.id: why for g in groups}, [], False)
        feedback: dict[str, int | None] = {}
        faults = {g.id: status.faults[i] for i, g in enumerate(groups) if status.faults[i]}
        opens: list[int] = []
        for i, g in enumerate(groups):
            mask = status.feedback[i]
            gun = self._gun_of(mask, sessions)
            if mask and gun is None:
                # Two guns joined through one group, or a gun the pile does not have: never
                # count it, open everything it touches.
                where = "more than one gun" if mask & (mask - 1) else "a gun it does not run"
                faults[g.id] = f"matrix feedback 0x{mask:x}: closed to {where}"
                opens.append(i)
            feedback[g.id] = gun
        return feedback, faults, opens, True

    @staticmethod
    def _gun_of(mask: int, sessions: Mapping[int, GunSession]) -> int | None:
        if mask == 0 or mask & (mask - 1):
            return None
        gun = mask.bit_length()
        return gun if gun in sessions else None
