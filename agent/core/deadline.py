"""When a session next needs time to pass: the instant its next tick is due.

Event-driven time (README "How it is built"): the runtime ticks a session at
`next_deadline(session)` and at once after any event, and sleeps in between (real time)
or jumps there (simulation). The contract, E1 in docs/SAFETY.md, checked by both safety
suites: with no event in between, a tick before the deadline gives no command and no
state change. So every instant at which time alone can change something is a candidate
here: a periodic message, a watchdog or budget, the next step of a sequence that is
moving or of the up-ramp, a supervisor's timer, an upstream offer's expiry. An early
candidate only costs a wake; a late one would delay the core, so each is taken from
where the check itself is made.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from agent.core import timing as T
from agent.core.arbiter import Limit
from agent.core.states import State

if TYPE_CHECKING:
    from agent.core.session import GunSession

# While the sequence moves (a tick gave a command or changed the state or phase) or the
# up-ramp climbs, the next tick is due a step later: the 10 ms control step of the
# lock-step design (a ramp of 100 A/s moves the setpoint 1 A a step; a shutdown opens
# K1/K2, then starts the bleeder on the next step).
STEP_S = 0.01
# The session is never left longer than this without a tick, whatever the candidates say
# (a guard against a candidate missed here: the safety suite checks none is).
MAX_QUIET_S = 1.0
# Past the instant a comparison `now - since > budget` turns true (a deadline of exactly
# since + budget would tick once too early and again at once).
SLACK_S = 1e-5


def next_deadline(s: GunSession) -> float:
    """The session-clock time of the next tick the session needs if no event arrives;
    asked after a tick (what is due by now, that tick has done)."""
    now = s.now
    due = [now + MAX_QUIET_S, _periodic(s), *_watchdogs(s), *_steps(s), *_supervisors(s)]
    ramping = s.decision is not None and s.decision.bound_by is Limit.RAMP \
        and s.act.module_enabled
    if ramping or s.busy:
        due.append(now + STEP_S)
    # What is due at or before now was looked at by the tick just made (a budget of a phase
    # already left, say): only later instants count.
    return min(t for t in due if t > now)


def _periodic(s: GunSession) -> float:
    # The messages the tick just sent or held back (the tick built the list: not again here).
    return s._periodic.next_due(s.now)


def _watchdogs(s: GunSession) -> list[float]:
    """When `GunSession._check_watchdogs` would next find something silent."""
    d, out = s.data, []
    if s._at_stake():
        out.append(s._module_heard_since() + T.MODULE_STATUS_STALE.seconds)
        if s.require_safety_io and s.plant.safety_io_at is not None:
            out.append(s.plant.safety_io_at + T.SAFETY_IO_STALE.seconds)
    waiting = s._awaited_message()
    if waiting is not None:
        name, since, _cem = waiting
        out.append(since + T.TIMEOUTS[name].seconds)
    if s.state is State.CHARGING:
        # The awaited message is BCS until BCL is overdue: BCL's own deadline too.
        entered = d.state_entered_at
        out.append(max(d.last_rx.get("BCL", entered), entered) + T.TIMEOUTS["BCL"].seconds)
    return [t + SLACK_S for t in out]


def _steps(s: GunSession) -> list[float]:
    """The budgets and phase timers of steps.py, for the state the session is in."""
    d, entered, phase = s.data, s.data.state_entered_at, s.data.phase_entered_at
    bleed = T.BLEED_DOWN.seconds + T.CONTACTOR_FEEDBACK.seconds
    out: list[float] = []
    match s.state:
        case State.INSULATION_CHECK:
            out += [entered + T.INSULATION_CHECK_BUDGET.seconds, phase + bleed]
        case State.PRECHARGE:
            out.append(entered + T.PRECHARGE_BUDGET.seconds)
        case State.CHARGING:
            if d.paused_since is not None:
                out.append(d.paused_since + T.PAUSE_LIMIT.seconds)
            out.append(d.direction.next_change())
            if d.bds is not None:
                # The vehicle's consent lapses with its status (gbt_profile.view_of).
                out.append(d.last_rx.get("BDS", -math.inf) + T.V2G_STATUS.seconds)
        case State.STOPPING:
            out.append(entered + T.STOP_CURRENT_BUDGET.seconds)
        case State.WELDING_CHECK:
            out += [phase + bleed, entered + T.TIMEOUTS["BSD"].seconds]
        case State.FAULT if d.fault_at is not None:
            out += [d.fault_at + T.STOP_CURRENT_BUDGET.seconds,
                    d.fault_at + T.BLEED_DOWN.seconds * 10]
    return [t + SLACK_S for t in out]


def _supervisors(s: GunSession) -> list[float]:
    """The heartbeat, the thermal supervisor, upstream offers and the pool's word."""
    a, out = s.act, []
    if not a.internal_error:
        out.append(s.now if a.heartbeat_at is None
                   else a.heartbeat_at + T.HEARTBEAT_PERIOD.seconds)
    if s.thermal is not None:
        out.append(s.thermal.next_change(s.now) + SLACK_S)
    out.append(s.upstream.next_change(s.now) + SLACK_S)
    pool = s.plant.pool
    if s.pooled and pool is not None:
        out.append(pool.t + T.MODULE_STATUS_STALE.seconds + SLACK_S)
    return out
