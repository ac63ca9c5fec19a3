"""The simulated pile's pool of module groups: two groups per gun, each wired to its own
gun and the next one (a ring; with two guns every group reaches both). A group is 125 A /
60 kW unless a pile scenario file says otherwise ([pile] group_a, group_w)."""

from __future__ import annotations

from agent.core.module_pool import Group

GROUP_A, GROUP_W = 125.0, 60_000.0


def ring_groups(guns: int, group_a: float = GROUP_A, group_w: float = GROUP_W) -> list[Group]:
    out = []
    for k in range(2 * guns):
        home = k // 2 + 1
        out.append(Group(f"G{k + 1}", group_a, group_w, frozenset({home, home % guns + 1})))
    return out
