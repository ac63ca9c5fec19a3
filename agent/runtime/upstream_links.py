"""The pile's upstream for the life of the process, for every gun: the SunSpec server for
the site EMS and the OCPP 2.1 client, started with the service and stopped with it (they
stay up between sessions).

- SunSpec: one DER for the pile (models 1, 701-704, 711, 713, 715) with a 714 port per
  gun. Its WSet / WChaRteMax / WDisChaRteMax are the pile's: shared among the guns
  (agent/core/pile_split.py, through agent/runtime/pile_offers.py).
- OCPP: one connection for the station, an EVSE per gun (evseId = the gun's charger
  number, connector 1), a bridge per gun (its transactions, its status, its own
  profiles); the station's own limits (evseId 0) are shared among the guns like the
  EMS's.

Offers and requests reach each gun as events in its inbox; the gun's arbiter decides
(agent/core/upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.events import Event
from agent.core.pile_split import standing
from agent.core.upstream import pile_ratings, setpoint_ratings
from agent.diagnostics import build_archive
from agent.ledger.outbox import Outbox
from agent.runtime.clock import Clock
from agent.runtime.config import PileConfig
from agent.runtime.ems_view import ems_snapshot
from agent.runtime.event_log import EventLog
from agent.runtime.gun_service import GunService
from agent.runtime.ocpp_bridge import OcppBridge, relay_offers
from agent.runtime.pile_offers import PileOffers
from agent.runtime.pile_status import LinkState
from drivers.ocpp.client import EvseSettings, OcppClient, OcppSettings
from drivers.sunspec.codec import layout, load_map
from drivers.sunspec.ems_controls import EmsControls, EmsSettings
from drivers.sunspec.server import SunSpecServer
from drivers.task_end import within

# The EMS's and the central system's time-based inputs (an EMS heartbeat lost, an OCPP
# request queued) are looked at this often; an EMS write is acted on at once.
UPSTREAM_POLL_S = 0.1


class UpstreamLinks:
    def __init__(self, config: PileConfig, guns: list[GunService], clock: Clock,
                 wall: Callable[[], float], events: EventLog) -> None:
        self.config = config
        self.guns = guns
        self.clock = clock
        self.wall = wall
        self.events = events
        self.ems: SunSpecServer | None = None
        self.client: OcppClient | None = None
        self.bridges: list[OcppBridge] = []
        self.pile_offers = PileOffers(min_interval_s=config.upstream.min_interval_s)
        self._station: dict[str, tuple[float, tuple[object, ...]]] = {}  # OCPP evseId 0
        self._written = asyncio.Event()

    async def start(self, stack: contextlib.ExitStack) -> str:
        """Listen and connect; an error text if the EMS's port cannot be served."""
        config = self.config
        ratings = [g.session.ratings for g in self.guns]
        e = config.ems
        if e.enabled:
            base, models = load_map()
            serial = e.serial_number or config.ocpp.station_id or "pile"
            sessions = [g.session for g in self.guns]
            server = SunSpecServer(
                layout(base, models, n_ports=len(self.guns)),
                EmsControls(EmsSettings(allow_discharge=e.allow_discharge,
                                        default_validity_s=e.default_validity_s,
                                        heartbeat_timeout_s=e.heartbeat_timeout_s,
                                        min_interval_s=config.upstream.min_interval_s,
                                        ratings=pile_ratings(ratings))),
                lambda: ems_snapshot(sessions, serial, int(self.clock.now())),
                self.clock.now, allowed_writers=e.allowed_writers, unit_id=e.unit_id)
            try:
                await server.start(e.host, e.port)
            except OSError as exc:
                return f"cannot serve the EMS on {e.host}:{e.port}: {exc}"
            server.on_write = self._written.set
            self.ems = server
        o = config.ocpp
        if o.enabled:
            outbox = Outbox(config.ledger.path)
            stack.callback(outbox.close)
            client = OcppClient(OcppSettings(
                url=o.url, station_id=o.station_id, password=o.password or None,
                ca_file=o.ca_file or None, cert_file=o.cert_file or None,
                key_file=o.key_file or None, reconnect_s=o.retry_wait_min_s,
                retry_random_range_s=o.retry_random_range_s,
                retry_repeat_times=o.retry_repeat_times,
                rated_power_w=max(max(r.max_power_w, r.max_discharge_power_w)
                                  for r in ratings),
                evses=tuple(EvseSettings(g.number, setpoint_ratings(g.session.ratings))
                            for g in self.guns)), outbox, time.time)
            self._end_left_open(client)
            client.log_builder = self._build_log
            self.client = client
            self.bridges = [OcppBridge(client, g.session, time.time,
                                       meter_interval_s=o.meter_interval_s, evse_id=g.number,
                                       station_offers=False, status=g.status,
                                       on_availability=g.set_in_service)
                            for g in self.guns]
        return ""

    async def _build_log(self, log_type: str, oldest: float | None,
                         latest: float | None) -> Path:
        """OCPP GetLog's archive: the same as `pile-agent diagnostics` (a day up to now
        unless the central system names the window)."""
        until = latest if latest is not None else self.wall()
        since = oldest if oldest is not None else until - 86_400.0
        out = Path(tempfile.gettempdir()) / "pile-agent-logs" / \
            f"{log_type}-{int(self.wall() * 1000)}.tar.gz"
        return await asyncio.to_thread(build_archive, self.config, since, until, out,
                                       log_type=log_type)

    def _end_left_open(self, client: OcppClient) -> None:
        """Transactions a killed agent left without an Ended event get one now
        (stoppedReason PowerLoss: the agent lost the session), before any new one; the
        outbox sends them in order once online."""
        for transaction_id, evse_id in client.outbox.unended():
            evse = evse_id if evse_id in client.evses else None
            client.transaction_event("Ended", "AbnormalCondition", transaction_id,
                                     stopped_reason="PowerLoss", charging_state="Idle",
                                     evse_id=evse)
            self.events.emit("transaction_ended", f"transaction {transaction_id} on EVSE "
                             f"{evse_id} ended after the restart (PowerLoss)", gun=evse,
                             level="warning", text=f"ocpp: transaction {transaction_id} on "
                             f"EVSE {evse_id} ended after the restart (PowerLoss)")

    def link_state(self, now: float) -> LinkState:
        """How the links stand, for the status endpoint and the metrics."""
        c, ems = self.client, self.ems
        hb_age, hb_lost = None, False
        if ems is not None and ems.controls.controller_hb is not None:
            hb_age, hb_lost = now - ems.controls.hb_changed_at, ems.controls.hb_lost
        return LinkState(
            ocpp_enabled=c is not None, ocpp_online=c is not None and c.online,
            ocpp_outbox=c.outbox.counts()[1] if c is not None else 0,
            ocpp_offline_since=c.offline_since if c is not None else None,
            ems_enabled=ems is not None, ems_heartbeat_age_s=hb_age, ems_heartbeat_lost=hb_lost)

    def tasks(self) -> list[asyncio.Task[None]]:
        out = [asyncio.create_task(self._poll_loop(), name="upstream")]
        if self.client is not None:
            out.append(asyncio.create_task(self.client.run(), name="ocpp"))
        return out

    def poll_now(self) -> None:
        """Offers and requests to the guns, the guns' sessions to the central system."""
        now = self.clock.now()
        if self.ems is not None:
            self.pile_offers.take(self.ems.events(now))
        if self.client is not None:
            self.pile_offers.take(self._station_events(now))
        for bridge, gun in zip(self.bridges, self.guns, strict=False):
            for event in bridge.events(now):
                gun.put(event)
        by_number = {g.number: g for g in self.guns}
        for number, event in self.pile_offers.poll(
                now, lambda: [standing(g.number, g.session, g.priority) for g in self.guns]):
            for gun in (self.guns if number is None else [by_number[number]]):
                gun.put(event)

    def _station_events(self, now: float) -> list[Event]:
        """The station's own profiles (evseId 0), as the bridges relay an EVSE's."""
        assert self.client is not None
        return relay_offers(self.client.station_offers(), self._station, now, self.wall())

    async def drain(self, seconds: float) -> None:
        """Up to `seconds` for the outbox to reach the central system (what is left is
        replayed at the next start)."""
        if self.client is None:
            return
        client = self.client
        deadline = time.monotonic() + max(seconds, 0.0)
        while client.online and client.outbox.counts()[1] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.ems is not None:
            await self.ems.stop()

    async def _poll_loop(self) -> None:
        while True:
            self._written.clear()
            self.poll_now()
            with contextlib.suppress(TimeoutError):
                await within(self._written.wait(), UPSTREAM_POLL_S)
