"""The durable outbox of OCPP transaction events, in the ledger's SQLite file.

Every TransactionEvent is written here (with its seqNo, numbered here in the same
transaction) before it is sent, and marked sent only when the central system has answered
it. After a reconnect, or a restart after kill -9 or power loss, whatever is unmarked is
sent again in its original order. So none is lost; the one in flight when the agent died
may arrive twice, with the same transactionId and seqNo, which is how OCPP 2.1 lets the
central system recognise it (E.FR / seqNo).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.ledger.store import open_durable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ocpp_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    seq_no INTEGER NOT NULL,
    payload TEXT NOT NULL,
    created_wall REAL NOT NULL,
    sent_wall REAL,
    UNIQUE (transaction_id, seq_no)
);
"""


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self._db = open_durable(path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def enqueue(self, transaction_id: str, payload: dict[str, Any], wall: float) -> int:
        """Store a TransactionEvent payload (snake_case, without seq_no); returns its seqNo,
        the next of its transaction, numbered in the same commit."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT COALESCE(MAX(seq_no) + 1, 0) FROM ocpp_outbox "
                             "WHERE transaction_id = ?", (transaction_id,)).fetchone()
            seq_no = int(row[0])
            body = {**payload, "seq_no": seq_no}
            db.execute("INSERT INTO ocpp_outbox (action, transaction_id, seq_no, payload, "
                       "created_wall) VALUES ('TransactionEvent', ?, ?, ?, ?)",
                       (transaction_id, seq_no, json.dumps(body, sort_keys=True), wall))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq_no

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self._db.execute("SELECT id, payload FROM ocpp_outbox WHERE sent_wall IS NULL "
                                "ORDER BY id").fetchall()
        return [(int(i), json.loads(p)) for i, p in rows]

    def mark_sent(self, row_id: int, wall: float) -> None:
        self._db.execute("UPDATE ocpp_outbox SET sent_wall = ? WHERE id = ?", (wall, row_id))

    def unended(self) -> list[tuple[str, int]]:
        """Transactions with a Started event and no Ended one (the agent died in them):
        (transactionId, EVSE id), oldest first."""
        rows = self._db.execute(
            "SELECT transaction_id, json_extract(payload, '$.evse.id') FROM ocpp_outbox o "
            "WHERE json_extract(payload, '$.event_type') = 'Started' AND NOT EXISTS ("
            "  SELECT 1 FROM ocpp_outbox e WHERE e.transaction_id = o.transaction_id"
            "  AND json_extract(e.payload, '$.event_type') = 'Ended') ORDER BY id").fetchall()
        return [(str(t), int(e or 1)) for t, e in rows]

    def counts(self) -> tuple[int, int]:
        """(sent, waiting)."""
        sent, waiting = self._db.execute(
            "SELECT COUNT(sent_wall), COUNT(*) - COUNT(sent_wall) FROM ocpp_outbox").fetchone()
        return int(sent), int(waiting)
