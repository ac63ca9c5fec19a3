"""The agent against recorded real cars: a BMS that replays a candump trace, over the real
CAN (python-can virtual bus) and Modbus TCP transports of `pile-agent sim`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.cli import main
from drivers.gbt27930.candump import read_candump
from hil.replay_bms import load_recording
from hil.sim import SimOptions, SimResult, run_sim

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gbt27930"
SESSION_A, SESSION_B = TRACES / "session-a.candump.log", TRACES / "session-b.candump.log"


def _replay(trace: Path, can_log: Path | None = None) -> SimResult:
    return asyncio.run(run_sim(SimOptions(replay_bms=str(trace), live=False, max_sim_s=600.0,
                                          can_log=str(can_log) if can_log else None)))


def test_session_b_charges_through_its_stop_on_exactly_what_the_car_sent(
        tmp_path: Path) -> None:
    log = tmp_path / "replay-b.log"
    result = _replay(SESSION_B, log)
    assert result.furthest_state == "finished" and result.outcome == "finished"
    states = [s for _t, s in result.states]
    assert states[:6] == ["handshake", "insulation_check", "identification",
                          "parameter_exchange", "precharge", "charging"]
    replay = result.replay
    assert replay is not None
    recorded = load_recording(SESSION_B)
    # Every recorded demand was replayed, byte for byte, in order, and the agent heard it.
    assert replay["replayed"]["BCL"] == len(recorded.payloads["BCL"]) == 1461
    heard = load_recording(log)  # the agent's own CAN log, read as a recording
    for name in ("BCL", "BRM", "BCP", "BSM"):
        n = len(recorded.payloads[name])
        assert heard.payloads[name][:n] == recorded.payloads[name][: len(heard.payloads[name])]
        assert heard.payloads[name], name
    assert "BCL" not in replay["synthesized"] and "BRM" not in replay["synthesized"]
    # The car asked 200 A (BCL) within its 200 A BCP limit; the agent delivered it.
    assert 199.0 <= result.max_current_a <= 200.0
    assert result.energy_kwh > 1.0
    assert result.vehicle_data == {}  # the recorded car sent nothing odd


def test_session_a_reaches_energy_transfer_with_what_its_trace_holds() -> None:
    result = _replay(SESSION_A)
    assert "charging" in [s for _t, s in result.states]
    assert result.outcome == "finished"
    replay = result.replay
    assert replay is not None
    assert replay["replayed"] == {"BHM": replay["replayed"]["BHM"]}
    # Its charger never answered the car's BRM and BCP transfers, so the trace has only
    # their announced sizes; the simulated car fills them in, and the report says so.
    assert replay["announced_never_sent"] == {"BCP": 13, "BRM": 49}
    assert {"BRM", "BCP", "BCL"} <= set(replay["synthesized"])
    assert "BMV" not in replay["synthesized"]  # optional: never invented


def test_a_recorded_car_with_a_non_ascii_manufacturer_still_charges(tmp_path: Path) -> None:
    # session-b with its BRM's manufacturer (BRM bytes 9-12: TP.DT packet 2, bytes 2-5)
    # replaced by 01 00 00 00, as a real car in the field sends.
    lines, in_brm = [], False
    for line in SESSION_B.read_text().splitlines():
        if "1CEC56F4#10310007" in line:  # RTS: 49 bytes, 7 packets (BRM)
            in_brm = True
        elif in_brm and " 1CEB56F4#02" in line:
            ident, data = line.rsplit("#", 1)
            raw = bytearray.fromhex(data)
            raw[2:6] = b"\x01\x00\x00\x00"
            line, in_brm = f"{ident}#{raw.hex().upper()}", False
        lines.append(line)
    trace = tmp_path / "odd-brm.log"
    trace.write_text("\n".join(lines) + "\n")
    assert load_recording(trace).payloads["BRM"][0][8:12] == b"\x01\x00\x00\x00"
    result = _replay(trace)
    assert result.outcome == "finished" and result.energy_kwh > 1.0
    assert result.vehicle_data.get("oddity BRM.manufacturer", 0) >= 1
    assert any(kind == "vehicle_oddity" and "BRM.manufacturer" in detail
               and "01000000" in detail for _t, kind, detail in result.notices)


def test_the_recording_loader_reads_what_the_car_sent() -> None:
    rec = load_recording(SESSION_B)
    assert rec.frames == sum(1 for _ in read_candump(SESSION_B))
    assert rec.payloads["BRM"][0][8:12] == b"CATL"
    assert [p[0] for p in rec.payloads["BRO"]].count(0xAA) >= 1
    assert rec.charger_stop is not None and rec.periods_s == {}  # flat timestamps


@pytest.mark.parametrize("trace", [SESSION_A, SESSION_B], ids=["session-a", "session-b"])
def test_cli_replay_reports_how_far_it_got(trace: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--quiet", "--replay-bms", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "reached finished" in out and "replayed as recorded: " in out


def test_recorded_periods_are_kept_when_the_trace_has_them(tmp_path: Path) -> None:
    # A trace whose logger stamps advance: BCL every 100 ms (twice the standard's 50 ms).
    lines = [f"({1000 + i * 0.1:.6f}) can0 181056F4#D80FD00702" for i in range(20)]
    lines += [f"({1000 + i * 0.25:.6f}) can0 182756F4#D80F" for i in range(8)]
    trace = tmp_path / "timed.log"
    trace.write_text("\n".join(lines) + "\n")
    rec = load_recording(trace)
    assert rec.periods_s["BCL"] == pytest.approx(0.1)
    assert rec.periods_s["BHM"] == pytest.approx(0.25)
    from hil.replay_bms import ReplayBms

    bms = ReplayBms(rec)
    assert bms.period_s("BCL") == pytest.approx(0.1) and bms.period_s("BCS") == 0.25


def test_a_trace_with_no_vehicle_in_it_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "charger-only.log"
    trace.write_text("(1.0) can0 1826F456#010100\nnot a candump line\n"
                     "(1.1) can0 101AF456#FF\n")  # CHM, garbage, a garbled (short) CST
    assert main(["sim", "--quiet", "--replay-bms", str(trace)]) == 2
    err = capsys.readouterr().err
    assert "no GB/T 27930 frames from a BMS" in err and "Traceback" not in err
