"""A process that writes metering intervals to a ledger as fast as it can and says, after each
commit, which one it committed: tests/test_ledger.py kills it with SIGKILL at random moments,
and inside a commit (at an fsync, through strace's fault injection). An optional third
argument stops it after that many commits."""

from __future__ import annotations

import sys

from agent.core.commands import LedgerInterval
from agent.ledger.store import Ledger


def main(path: str, first_seq: int, commits: int | None = None) -> None:
    ledger = Ledger(path)
    # As a restarted agent would: carry on after what is already on disk (the last commit
    # may have landed after the parent last heard of one).
    stored = [int(r["seq"]) for r in ledger.intervals("kill-test")]  # type: ignore[call-overload]
    seq = max([first_seq, *(n + 1 for n in stored)])
    while commits is None or commits > 0:
        # A meter that moves 0.25 kWh to the vehicle and 0.125 kWh back per interval: the
        # counters at the end of interval n are n/4 and n/8 kWh.
        ledger.write_interval("kill-test", 1, "LKILLTEST00000001", LedgerInterval(
            seq=seq, start_wall=seq * 900.0, end_wall=(seq + 1) * 900.0,
            direction="charge" if seq % 2 else "discharge", to_vehicle_kwh=0.25,
            from_vehicle_kwh=0.125, meter_to_vehicle_kwh=(seq + 1) * 0.25,
            meter_from_vehicle_kwh=(seq + 1) * 0.125, closed_by="quarter hour"))
        print(seq, flush=True)
        seq += 1
        commits = None if commits is None else commits - 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
