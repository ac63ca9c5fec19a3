"""The durable energy ledger: SQLite (stdlib), WAL, synchronous=FULL.

Every closed metering interval and every finished session is written here, each in its own
transaction, before it is reported anywhere: a record the agent has reported is on disk, and
kill -9 or a power cut at any moment leaves every committed record whole and no record half
written (SQLite's atomic commit; WAL with synchronous=FULL syncs the log on each commit).

A running session keeps one checkpoint row (replaced at least every 10 s or 0.1 kWh): a
session killed at any moment is closed at the next start from it (`recover`), its open
interval up to the checkpoint's reading, so at most that much metered energy is unrecorded.
The file the ledger opened must stay the file it writes: one removed or replaced while open
is an error at the next write, not records written into an unlinked inode.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from agent.core.commands import LedgerCheckpoint, LedgerInterval, SessionReport

SCHEMA = """
CREATE TABLE IF NOT EXISTS intervals (
    session_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    gun INTEGER NOT NULL,
    vin TEXT NOT NULL,
    start_wall REAL NOT NULL,
    end_wall REAL NOT NULL,
    direction TEXT NOT NULL,
    to_vehicle_kwh REAL NOT NULL,
    from_vehicle_kwh REAL NOT NULL,
    meter_to_vehicle_kwh REAL NOT NULL,
    meter_from_vehicle_kwh REAL NOT NULL,
    closed_by TEXT NOT NULL,
    PRIMARY KEY (session_key, seq)
);
CREATE TABLE IF NOT EXISTS sessions (
    session_key TEXT PRIMARY KEY,
    gun INTEGER NOT NULL,
    vin TEXT NOT NULL,
    start_wall REAL,
    end_wall REAL,
    start_soc_pct REAL,
    end_soc_pct REAL,
    to_vehicle_kwh REAL,
    from_vehicle_kwh REAL,
    peak_power_w REAL NOT NULL,
    outcome TEXT NOT NULL,
    stop_reason TEXT NOT NULL,
    metering_note TEXT NOT NULL,
    health_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    session_key TEXT PRIMARY KEY,
    gun INTEGER NOT NULL,
    checkpoint_json TEXT NOT NULL
);
"""
# What `records` needs to find to take a file for a ledger (a subset: older ledgers have
# no checkpoints table).
LEDGER_COLUMNS = {
    "intervals": {"session_key", "seq", "gun", "vin", "start_wall", "end_wall", "direction",
                  "to_vehicle_kwh", "from_vehicle_kwh", "closed_by"},
    "sessions": {"session_key", "gun", "vin", "start_wall", "end_wall", "start_soc_pct",
                 "end_soc_pct", "to_vehicle_kwh", "from_vehicle_kwh", "outcome",
                 "stop_reason"},
}


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written (disk full, read-only, corrupt file)."""


def _check_side_files(path: str) -> None:
    """WAL's -wal and -shm files must be writable if they exist: SQLite maps -shm, and one
    it cannot write (read-only, immutable) fails writes or, once mapped, faults the process."""
    for side in (path + "-wal", path + "-shm"):
        try:
            with open(side, "r+b"):
                pass
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LedgerError(f"ledger {path}: {side} cannot be written "
                              f"({exc.strerror}); fix its permissions or attributes") from exc


def open_durable(path: str | Path, schema: str) -> sqlite3.Connection:
    """SQLite in WAL with synchronous=FULL: a commit is on disk before it returns, and
    survives kill -9 and power loss. LedgerError names the file if it cannot be used."""
    if str(path) != ":memory:":
        _check_side_files(str(path))
    try:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: {exc}") from exc
    return db


def _identity(path: str) -> tuple[int, int] | None:
    if path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return st.st_dev, st.st_ino


def open_for_reading(path: str | Path) -> sqlite3.Connection:
    """A ledger opened read-only (nothing created, nothing written), after checking that it
    is one. LedgerError naming the file otherwise."""
    if not Path(path).is_file():
        raise LedgerError(f"no ledger at {path}")
    try:
        db = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
        tables = {name: {row[1] for row in db.execute(f"PRAGMA table_info({name})")}
                  for name in LEDGER_COLUMNS}
    except sqlite3.Error as exc:
        raise LedgerError(f"{path} is not a pile-agent ledger: {exc}") from exc
    missing = {name: sorted(cols - tables[name]) for name, cols in LEDGER_COLUMNS.items()
               if not cols <= tables[name]}
    if missing:
        db.close()
        what = "; ".join(f"table {t}" + (f" lacks {', '.join(c)}" if tables[t] else " missing")
                         for t, c in missing.items())
        raise LedgerError(f"{path} is not a pile-agent ledger ({what})")
    return db


class Ledger:
    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """read_only: an existing ledger, checked to be one, nothing created or written
        (pile-agent records)."""
        self.path = str(path)
        self._db = open_for_reading(path) if read_only else open_durable(self.path, SCHEMA)
        self._identity = None if read_only else _identity(self.path)

    def close(self) -> None:
        self._db.close()

    def check_identity(self) -> None:
        if self._identity is not None and _identity(self.path) != self._identity:
            raise LedgerError(f"ledger {self.path}: the file was removed or replaced while "
                              "open; records written now would not be in it")

    def _commit(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        self.check_identity()
        try:
            with self._db:  # one transaction: the rows are whole on disk or absent
                self._db.execute("BEGIN IMMEDIATE")
                for sql, row in statements:
                    self._db.execute(sql, row)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from exc

    # Plain INSERT: a settled record is never silently replaced; a second write of the same
    # key is an error the runtime turns into a fault.
    def write_interval(self, session_key: str, gun: int, vin: str, i: LedgerInterval) -> None:
        self._commit(_interval_row(session_key, gun, vin, i))

    def write_session(self, session_key: str, gun: int, r: SessionReport) -> None:
        """The session's record; its checkpoint goes in the same transaction."""
        end_wall = None if r.start_wall is None else r.start_wall + r.duration_s
        self._commit(
            ("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
             (session_key, gun, r.vin, r.start_wall, end_wall, r.start_soc_pct, r.end_soc_pct,
              r.metered_to_vehicle_kwh, r.metered_from_vehicle_kwh, r.peak_power_w, r.outcome,
              r.reason, r.metering_note, json.dumps(r.health, sort_keys=True))),
            ("DELETE FROM checkpoints WHERE session_key = ?", (session_key,)))

    def write_checkpoint(self, session_key: str, gun: int, c: LedgerCheckpoint) -> None:
        """The session's latest checkpoint (the only row the ledger ever replaces)."""
        self._commit(("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)",
                      (session_key, gun, json.dumps(_fields(c), sort_keys=True))))

    def recover(self, reason: str) -> list[str]:
        """Close every session a killed agent left open, from its checkpoint: the open
        interval up to the checkpoint's reading (closed_by `reason`), then the session
        (outcome "interrupted"). One transaction per session; returns a line for each."""
        closed = []
        for key, gun, text in self._db.execute(
                "SELECT session_key, gun, checkpoint_json FROM checkpoints ORDER BY session_key"
                ).fetchall():
            c = LedgerCheckpoint(**json.loads(text))
            statements = []
            if c.interval_open:
                # Unless an interval closed after the checkpoint: then it already holds
                # more than the checkpoint knew.
                sql, row = _interval_row(key, gun, c.vin, LedgerInterval(
                    seq=c.seq, start_wall=c.interval_start_wall, end_wall=c.wall,
                    direction=c.interval_direction,
                    to_vehicle_kwh=round(max(c.last_to_kwh - c.interval_start_to_kwh, 0.0), 6),
                    from_vehicle_kwh=round(max(c.last_from_kwh - c.interval_start_from_kwh,
                                               0.0), 6),
                    meter_to_vehicle_kwh=c.last_to_kwh, meter_from_vehicle_kwh=c.last_from_kwh,
                    closed_by=reason))
                statements.append((
                    sql.replace("VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                "SELECT ?,?,?,?,?,?,?,?,?,?,?,? WHERE NOT EXISTS (SELECT 1 "
                                "FROM intervals WHERE session_key = ? AND seq >= ?)"),
                    (*row, key, c.seq)))
            note = (f"{reason}: closed from the checkpoint of wall {c.wall:.0f}; metered energy "
                    "after it is not recorded")
            statements += [
                ("INSERT INTO sessions SELECT ?,?,?,?,?,?,?,"
                 "MAX(?, (SELECT COALESCE(SUM(to_vehicle_kwh), 0) FROM intervals "
                 "WHERE session_key = ?)), "
                 "MAX(?, (SELECT COALESCE(SUM(from_vehicle_kwh), 0) FROM intervals "
                 "WHERE session_key = ?)), ?,?,?,?,?",
                 (key, gun, c.vin, c.start_wall, c.wall, c.start_soc_pct, c.soc_pct,
                  c.to_vehicle_kwh, key, c.from_vehicle_kwh, key, c.peak_power_w,
                  "interrupted", reason, note, "{}")),
                ("DELETE FROM checkpoints WHERE session_key = ?", (key,))]
            self._commit(*statements)
            closed.append(f"{key}: {c.to_vehicle_kwh:.3f} kWh charged, {c.from_vehicle_kwh:.3f} "
                          f"kWh discharged up to its checkpoint ({reason})")
        return closed

    def open_checkpoints(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])

    def sessions(self) -> list[dict[str, object]]:
        return self._rows("SELECT * FROM sessions ORDER BY start_wall, session_key")

    def intervals(self, session_key: str | None = None) -> list[dict[str, object]]:
        if session_key is None:
            return self._rows("SELECT * FROM intervals ORDER BY start_wall, session_key, seq")
        return self._rows("SELECT * FROM intervals WHERE session_key = ? ORDER BY seq",
                          (session_key,))

    def discharged_today(self, vin: str, day_start_wall: float) -> tuple[float, float]:
        """(discharged kWh, throughput kWh) of this vehicle's intervals since day_start_wall
        (intervals carry the VIN: a session cut short by a power loss still counts)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(from_vehicle_kwh), 0), "
            "COALESCE(SUM(to_vehicle_kwh + from_vehicle_kwh), 0) FROM intervals "
            "WHERE vin = ? AND end_wall >= ?", (vin, day_start_wall)).fetchone()
        return float(row[0]), float(row[1])

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[dict[str, object]]:
        """Rows as dicts. LedgerError for a file whose tables cannot be read as a ledger's."""
        try:
            with closing(self._db.execute(sql, args)) as cur:
                names = [c[0] for c in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from exc


def _interval_row(session_key: str, gun: int, vin: str,
                  i: LedgerInterval) -> tuple[str, tuple[object, ...]]:
    return ("INSERT INTO intervals VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (session_key, i.seq, gun, vin, i.start_wall, i.end_wall, i.direction,
             i.to_vehicle_kwh, i.from_vehicle_kwh, i.meter_to_vehicle_kwh,
             i.meter_from_vehicle_kwh, i.closed_by))


def _fields(c: LedgerCheckpoint) -> dict[str, object]:
    return {name: getattr(c, name) for name in c.__dataclass_fields__}
