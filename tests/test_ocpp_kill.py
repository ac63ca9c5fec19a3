"""Offline replay survives kill -9: transaction events recorded while the central system
is away, or in flight when the agent dies, all reach it after restart, in order, each
seqNo of the transaction present; a repeat is only ever the one message in flight, with
the same transactionId and seqNo, which is what seqNo is for."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

from hil.csms_sim import Csms

WRITER = [sys.executable, "-m", "tests.ocpp_writer"]
ROOT = Path(__file__).parents[1]


async def _writer(path: Path, url: str, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*WRITER, str(path), url, mode, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE)


async def _kill_after(proc: asyncio.subprocess.Process, lines: int) -> list[int]:
    """Read `lines` committed seqNos, then SIGKILL mid-stride."""
    assert proc.stdout is not None
    seen: list[int] = []
    while len(seen) < lines:
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        assert line, "the writer died on its own"
        seen.append(int(line))
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    return seen


def test_kill_9_loses_no_transaction_event_and_replays_in_order(tmp_path: Path) -> None:
    rng = random.Random(20261202)

    async def run() -> None:
        csms = Csms()
        port = await csms.start()
        await csms.stop()  # offline first: the port is known, nothing listens
        url = f"ws://127.0.0.1:{port}/ocpp"
        path = tmp_path / "ledger.sqlite"
        committed: list[int] = []
        for _ in range(3):  # offline: record, die, restart, record more
            committed += await _kill_after(await _writer(path, url, "write"),
                                           rng.randint(5, 60))
        await csms.start(port)
        for _ in range(3):  # online: die while sending
            committed += await _kill_after(await _writer(path, url, "write"),
                                           rng.randint(20, 120))
        replay = await _writer(path, url, "replay")
        assert replay.stdout is not None
        assert (await asyncio.wait_for(replay.stdout.readline(), 60.0)).strip() == b"flushed"
        await replay.wait()
        events = csms.of("TransactionEvent")
        await csms.stop()
        seqs = [e["seq_no"] for e in events]
        # Every committed seqNo arrived; numbering has no gap and never restarted.
        assert set(committed) <= set(seqs)
        assert sorted(set(seqs)) == list(range(max(seqs) + 1))
        assert committed == sorted(committed) and len(set(committed)) == len(committed)
        # In order: the first arrival of each seqNo follows the one before it.
        first = list(dict.fromkeys(seqs))
        assert first == sorted(first)
        # A repeat is identical to the first arrival (the message in flight at a kill).
        by_seq: dict[int, dict[str, object]] = {}
        for e in events:
            assert by_seq.setdefault(e["seq_no"], e) == e
        assert len(seqs) - len(set(seqs)) <= 3  # at most one per kill while online

    asyncio.run(run())
