"""Billing data under faults (issue 24): a session killed at any moment is recoverable from its
durable checkpoint; sessions never share a key; a ledger removed or replaced while open is an
error, not a silent success; `records` reads a ledger without writing and refuses other files;
bad files and flags get one line and exit 2."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.core.commands import LedgerCheckpoint, LedgerInterval
from agent.core.timing import CHECKPOINT_ENERGY_KWH, CHECKPOINT_PERIOD
from agent.ledger.store import Ledger, LedgerError
from hil.sim import SimOptions, run_sim

ROOT = Path(__file__).resolve().parent.parent


def _checkpoint(**kw: object) -> LedgerCheckpoint:
    base: dict[str, object] = dict(
        wall=1000.0, seq=1, interval_open=True, interval_start_wall=900.0,
        interval_direction="charge", interval_start_to_kwh=10.0, interval_start_from_kwh=2.0,
        last_to_kwh=13.5, last_from_kwh=2.0, to_vehicle_kwh=3.5, from_vehicle_kwh=0.0,
        vin="LTEST000000000001", start_wall=880.0, start_soc_pct=20.0, soc_pct=35.0,
        peak_power_w=60_000.0)
    base.update(kw)
    return LedgerCheckpoint(**base)  # type: ignore[arg-type]


def test_recover_closes_a_killed_session_from_its_checkpoint(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.write_checkpoint("gun1-880.000-aa", 1, _checkpoint(wall=950.0, last_to_kwh=12.0,
                                                               to_vehicle_kwh=2.0))
    ledger.write_checkpoint("gun1-880.000-aa", 1, _checkpoint())  # replaces the first
    assert ledger.open_checkpoints() == 1
    [line] = ledger.recover("agent restarted")
    assert "3.500 kWh charged" in line
    [session] = ledger.sessions()
    assert session["outcome"] == "interrupted" and session["stop_reason"] == "agent restarted"
    assert session["to_vehicle_kwh"] == pytest.approx(3.5) and session["end_soc_pct"] == 35.0
    [interval] = ledger.intervals("gun1-880.000-aa")
    assert interval["to_vehicle_kwh"] == pytest.approx(3.5)
    assert interval["closed_by"] == "agent restarted" and interval["end_wall"] == 1000.0
    assert ledger.open_checkpoints() == 0 and ledger.recover("again") == []


def test_recover_keeps_an_interval_closed_after_the_checkpoint(tmp_path: Path) -> None:
    """The checkpoint is older than an interval written after it: that interval stands,
    no second one of its seq, and the session counts the larger energy."""
    ledger = Ledger(tmp_path / "l.sqlite")
    key = "gun1-880.000-bb"
    ledger.write_checkpoint(key, 1, _checkpoint())
    ledger.write_interval(key, 1, "LTEST000000000001", LedgerInterval(
        seq=1, start_wall=900.0, end_wall=1005.0, direction="charge", to_vehicle_kwh=3.9,
        from_vehicle_kwh=0.0, meter_to_vehicle_kwh=13.9, meter_from_vehicle_kwh=2.0,
        closed_by="quarter hour"))
    ledger.recover("agent restarted")
    assert [i["closed_by"] for i in ledger.intervals(key)] == ["quarter hour"]
    assert ledger.sessions()[0]["to_vehicle_kwh"] == pytest.approx(3.9)


def test_a_session_write_clears_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    result = asyncio.run(run_sim(SimOptions(start_soc_pct=60.0, target_soc_pct=64.0,
                                            live=False, ledger=str(path))))
    assert result.outcome == "finished"
    ledger = Ledger(path)
    assert ledger.open_checkpoints() == 0 and len(ledger.sessions()) == 1


def test_checkpoints_come_often_enough_for_any_kill(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two checkpoints of a charging session there is never more than the
    checkpoint period of wall time, or else at most the checkpoint energy (plus one meter
    poll's worth): a kill at any moment loses at most that."""
    written: list[LedgerCheckpoint] = []
    original = Ledger.write_checkpoint

    def spy(self: Ledger, key: str, gun: int, c: LedgerCheckpoint) -> None:
        written.append(c)
        original(self, key, gun, c)

    monkeypatch.setattr(Ledger, "write_checkpoint", spy)
    result = asyncio.run(run_sim(SimOptions(start_soc_pct=20.0, target_soc_pct=40.0,
                                            live=False, ledger=str(tmp_path / "l.sqlite"))))
    assert result.outcome == "finished" and len(written) > 20
    poll_kwh = 150_000 * 1.0 / 3.6e6  # the gun's rating over one 1 s meter poll
    for a, b in itertools.pairwise(written):
        moved = (b.to_vehicle_kwh + b.from_vehicle_kwh) - (a.to_vehicle_kwh + a.from_vehicle_kwh)
        assert b.wall - a.wall <= CHECKPOINT_PERIOD.seconds + 1.0 + 1e-6, (a, b)
        assert moved <= CHECKPOINT_ENERGY_KWH + poll_kwh, (a, b)


Records = dict[str, list[dict[str, object]]]


def _records_json(path: Path, capsys: pytest.CaptureFixture[str]) -> Records:
    assert main(["records", "--ledger", str(path), "--format", "json"]) == 0
    doc: Records = json.loads(capsys.readouterr().out)
    return doc


def test_kill_9_mid_session_then_restart_keeps_the_energy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pile-agent sim killed while charging, before any quarter hour closed; the next run on
    the same ledger closes the killed session from its checkpoint, then records its own
    under a key of its own; records agrees with itself."""
    path = tmp_path / "l.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "sim", "--plain", "--speed", "40",
                             "--ledger", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60.0
    for line in proc.stdout:  # the live lines: kill 3 s of wall (120 s simulated) into charging
        if "-> charging" in line or time.monotonic() > deadline:
            break
    time.sleep(3.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0
    restart = subprocess.run([sys.executable, "-m", "agent.cli", "sim", "--ledger", str(path),
                              "--start-soc", "60", "--target-soc", "62"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert restart.returncode == 0, restart.stderr[-1500:]
    assert "closed a session a killed run left open" in restart.stderr
    doc = _records_json(path, capsys)
    killed, second = sorted(doc["sessions"], key=lambda s: str(s["outcome"]) != "interrupted")
    assert killed["outcome"] == "interrupted" and second["outcome"] == "finished"
    assert killed["session_key"] != second["session_key"]
    # 120 s simulated at up to 150 kW: several kWh, all but the last checkpoint's share
    assert float(killed["to_vehicle_kwh"]) > 1.0  # type: ignore[arg-type]
    for s in doc["sessions"]:
        mine = [i for i in doc["intervals"] if i["session_key"] == s["session_key"]]
        assert sum(float(i["to_vehicle_kwh"]) for i in mine) == pytest.approx(  # type: ignore[arg-type]
            float(s["to_vehicle_kwh"]), abs=1e-6), (s, mine)  # type: ignore[arg-type]


def test_two_runs_on_one_ledger_keep_both_sessions(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    for _ in range(2):  # the sim's clock starts at the same instant each time
        assert main(["sim", "--quiet", "--ledger", str(path), "--start-soc", "60",
                     "--target-soc", "62"]) == 0
    sessions = Ledger(path).sessions()
    assert len(sessions) == 2 and sessions[0]["session_key"] != sessions[1]["session_key"]


def test_a_ledger_removed_while_open_is_an_error_not_a_success(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    for side in ("", "-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    with pytest.raises(LedgerError, match="removed or replaced"):
        ledger.write_checkpoint("k", 1, _checkpoint())
    # Replaced by another file of the same name: the same.
    ledger = Ledger(path)
    path.unlink()
    path.write_bytes(b"")
    with pytest.raises(LedgerError, match="removed or replaced"):
        ledger.write_checkpoint("k", 1, _checkpoint())


def test_a_sim_whose_ledger_is_deleted_stops_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "sim", "--plain", "--speed", "40",
                             "--ledger", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "-> charging" in line:
            break
    for side in ("", "-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-1500:]
    assert "removed or replaced" in out + err
    assert "-> fault" in out  # the session stopped safely: its records had nowhere to go


def test_an_unwritable_side_file_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    Path(f"{path}-shm").unlink(missing_ok=True)
    Path(f"{path}-shm").mkdir()  # cannot be opened for writing, even by root
    with pytest.raises(LedgerError, match="-shm cannot be written"):
        Ledger(path)


def test_records_reads_without_writing_and_refuses_other_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE sessions (a, b)")
    assert main(["records", "--ledger", str(other)]) == 2
    err = capsys.readouterr().err
    assert "not a pile-agent ledger" in err and err.count("\n") == 1
    with sqlite3.connect(other) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
    assert names == ["sessions"]  # nothing created in it
    text = tmp_path / "text.sqlite"
    text.write_text("hello\n")
    assert main(["records", "--ledger", str(text)]) == 2
    assert "not a pile-agent ledger" in capsys.readouterr().err
    assert main(["records", "--ledger", str(tmp_path / "missing.sqlite")]) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_records_tariff_errors_name_the_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "l.sqlite"
    Ledger(ledger).close()
    bad = tmp_path / "bad.toml"
    for content in (b"garbage[[\n", b"\xff\xfe\x00binary", b'[tariff]\ncharge = "x"\n'):
        bad.write_bytes(content)
        assert main(["records", "--ledger", str(ledger), "--tariff", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and err.count("\n") == 1, err


def test_bad_files_and_flag_pairs_get_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "pile.toml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff" * 20)
    assert main(["run", "--config", str(binary)]) == 2
    assert "not a text file" in capsys.readouterr().err
    not_db = tmp_path / "hostname"
    not_db.write_text("pile-42\n")
    assert main(["sim", "--ledger", str(not_db)]) == 2
    assert "--ledger" in capsys.readouterr().err
    assert main(["sim", "--fault", "emergency-stop", "--scenario", "v2g-peak-shaving"]) == 2
    assert "one or the other" in capsys.readouterr().err
