"""The status page in a real browser (Debian's chromium, headless; `.ci/deps` installs it):
loaded from the service running a 2-gun loopback pile, it shows a tile per gun with its
state, and each tile's power line is drawn (the page marks the points it plotted on the
canvas). A screenshot is kept as a test artifact (PILE_AGENT_ARTIFACTS, else the test's
temporary directory)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from agent.core.states import State
from hil.ev_bms import VehicleConfig
from tests.headless_browser import chromium as _chromium
from tests.served_service import served, until

CAR = VehicleConfig(start_soc_pct=40.0, target_soc_pct=90.0)


def test_the_status_page_draws_a_tile_and_a_power_line_per_gun(tmp_path: Path) -> None:
    artifacts = Path(os.environ.get("PILE_AGENT_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)

    async def main() -> tuple[str, Path]:
        async with served(tmp_path, [CAR, CAR], {"status": {"port": 0}}) as (service, _pile):
            await until(lambda: all(g.session.state is State.CHARGING for g in service.guns),
                        40.0, "both guns charging")
            await asyncio.sleep(3.5)  # a few of the status task's 1 s samples
            address = service.endpoints[0].address
            assert address is not None
            url = f"http://127.0.0.1:{address[1]}/"
            # The page fetches /status when it loads and every second after.
            dom = await asyncio.to_thread(_chromium, "--virtual-time-budget=4000",
                                          "--dump-dom", url)
            shot = artifacts / "status-page.png"
            await asyncio.to_thread(_chromium, "--virtual-time-budget=4000",
                                    "--window-size=1280,720", f"--screenshot={shot}", url)
            assert dom.returncode == 0, dom.stderr[-2000:]
            return dom.stdout, shot

    dom, shot = asyncio.run(main())
    tiles = re.findall(r'<section class="gun" id="gun-(\d)" data-gun="\d">(.*?)</section>',
                       dom, re.S)
    assert [n for n, _t in tiles] == ["1", "2"], dom[:3000]
    for number, tile in tiles:
        assert "Occupied · charging" in tile, (number, tile)
        points = re.search(r'<canvas[^>]*data-points="(\d+)"', tile)
        assert points is not None and int(points.group(1)) >= 2, (number, tile)
        assert "kW (charge)" in tile
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
