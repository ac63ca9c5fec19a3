"""pile.toml: a good file loads, every kind of bad field is named in the error."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.core.events import TemperatureReading
from agent.core.ratings import GunRatings
from agent.core.thermal_guard import CONNECTOR, MODULE, ThermalSupervisor
from agent.runtime.config import ConfigError, load_config, parse_config

GOOD = """
[can]
interface = "socketcan"
channel = "can1"

[modbus]
transport = "rtu"
serial_port = "/dev/ttyUSB0"
baudrate = 19200
parity = "E"
unit_id = 3

[gun]
max_current_a = 200
max_power_w = 120000.0
grid_limit_w = 90000.0

[safety_bus]
enabled = true
serial_port = "/dev/ttyUSB1"

[thermal]
silent_s = 1.5

[thermal.connector]
curve = [[70, 1.0], [80, 0.5], [88, 0]]
trip_c = 100
hysteresis_k = 4.0
"""


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "pile.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.can.channel == "can1" and cfg.can.bitrate == 250_000
    assert cfg.modbus.transport == "rtu" and cfg.modbus.unit_id == 3
    assert cfg.gun.max_current_a == 200.0 and isinstance(cfg.gun.max_current_a, float)
    assert cfg.gun.grid_limit_w == 90_000.0
    assert parse_config({}).gun.grid_limit_w == math.inf  # unset: no separate grid limit
    kinds = dict(cfg.thermal.kinds)
    assert kinds["connector"].curve.points == ((70.0, 1.0), (80.0, 0.5), (88.0, 0.0))
    assert kinds["connector"].trip_c == 100.0 and kinds["connector"].hysteresis_k == 4.0
    assert kinds["connector"].rate_limit_k_per_s == CONNECTOR.rate_limit_k_per_s  # default kept
    assert kinds["module"] == MODULE and cfg.thermal.silent_s == 1.5


def test_a_configured_curve_is_the_one_the_thermal_guard_derates_by(tmp_path: Path) -> None:
    path = tmp_path / "pile.toml"
    path.write_text(GOOD)
    sup = ThermalSupervisor(load_config(path).thermal)
    for t in (0.0, 0.1):
        for pin in ("connector_dc_plus", "connector_dc_minus"):
            sup.update(TemperatureReading(t, pin, 84.0), 100.0)
    # 84 °C: 80 -> 0.5 and 88 -> 0 gives 0.25 (the built-in curve would give 0.6)
    assert sup.evaluate(0.1, 100.0).limit_fraction == pytest.approx(0.25)


@pytest.mark.parametrize(("doc", "field"), [
    ({"gun": {"max_current_a": -5.0}}, "gun.max_current_a"),
    # GB/T 27930 carries at most 400 A: every CML of such a gun would fail to encode.
    ({"gun": {"max_current_a": 500.0}}, "gun.max_current_a 500.0 A is above the 400 A"),
    ({"gun": {"min_current_a": 260.0}}, "gun.min_current_a 260.0 A is above max_current_a"),
    ({"gun": {"min_current_a": -1.0}}, "gun.min_current_a"),
    ({"gun": {"max_currnet_a": 5.0}}, "gun.max_currnet_a"),
    ({"gun": {"max_voltage_v": "750"}}, "gun.max_voltage_v"),
    ({"gun": {"max_voltage_v": float("nan")}}, "gun.max_voltage_v"),
    ({"gun": {"ramp_up_a_per_s": 5.0}}, "gun.ramp_up_a_per_s"),
    ({"gun": {"grid_limit_w": 0.0}}, "gun.grid_limit_w"),
    ({"gun": {"grid_limit_w": float("inf")}}, "gun.grid_limit_w"),
    ({"gun": {"max_discharge_current_a": 300.0, "max_discharge_power_w": 1e5}},
     "gun.max_discharge_current_a"),
    ({"gun": {"max_discharge_current_a": 100.0}}, "both 0 \\(no V2G\\)"),
    ({"gun": {"max_discharge_current_a": 100.0, "max_discharge_power_w": 2e5}},
     "gun.max_discharge_power_w"),
    ({"gun": {"min_input_voltage_v": 100.0}}, "gun.min_input_voltage_v"),
    ({"gun": {"export_limit_w": 0.0}}, "gun.export_limit_w"),
    ({"modbus": {"transport": "udp"}}, "modbus.transport"),
    ({"modbus": {"transport": "rtu"}}, "modbus.serial_port"),
    ({"modbus": {"unit_id": 0}}, "modbus.unit_id"),
    ({"modbus": {"port": 70000}}, "modbus.port"),
    ({"can": {"bitrate": True}}, "can.bitrate"),
    ({"can": {"port": 70000}}, "can.port"),
    ({"can": {"port": -1}}, "can.port"),
    ({"can": {"port": 43114}}, "can.port"),  # socketcan has no port
    ({"cann": {}}, "[cann]"),
    ({"thermal": {"connector": {"curve": [[80, 0.5], [90, 1.0]]}}}, "thermal.connector.curve"),
    ({"thermal": {"connector": {"curve": [[80, 1.0]]}}}, "thermal.connector.curve"),
    ({"thermal": {"cable": {"curve": "80:1,90:0"}}}, "thermal.cable.curve"),
    ({"thermal": {"cable": {"curve": [[80, 1.0], [90, 1.5]]}}}, "thermal.cable.curve"),
    ({"thermal": {"module": {"hysteresis_k": 0.0}}}, "thermal.module.hysteresis_k"),
    ({"thermal": {"module": {"trip_c": float("nan")}}}, "thermal.module.trip_c"),
    ({"thermal": {"module": {"trip_c": 40.0}}}, "thermal.module.trip_c"),
    ({"thermal": {"module": {"trip": 80.0}}}, "thermal.module.trip"),
    ({"thermal": {"ambient": {}}}, "thermal.ambient"),
    ({"thermal": {"silent_s": 60.0}}, "thermal.silent_s"),
    ({"thermal": {"short_ohm": 5000.0}}, "thermal.short_ohm"),
    ({"thermal": {"silent_s": 1.5}}, "[thermal]"),  # no safety bus: never applied
    ({"v2g": {"bds_pgn": 0x1000}}, "already used by BCL"),
    ({"v2g": {"cdp_pgn": 0x3200}}, "already used by"),
    ({"v2g": {"bdp_pgn": 0x32FF}}, "PGN for BDP"),
    ({"v2g": {"bdp_pgn": 0xEB00}}, "J1939 TP"),
    ({"v2g": {"bds": 0x3300}}, "v2g.bds"),
    ({"health": {"soc_floor_pct": 120.0}}, "health.soc_floor_pct"),
    ({"health": {"soc_floor_pct": 50.0, "soc_ceiling_pct": 40.0}}, "health.soc_floor_pct"),
    ({"health": {"max_discharge_c_rate": 0.0}}, "health.max_discharge_c_rate"),
    ({"health": {"max_discharge_kwh_per_day": float("nan")}},
     "health.max_discharge_kwh_per_day"),
    ({"health": {"owner": {"LSVAU2180N2183294": {"min_cell_v": -1.0}}}},
     "health.owner.LSVAU2180N2183294.min_cell_v"),
    ({"health": {"owner": {"LSVAU2180N2183294": {"soc_flor_pct": 30.0}}}},
     "health.owner.LSVAU2180N2183294.soc_flor_pct"),
    ({"health": {"owner": 5}}, "health.owner"),
    ({"meter": {"enabled": True}}, "meter.serial_port"),
    ({"meter": {"transport": "udp"}}, "meter.transport"),
    ({"meter": {"unit_id": 300}}, "meter: unit_id"),
    ({"meter": {"poll_period_s": 0.0}}, "meter: unit_id"),
    ({"ledger": {"path": ""}}, "ledger.path"),
    ({"tariff": {"charge": [[0, 8, 0.4], [9, 24, 0.8]]}}, "tariff.charge"),
    ({"tariff": {"discharge": [[0, 24, -1.0]]}}, "tariff.discharge"),
    ({"tariff": {"discharge": "4 CNY"}}, "tariff.discharge"),
    ({"tariff": {"utc_offset_h": 30}}, "tariff.utc_offset_h"),
    ({"tariff": {"peak": []}}, "tariff.peak"),
    ({"upstream": {"fallback_charge_a": -1.0}}, "upstream.fallback_charge_a"),
    ({"upstream": {"fallback_charge_a": 10_000.0}}, "upstream.fallback_charge_a"),
    ({"upstream": {"min_interval_s": 0.0}}, "upstream: min_interval_s"),
    ({"upstream": {"frequency_droop": True, "droop_pct": 50.0}}, "upstream.droop"),
    ({"upstream": {"frequency_droop": True, "dead_band_hz": -0.1}}, "upstream.dead_band_hz"),
    ({"upstream": {"droop": True}}, "upstream.droop"),
    ({"ems": {"host": "localhost"}}, "ems.host"),
    ({"ems": {"allowed_writers": ["10.0.0.300"]}}, "ems.allowed_writers"),
    ({"ems": {"allowed_writers": "127.0.0.1"}}, "ems.allowed_writers"),
    ({"ems": {"port": 0}}, "ems: port"),
    ({"ems": {"default_validity_s": 3600.0}}, "ems: default_validity_s"),
    ({"ems": {"allow_discharge": "yes"}}, "ems.allow_discharge"),
    ({"ocpp": {"enabled": True, "url": "http://x", "station_id": "A"}}, "ocpp.url"),
    ({"ocpp": {"enabled": True, "url": "ws://x", "station_id": ""}}, "ocpp.station_id"),
    ({"ocpp": {"enabled": True, "url": "ws://x", "station_id": "A"}}, "ocpp.password"),
    ({"ocpp": {"enabled": True, "url": "ws://x", "station_id": "A", "password": "short"}},
     "ocpp.password"),
    ({"ocpp": {"enabled": True, "url": "wss://x", "station_id": "A", "cert_file": "c.pem"}},
     "ocpp.cert_file"),
    ({"ocpp": {"enabled": True, "url": "ws://x", "station_id": "A",
               "password": "0123456789abcdef", "ca_file": "ca.pem"}}, "ocpp.url"),
    ({"ocpp": {"enabled": True, "url": "wss://x", "station_id": "A/B"}}, "ocpp.station_id"),
])
def test_bad_fields_are_named(doc: dict[str, dict[str, object]], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc)


def test_v2g_health_meter_ledger_and_tariff_sections_load() -> None:
    cfg = parse_config(tomllib.loads("""
[gun]
max_discharge_current_a = 200.0
max_discharge_power_w = 120000.0
[v2g]
cdp_pgn = 0x3400
bdp_pgn = 0x3500
bds_pgn = 0x3600
[health]
soc_floor_pct = 30.0
max_discharge_kwh_per_day = 40.0
[health.owner.LSVAU2180N2183294]
soc_floor_pct = 50.0
max_discharge_c_rate = 0.5
[meter]
enabled = true
serial_port = "/dev/ttyS2"
unit_id = 3
[ledger]
path = "/var/lib/pile-agent/ledger.sqlite"
[tariff]
charge = [[0, 8, 0.4], [8, 24, 1.0]]
discharge = [[0, 18, 0.0], [18, 22, 4.0], [22, 24, 0.0]]
"""))
    assert cfg.extension_pgns() == {"CDP": 0x3400, "BDP": 0x3500, "BDS": 0x3600}
    assert cfg.health.soc_floor_pct == 30.0 and cfg.health.max_discharge_kwh_per_day == 40.0
    owner = cfg.owners["LSVAU2180N2183294"]
    assert owner.soc_floor_pct == 50.0 and owner.max_discharge_c_rate == 0.5
    assert cfg.meter.enabled and cfg.meter.serial_port == "/dev/ttyS2" and cfg.meter.unit_id == 3
    assert cfg.ledger.path.endswith("ledger.sqlite")
    assert cfg.tariff.price(cfg.tariff.discharge, 1.7e9 + 0) in (0.0, 4.0)
    # Validating the PGNs leaves the codec on its defaults: the agent moves them at start-up.
    from agent.core.messages import CDP
    from drivers.gbt27930.codec import PGN
    assert PGN[CDP] == 0x3100


def test_the_upstream_section_sets_the_policy_and_the_droop() -> None:
    cfg = parse_config({"gun": {"max_discharge_current_a": 200.0,
                                "max_discharge_power_w": 120_000.0},
                        "upstream": {"fallback_charge_a": 32.0, "frequency_droop": True,
                                     "droop_pct": 4.0}})
    policy = cfg.upstream.policy(cfg.gun)
    assert policy.fallback_charge_a == 32.0
    assert policy.droop is not None and policy.droop.rated_w == 120_000.0
    assert policy.droop.droop == 0.04
    assert parse_config({}).upstream.policy(cfg.gun).droop is None


def test_the_ems_section_opens_the_sunspec_server_to_named_writers() -> None:
    cfg = parse_config({"ems": {"enabled": True, "host": "0.0.0.0", "port": 1502,
                                "allowed_writers": ["10.1.2.3", "::1"],
                                "allow_discharge": True}})
    assert cfg.ems.allowed_writers == ("10.1.2.3", "::1") and cfg.ems.allow_discharge
    assert parse_config({}).ems.host == "127.0.0.1"
    assert not parse_config({}).ems.allow_discharge


def test_unreadable_and_invalid_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gun\nmax_current_a = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_cli_run_with_a_bad_config_exits_2_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pile.toml"
    path.write_text("[gun]\nmax_current_a = -1\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "gun.max_current_a" in capsys.readouterr().err


def test_the_readme_example_loads() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```toml", 1)[1].split("```", 1)[0]
    cfg = parse_config(tomllib.loads(block))
    assert cfg.safety_bus.enabled and dict(cfg.thermal.kinds)["connector"].trip_c == 105.0


def test_the_readme_s_operator_tables_load() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b.split("```", 1)[0] for b in readme.split("```toml")[1:] if "[status]" in b)
    cfg = parse_config({**tomllib.loads(block), "ledger": {"path": "x.sqlite"}})
    assert cfg.status.port == 8750 and cfg.metrics.enabled and cfg.metrics.port == 9464
    assert cfg.traces.enabled and cfg.traces.formats == ("candump", "blf")


@pytest.mark.parametrize(("doc", "field"), [
    ({"status": {"host": "localhost"}}, "status.host"),
    ({"metrics": {"port": 70000}}, "metrics.port"),
    ({"metrics": {"enabled": "yes"}}, "metrics.enabled"),
    ({"traces": {"formats": ["pcap"]}}, "traces.formats"),
    ({"traces": {"keep_mb": 0}}, "traces"),
])
def test_bad_operator_tables_are_named(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({**doc, "ledger": {"path": "x.sqlite"}})


@pytest.mark.parametrize(("current_a", "ok"), [(399.9, True), (400.0, True), (400.1, False)])
def test_the_gbt_current_ceiling_has_both_sides(current_a: float, ok: bool) -> None:
    problems = GunRatings(max_current_a=current_a, max_power_w=400_000.0).problems()
    assert (problems == []) is ok, problems


@pytest.mark.parametrize("args", [
    ["--speed", "-1"], ["--speed", "nan"], ["--speed", "inf"], ["--max-sim-s", "nan"],
    ["--max-sim-s", "0"], ["--start-soc", "nan"], ["--start-soc", "90", "--target-soc", "80"],
    ["--can-log", "/nonexistent-dir/session.log"], ["--can-log", "/"],
    ["--replay-bms", "/nonexistent-dir/trace.log"],
    ["--site-time", "25:00", "--scenario", "vpp-peak-shaving-18h"],
    ["--site-time", "18h", "--scenario", "vpp-peak-shaving-18h"],
    ["--site-until", "18:00", "--site-time", "21:00", "--scenario", "vpp-peak-shaving-18h"],
    ["--site-time", "18:00"],
])
def test_cli_sim_rejects_bad_flags_naming_the_value(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pile-agent sim: ") and args[0] in err and "Traceback" not in err


def test_cli_run_rejects_an_unwritable_can_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pile.toml"
    path.write_text("[gun]\nmax_current_a = 200\n")
    assert main(["run", "--config", str(path), "--can-log", "/nonexistent-dir/x.log"]) == 2
    assert "--can-log /nonexistent-dir/x.log" in capsys.readouterr().err


def test_cli_bench_rejects_bad_trials(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--trials", "0"]) == 2
    assert "--trials 0" in capsys.readouterr().err


def _two_guns(**pile: object) -> dict[str, object]:
    return {"gun": [{"can": {"channel": "can0"}}, {"can": {"channel": "can1"},
                                                   "priority": 2, "max_current_a": 200.0}],
            "pile": {"grid_limit_w": 180_000.0, "matrix": {"port": 1502},
                     "group": [{"id": "G1", "current_a": 125.0, "power_w": 60_000.0,
                                "reach": [1, 2]}], **pile}}


def test_thermal_curves_need_each_gun_s_io_board_not_the_top_level_one() -> None:
    on = {"enabled": True, "transport": "tcp"}
    c = parse_config({"gun": [{"safety_bus": on}, {"safety_bus": on, "can": {"channel": "x"}}],
                      "thermal": {}})
    assert all(g.safety_bus.enabled for g in c.guns)


def test_guns_and_the_pile_pool_parse_with_defaults_from_the_top_level() -> None:
    c = parse_config({**_two_guns(), "modbus": {"host": "10.0.0.5"}})
    assert [g.ratings.charger_number for g in c.guns] == [1, 2]
    assert [g.can.channel for g in c.guns] == ["can0", "can1"]
    assert c.guns[1].ratings.max_current_a == 200.0 and c.guns[1].priority == 2
    assert all(g.modbus.host == "10.0.0.5" for g in c.guns)  # from [modbus]
    assert c.pile is not None and c.pile.grid_limit_w == 180_000.0
    assert c.pile.groups[0].reach == frozenset({1, 2}) and c.pile.matrix.port == 1502
    # One [gun]: one gun, no pool.
    single = parse_config({})
    assert len(single.guns) == 1 and single.pile is None


@pytest.mark.parametrize(("doc", "message"), [
    ({"gun": [{"can": {"channel": "can0"}}, {"can": {"channel": "can0"}}]},
     "its own CAN channel"),
    ({"gun": [{"charger_number": 1}, {"charger_number": 1, "can": {"channel": "x"}}]},
     "charger_number"),
    ({"gun": [{"priority": -1}]}, "gun[0].priority"),
    ({"gun": [{"modbus": {"unit_id": 0}}]}, "gun[0].modbus.unit_id"),
    ({"gun": [{"max_current_a": 500.0}]}, "gun[0]."),
    (_two_guns(group=[{"id": "G1", "current_a": 125.0, "power_w": 60_000.0,
                       "reach": [1, 3]}]), "reach"),
    (_two_guns(group=[{"id": "G1", "current_a": 125.0, "power_w": 60_000.0,
                       "reach": [1]}]), "no group reaches gun(s) [2]"),
    (_two_guns(group=[{"id": "G1", "current_a": 125.0, "power_w": 60_000.0,
                       "reach": [True, 2]}]), "reach"),
    (_two_guns(group=[{"id": "G1", "current_a": -1.0, "power_w": 60_000.0,
                       "reach": [1, 2]}]), "current_a"),
    (_two_guns(group=[{"id": "G", "current_a": 1.0, "power_w": 1.0, "reach": [1, 2]},
                      {"id": "G", "current_a": 1.0, "power_w": 1.0, "reach": [1, 2]}]),
     "each group its own"),
    (_two_guns(grid_limit_w=0), "pile.grid_limit_w"),
    (_two_guns(nonsense=1), "pile.nonsense"),
    ({**_two_guns(), "gun": [{"in_service": "no"}, {"can": {"channel": "x"}}]},
     "gun[0].in_service"),
    ({"gun": [{"safety_bus": {"enabled": True, "transport": "tcp"}}, {"can": {"channel": "x"}}],
      "thermal": {}}, "for every gun"),
    ({"thermal": {}}, "[thermal]: needs [safety_bus] enabled"),
])
def test_bad_guns_or_pool_are_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(doc)
