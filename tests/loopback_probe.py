"""A process that opens the harness's pile of simulators on udp_loopback as the bench does,
talks to each car as a charger would (CHM until the BHM comes back), and prints, as JSON, its
internet sockets that are not on loopback. Run by tests/test_udp_loopback.py as
`python -m tests.loopback_probe`."""

from __future__ import annotations

import asyncio
import json

import can

from hil.ev_bms import VehicleConfig
from hil.loopback_pile import LoopbackPile
from hil.socket_audit import inet_sockets, off_loopback

CHM = can.Message(arbitration_id=0x1826F456, data=b"\x01\x01\x00")  # GB/T 27930: V1.1
BHM_PF = 0x27


def _is_bhm(frame: can.Message) -> bool:
    return (frame.arbitration_id >> 16) & 0xFF == BHM_PF


async def probe() -> dict[str, object]:
    pile = LoopbackPile([VehicleConfig(), VehicleConfig()], can_interface="udp_loopback")
    doc = await pile.start()
    buses = [can.Bus(**gun["can"]) for gun in doc["gun"]]
    heard = [False] * len(buses)
    try:
        for _ in range(40):
            for i, bus in enumerate(buses):
                bus.send(CHM)
                while (frame := bus.recv(0)) is not None:
                    heard[i] = heard[i] or _is_bhm(frame)
            await asyncio.sleep(0.05)
        return {"off": off_loopback(), "n": len(inet_sockets()), "heard": heard}
    finally:
        for bus in buses:
            bus.shutdown()
        await pile.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe())))
