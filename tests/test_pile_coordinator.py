"""The pile coordinator (agent/core/pile.py): what each session asks of the pool, what the
matrix board's reads mean, and the matrix commands it gives; the module-pool candidate in
the arbiter; the matrix board's driver against its simulator over Modbus TCP."""

from __future__ import annotations

import asyncio
import math

from agent.core.arbiter import CurrentLimits, Limit, decide_current, wanted_current
from agent.core.commands import Notice, SetMatrix
from agent.core.direction import Direction
from agent.core.events import (
    MatrixLost,
    MatrixStatus,
    ModuleStatus,
    PoolCapability,
    Tick,
    VehicleConnected,
)
from agent.core.module_pool import Group, ModulePool
from agent.core.pile import (
    MATRIX_STATUS_STALE,
    ONE_GROUP_W,
    PileCoordinator,
    gives_less,
    need_of,
)
from agent.core.ratings import GunRatings
from agent.core.session import GunSession
from agent.core.states import State
from drivers.module_matrix.codec import decode_status, encode_command, load_matrix_map
from drivers.module_matrix.link import MatrixBusOwner
from drivers.power_module.link import TcpTarget
from hil.matrix_sim import GroupSim, MatrixSim

GROUPS = (Group("A", 100.0, 50_000.0, frozenset({1, 2})),
          Group("B", 100.0, 50_000.0, frozenset({1, 2})))


def _limits(**kw: float) -> CurrentLimits:
    base = {"state_a": math.inf, "ev_demand_a": 200.0, "ev_max_a": 250.0,
            "charger_max_a": 250.0, "module_capability_a": 300.0, "power_limit_w": 1e6,
            "voltage_v": 400.0}
    base.update(kw)
    return CurrentLimits(**base)  # type: ignore[arg-type]


def test_the_pool_candidate_binds_in_amps_and_in_watts() -> None:
    d = decide_current(_limits(pool_a=80.0), 80.0, 0.01, 100.0)
    assert (d.current_a, d.bound_by) == (80.0, Limit.MODULE_POOL)
    d = decide_current(_limits(pool_power_w=20_000.0), 50.0, 0.01, 100.0)
    assert (d.current_a, d.bound_by) == (50.0, Limit.MODULE_POOL)  # 20 kW / 400 V
    assert decide_current(_limits(pool_a=math.nan), 0.0, 0.01, 100.0).bound_by \
        is Limit.INVALID_INPUT


def test_what_a_gun_wants_leaves_out_the_supply_side() -> None:
    # The pool, the module and a pause decide what can be served, not what is wanted.
    assert wanted_current(_limits(pool_a=0.0, module_capability_a=0.0, state_a=0.0)) == 200.0
    assert wanted_current(_limits(ev_demand_a=30.0)) == 30.0
    assert wanted_current(_limits(ev_max_a=math.nan)) == 0.0


def test_a_pooled_session_delivers_nothing_before_the_pool_speaks_or_once_silent() -> None:
    s = GunSession(GunRatings(), pooled=True)
    assert s._pool(discharging=False) == (0.0, 0.0)
    s.handle(PoolCapability(1.0, 120.0, 60_000.0, discharging=False))
    assert s._pool(discharging=False) == (120.0, 60_000.0)
    # A pool that fell silent gives nothing, as a silent module.
    s.handle(Tick(1.0 + MATRIX_STATUS_STALE.seconds + 0.01))
    assert s._pool(discharging=False) == (0.0, 0.0)
    assert GunSession(GunRatings())._pool(discharging=True) == (math.inf, math.inf)


def test_a_pool_word_gives_power_only_in_the_direction_it_was_planned_for() -> None:
    # The share is of the export budget for a discharging gun and of the grid's for a
    # charging one: a gun whose direction changed after the pool planned must not charge
    # on its discharge share (the pile suite's P4: 1 A x 750 V over a 30 kW grid limit, the
    # tick a gun's new charging phase began).
    s = GunSession(GunRatings(), pooled=True)
    s.handle(PoolCapability(1.0, 120.0, 60_000.0, discharging=True))
    assert s._pool(discharging=True) == (120.0, 60_000.0)
    assert s._pool(discharging=False) == (120.0, 0.0)
    s.handle(PoolCapability(1.05, 120.0, 20_000.0, discharging=False))
    assert s._pool(discharging=False) == (120.0, 20_000.0)
    assert s._pool(discharging=True) == (120.0, 0.0)
    # The runtime hands such a word to the gun at once, as one that gives less.
    more = PoolCapability(1.1, 150.0, 80_000.0, discharging=True)
    assert gives_less(more, PoolCapability(1.0, 120.0, 60_000.0, discharging=False))
    assert not gives_less(more, PoolCapability(1.0, 120.0, 60_000.0, discharging=True))


def test_the_coordinator_words_each_gun_for_the_direction_it_transfers_in() -> None:
    pile, sessions = _coordinator()
    for s in sessions.values():  # both in energy transfer, as the arbiter last left them
        s.state, s.limits = State.CHARGING, _limits()
    sessions[2].data.direction.active = Direction.DISCHARGE
    _, caps = pile.step(0.0, sessions)
    assert (caps[1].discharging, caps[2].discharging) == (False, True)


def test_a_session_needs_nothing_idle_one_group_connected_and_a_stale_current_is_unknown(
) -> None:
    s = GunSession(GunRatings(), pooled=True)
    assert need_of(1, s).power_w == 0.0
    s.handle(ModuleStatus(0.0, 0.0, 3.0, 0.0, 25.0, False, 0))
    s.handle(Tick(0.5))
    assert need_of(1, s).measured_a == 3.0
    s.handle(Tick(0.5 + MATRIX_STATUS_STALE.seconds + 1.0))
    assert need_of(1, s).measured_a == math.inf  # a move waits for a fresh reading


def _coordinator() -> tuple[PileCoordinator, dict[int, GunSession]]:
    sessions = {1: GunSession(GunRatings(), pooled=True),
                2: GunSession(GunRatings(charger_number=2), pooled=True)}
    return PileCoordinator(ModulePool(GROUPS), {}), sessions


def test_an_unread_or_silent_matrix_gives_every_gun_nothing() -> None:
    c, sessions = _coordinator()
    sessions[1].handle(VehicleConnected(0.0))  # gun 1 needs a group
    _, caps = c.step(0.0, sessions)
    assert all(cap.current_a == 0.0 for cap in caps.values())
    c.pool.assigned["A"] = 1
    c.handle(MatrixStatus(0.0, (1, 0), ("", "")))
    _, caps = c.step(0.1, sessions)
    assert caps[1].current_a == 100.0
    _, caps = c.step(0.1 + MATRIX_STATUS_STALE.seconds + 0.01, sessions)
    assert caps[1].current_a == 0.0
    c.handle(MatrixStatus(2.0, (1, 0), ("", "")))
    c.handle(MatrixLost(2.0, "timeout"))
    _, caps = c.step(2.0, sessions)
    assert caps[1].current_a == 0.0


def test_a_board_silent_for_seconds_latches_nothing_and_its_groups_serve_again() -> None:
    # Silence is not a contactor that failed to move: a read that is stale shows where the
    # contactors were, and nothing the pool commands meanwhile can be seen to follow.
    c, sessions = _coordinator()
    sessions[1].handle(VehicleConnected(0.0))
    board = [0, 0]  # contactors that follow their command within a step, while it answers
    t = 0.0
    while t < 4.5:  # inside the handshake's time-out: the vehicle stays connected
        silent = 0.6 <= t < 3.6
        sessions[1].handle(ModuleStatus(t, 400.0, 0.0, 0.0, 25.0, False, 0))
        sessions[1].handle(Tick(t))
        if not silent:
            c.handle(MatrixStatus(t, tuple(board), ("", "")))
        commands, caps = c.step(t, sessions)
        if t == 0.5:
            assert caps[1].current_a == 200.0, c.pool.log  # both groups on gun 1
        for command in commands:
            if isinstance(command, SetMatrix) and not silent:
                board[command.group] = command.closed_guns
        t = round(t + 0.1, 6)
    assert not c.pool.matrix_faults, c.pool.log
    assert caps[1].current_a == 200.0, c.pool.log


def test_an_open_commanded_into_a_board_that_falls_silent_is_not_a_welded_contactor() -> None:
    # The groups leave an idle gun; the board stops answering right after the open is
    # commanded. The driver keeps the write and delivers it when the board answers again
    # (drivers/module_matrix/link.py), and the contactors follow a step later: the switch's
    # 1 s counts from there, not from the command.
    c, sessions = _coordinator()
    c.pool.assigned.update(A=1, B=1)
    c._commanded[:] = [1, 1]
    board, queued = [1, 1], list[SetMatrix]()
    t = 0.0
    while t < 4.0:
        if not 0.05 <= t < 2.5:  # silent from 0.05 s to 2.5 s
            c.handle(MatrixStatus(t, tuple(board), ("", "")))
            for command in queued:  # written now, followed by the next read
                board[command.group] = command.closed_guns
            queued = []
        sessions[1].handle(ModuleStatus(t, 0.0, 0.0, 0.0, 25.0, False, 0))
        sessions[1].handle(Tick(t))
        commands, _caps = c.step(t, sessions)
        queued += [command for command in commands if isinstance(command, SetMatrix)]
        t = round(t + 0.1, 6)
    assert not c.pool.matrix_faults, c.pool.log
    assert board == [0, 0] and c.pool.assigned == {"A": None, "B": None}, c.pool.log


def test_a_group_read_closed_to_two_guns_is_opened_and_never_counted() -> None:
    c, sessions = _coordinator()
    c.pool.assigned["A"] = 1
    c._commanded[0] = 0b01  # A was commanded to gun 1; the board reads it on both
    c.handle(MatrixStatus(0.0, (0b11, 0), ("", "")))
    commands, caps = c.step(0.0, sessions)
    assert SetMatrix(0, 0) in commands
    assert caps[1].current_a == caps[2].current_a == 0.0
    assert any(isinstance(n, Notice) and "more than one gun" in n.detail for n in commands)


def test_a_wrong_group_count_from_the_board_is_not_believed() -> None:
    c, sessions = _coordinator()
    c.handle(MatrixStatus(0.0, (1,), ("",)))
    _, caps = c.step(0.0, sessions)
    assert caps[1].current_a == 0.0


def test_the_driver_switches_and_reads_the_board_over_modbus_tcp() -> None:
    async def run() -> None:
        sim = MatrixSim([GroupSim("A"), GroupSim("B", fault="module_fault")])
        server, port = await sim.start_tcp()
        owner = MatrixBusOwner(TcpTarget("127.0.0.1", port), 2)
        try:
            owner.submit(SetMatrix(0, 0b10))
            [status] = await owner.service(0.0)
            assert isinstance(status, MatrixStatus)
            assert sim.groups[0].commanded == 0b10
            sim.step(0.1)
            [status] = await owner.service(0.1)
            assert isinstance(status, MatrixStatus)
            assert status.feedback == (0b10, 0) and status.faults == ("", "module_fault")
            # The board refuses a command for two guns (exception 03): the link says so.
            owner.submit(SetMatrix(1, 0b11))
            [lost] = await owner.service(0.2)
            assert isinstance(lost, MatrixLost) and sim.refused == 1
        finally:
            await owner.close()
            await server.stop()

    asyncio.run(run())


def test_the_codec_reads_a_short_block_as_faulted_and_refuses_a_group_it_lacks() -> None:
    regmap = load_matrix_map()
    status = decode_status(regmap, 0.0, [0, 1, 0, 250, 0], 2)
    assert status.feedback == (1, 0) and status.faults == ("", "unreadable block")
    try:
        encode_command(regmap, SetMatrix(99, 1))
    except ValueError:
        pass
    else:
        raise AssertionError("a group beyond the board was encoded")


def test_one_group_is_what_a_connected_vehicle_asks_for() -> None:
    assert 0 < ONE_GROUP_W < min(g.power_w for g in GROUPS)
