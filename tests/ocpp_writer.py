"""The agent's OCPP side in a process of its own, for tests/test_ocpp_kill.py: it records
transaction events (through the durable outbox) as fast as it can, says after each which
seqNo it committed, and sends whatever is waiting whenever the central system is there.
The test kills it with SIGKILL at random moments and starts it again."""

from __future__ import annotations

import asyncio
import sys
import time

from agent.ledger.outbox import Outbox
from drivers.ocpp.client import OcppClient, OcppSettings, SampledValue


async def main(path: str, url: str, mode: str) -> None:
    outbox = Outbox(path)
    client = OcppClient(OcppSettings(url=url, station_id="CP-KILL", reconnect_s=0.05),
                        outbox, time.time)
    link = asyncio.create_task(client.run())
    if mode == "write":
        i = 0
        while True:
            value = SampledValue("Energy.Active.Import.Register", float(i), "Wh",
                                 "Sample.Periodic")
            seq = client.transaction_event("Updated", "MeterValuePeriodic", "tx-kill",
                                           meter=[value])
            print(seq, flush=True)
            i += 1
            await asyncio.sleep(0.002)
    while outbox.counts()[1] or not client.online:  # replay: until all is answered
        await asyncio.sleep(0.02)
    print("flushed", flush=True)
    link.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
