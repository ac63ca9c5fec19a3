"""`pile-agent bench` runs end to end and prints every figure it promises, as JSON. The
figures themselves are measurements (docs/PERFORMANCE.md), not asserted here."""

from __future__ import annotations

import json

import pytest

from agent.cli import main


def test_bench_prints_each_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--trials", "2", "--scale", "2", "--station-guns", "2",
                 "--day-guns", "4", "--day-hours", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("a_bcl_drop_to_module_write", "b_estop_to_module_write",
                "c_over_temperature_to_module_write", "d_upstream_limit_to_module_write"):
        assert out[key]["n"] >= 1 and out[key]["p50_ms"] > 0, (key, out)
        assert out[key]["p99_ms"] >= out[key]["p50_ms"]
    # The E-stop latches: its second press is a session of its own.
    assert out["b_estop_to_module_write"]["n"] == 2, out["b_estop_to_module_write"]
    assert out["ccs_period_ms"]["n"] > 10 and 40.0 <= out["ccs_period_ms"]["p50"] <= 70.0
    assert out["cpu_pct_of_one_core_charging"] > 0 and out["rss_max_mb"] > 0
    sim = out["simulation_one_gun"]
    assert sim["event_driven"]["speed_up"] > 1.0
    assert sim["event_driven"]["can_frames_per_sim_s"] > 20.0  # BCL and CCS alone: 40
    assert sim["event_driven"]["modbus_requests_per_sim_s"] > 5.0
    assert sim["first_300_s_lock_step"]["agent_steps_per_sim_s"] >= 95.0  # every 10 ms
    assert sim["first_300_s_event_driven"]["agent_steps_per_sim_s"] < 80.0
    assert sim["transport_costs"]["modbus_request_us"] > 0
    assert sim["transport_floor"]["speed_up_ceiling"] > 0
    [point] = out["scale"]
    assert point["guns"] == 2 and point["all_charging"], point
    assert point["agent_cpu_pct_of_one_core"] > 0 and point["agent_finished"], point
    # The agent in a process of its own, CAN over udp_loopback; neither process holds an
    # internet socket that could reach beyond loopback (the rule of our machines).
    assert point["agent"].startswith("own process"), point
    assert point["rss_max_mb_agent_process"] > 0, point
    assert point["sockets_off_loopback"] == {"simulators": [], "agent": []}, point
    assert 40.0 <= point["ccs_period_ms"]["p50"] <= 70.0, point
    station = out["station"]
    assert station["verdict"] == "PASS" and station["gun_hours_per_wall_s"] > 0, station
    day = out["station_day"]
    assert day["guns"] == 4 and day["gun_hours"] == 12.0 and day["wall_s"] > 0, day
    assert day["above_grid_steps"] == 0 and day["switched_under_load"] == [], day


def test_bench_flags_are_checked() -> None:
    assert main(["bench", "--scale", "0"]) == 2
    assert main(["bench", "--scale", "1,x"]) == 2
    assert main(["bench", "--station-guns", "40"]) == 2
    assert main(["bench", "--day-guns", "0"]) == 2
    assert main(["bench", "--day-hours", "inf"]) == 2
