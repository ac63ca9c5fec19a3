"""Every (state, trigger) pair: the machine does exactly what the table says."""

from __future__ import annotations

import itertools

import pytest

from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State, Trigger, mermaid_diagram, next_state


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(State, Trigger)))
def test_every_state_trigger_pair(state: State, trigger: Trigger) -> None:
    session = GunSession(GunRatings())
    session._machine.set_state(state)  # the table test drives the machine directly
    expected = next_state(state, trigger)
    if expected is None:
        with pytest.raises(Exception, match="Can't trigger"):
            session.trigger(trigger.value)
        assert session.state is state
    else:
        assert session.trigger(trigger.value)
        assert session.state is expected


def test_every_state_is_reachable_from_idle() -> None:
    seen = {State.IDLE}
    frontier = [State.IDLE]
    while frontier:
        s = frontier.pop()
        for trig in Trigger:
            n = next_state(s, trig)
            if n is not None and n not in seen:
                seen.add(n)
                frontier.append(n)
    assert seen == set(State)


def test_fault_is_reachable_from_every_state_but_itself() -> None:
    for s in State:
        assert (next_state(s, Trigger.FAULT_DETECTED) is State.FAULT) == (s is not State.FAULT)


def test_diagram_in_docs_is_generated_from_the_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "state-diagram.md").read_text()
    assert mermaid_diagram() in doc
