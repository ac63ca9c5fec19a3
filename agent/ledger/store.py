"""The durable energy ledger: SQLite (stdlib), WAL, synchronous=FULL.

Every closed metering interval and every finished session is written here, each in its own
transaction, before it is reported anywhere: a record the agent has reported is on disk, and
kill -9 or a power cut at any moment leaves every committed record whole and no record half
written (SQLite's atomic commit; WAL with synchronous=FULL syncs the log on each commit).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from agent.core.commands import LedgerInterval, SessionReport

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
"""


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written (disk full, read-only, corrupt file)."""


def open_durable(path: str | Path, schema: str) -> sqlite3.Connection:
    """SQLite in WAL with synchronous=FULL: a commit is on disk before it returns, and
    survives kill -9 and power loss. LedgerError names the file if it cannot be used."""
    try:
        db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: {exc}") from exc
    return db


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = open_durable(self.path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _commit(self, sql: str, row: tuple[object, ...]) -> None:
        try:
            with self._db:  # one transaction: the row is whole on disk or absent
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(sql, row)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from exc

    # Plain INSERT: a settled record is never silently replaced; a second write of the same
    # key is an error the runtime turns into a fault.
    def write_interval(self, session_key: str, gun: int, vin: str, i: LedgerInterval) -> None:
        self._commit(
            "INSERT INTO intervals VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (session_key, i.seq, gun, vin, i.start_wall, i.end_wall, i.direction, i.to_vehicle_kwh,
             i.from_vehicle_kwh, i.meter_to_vehicle_kwh, i.meter_from_vehicle_kwh, i.closed_by))

    def write_session(self, session_key: str, gun: int, r: SessionReport) -> None:
        end_wall = None if r.start_wall is None else r.start_wall + r.duration_s
        self._commit(
            "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (session_key, gun, r.vin, r.start_wall, end_wall, r.start_soc_pct, r.end_soc_pct,
             r.metered_to_vehicle_kwh, r.metered_from_vehicle_kwh, r.peak_power_w, r.outcome,
             r.reason, r.metering_note, json.dumps(r.health, sort_keys=True)))

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
        with closing(self._db.execute(sql, args)) as cur:
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
