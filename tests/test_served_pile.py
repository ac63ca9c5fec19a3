"""`pile-agent hil serve`: the example config is ready to use, the served pile refuses any
address off loopback and any transport it cannot serve, and its flags are checked."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.runtime.config import parse_config
from hil.served_pile import EXAMPLE_CONFIG, CarPlan, draw_car, loopback_problems


def test_the_example_config_is_a_two_gun_pile_on_loopback() -> None:
    config = parse_config(tomllib.loads(EXAMPLE_CONFIG))
    assert len(config.guns) == 2 and config.ems.enabled
    assert all(g.can.interface == "udp_loopback" and g.safety_bus.enabled for g in config.guns)
    assert loopback_problems(config) == []


def test_example_config_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hil", "serve", "--example-config"]) == 0
    assert capsys.readouterr().out == EXAMPLE_CONFIG


def test_addresses_off_loopback_and_other_transports_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_CONFIG.replace('host = "127.0.0.1", port = 15022', 'host = "192.0.2.7", '
                                  'port = 15022')
    text = text.replace('channel = "pile-example-gun2"', 'channel = "vcan9"').replace(
        'interface = "udp_loopback", channel = "vcan9"', 'interface = "socketcan", '
        'channel = "vcan9"')
    problems = loopback_problems(parse_config(tomllib.loads(text)))
    assert any("gun 1.safety_bus.host 192.0.2.7: not a loopback address" in p
               for p in problems), problems
    assert any("gun 2: can.interface must be \"udp_loopback\"" in p for p in problems)
    path = tmp_path / "pile.toml"
    path.write_text(text)
    assert main(["hil", "serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["--v2g-share", "2"], ["--fault-share", "nan"],
                                   ["--cars", "-1"], ["--stay-s", "1"]])
def test_bad_flags_are_one_line_and_exit_2(flags: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pile.toml"
    path.write_text(EXAMPLE_CONFIG)
    assert main(["hil", "serve", "--config", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flags[0] in err, err


def test_cars_ask_for_what_the_plan_says() -> None:
    rng = random.Random(4)
    plan = CarPlan(v2g_share=0.5, kwh=(0.2, 0.6))
    cars = [draw_car(rng, plan, 1, n) for n in range(200)]
    assert 60 < sum(c.v2g for c in cars) < 140
    for car in cars:
        nominal = car.battery.capacity_ah * car.battery.cells_in_series * 3.65 / 1000.0
        kwh = (car.target_soc_pct - car.start_soc_pct) / 100.0 * nominal
        assert 0.2 - 1e-9 <= kwh <= 0.6 + 1e-9 and car.start_soc_pct >= 40.0
    assert len({c.vin for c in cars}) == len(cars)
