"""`pile.toml`: the real interfaces and ratings of a pile; every error names its field."""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.core.frequency_watt import FrequencyDroop
from agent.core.health_policy import HealthPolicy
from agent.core.module_pool import Group
from agent.core.ratings import GunRatings
from agent.core.thermal_guard import DeratingCurve, SensorLimits, ThermalConfig
from agent.core.upstream import UpstreamPolicy
from agent.ledger.settlement import Tariff, parse_tariff
from drivers.gbt27930.codec import extension_pgn_table
from drivers.udp_loopback.roster import channel_directory


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending field."""


@dataclass(frozen=True, slots=True)
class CanConfig:
    # any python-can interface: socketcan, slcan, virtual, ...; udp_loopback (this project's,
    # drivers/udp_loopback) is a bus between processes of one host that stays on 127.0.0.1
    interface: str = "socketcan"
    channel: str = "can0"
    # GB/T 27930-2015 §5: 250 kbit/s
    bitrate: int = 250_000
    # python-can's udp_multicast only: the UDP port (0: python-can's default). Its frames go
    # out of the default route's interface (they leave the host); udp_loopback does not.
    port: int = 0


@dataclass(frozen=True, slots=True)
class ModbusConfig:
    transport: str = "tcp"  # "tcp" or "rtu"
    host: str = "127.0.0.1"
    port: int = 502
    serial_port: str = ""
    baudrate: int = 115_200
    parity: str = "N"
    unit_id: int = 1
    timeout_s: float = 0.5
    poll_period_s: float = 0.1  # State Grid module spec: V/I update <= 200 ms


@dataclass(frozen=True, slots=True)
class SafetyBusConfig:
    """The RS-485 bus of the I/O board and the IMD (drivers/safety_io)."""

    enabled: bool = False  # when true, a session needs the bus (E-stop, PT1000s) to start
    transport: str = "rtu"
    host: str = "127.0.0.1"
    port: int = 502
    serial_port: str = ""
    baudrate: int = 19_200  # Bender isoCHA default line: 19200 8E1
    parity: str = "E"
    io_unit: int = 2
    imd_unit: int = 3
    # 100 ms suits a 19,200-baud line (one I/O board read takes about 19 ms there); a
    # faster line or TCP can poll faster for a quicker software answer to the E-stop (the
    # board's hardware trip acts at once either way).
    poll_period_s: float = 0.1


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """The DC energy meter (drivers/dc_meter): billing energy comes from it."""

    enabled: bool = False
    transport: str = "rtu"
    host: str = "127.0.0.1"
    port: int = 502
    serial_port: str = ""
    baudrate: int = 9_600  # Acrel DJSF1352-class default line: 9600 8N1
    parity: str = "N"
    unit_id: int = 1
    poll_period_s: float = 1.0


@dataclass(frozen=True, slots=True)
class V2gConfig:
    """Where the V2G extension's messages sit on the bus (docs/V2G.md): a vehicle
    programme may assign other PGNs than the project's defaults."""

    cdp_pgn: int = 0x3100
    bdp_pgn: int = 0x3200
    bds_pgn: int = 0x3300


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How upstream offers are vetted and what happens when upstream falls silent
    (agent/core/upstream.py); local frequency response (SunSpec model 711)."""

    fallback_charge_a: float = math.inf  # charging with no live offer; discharge: 0 A
    min_interval_s: float = 1.0
    max_validity_s: float = 900.0
    max_delivery_age_s: float = 5.0
    frequency_droop: bool = False
    droop_pct: float = 5.0  # IEEE 1547-2018 default, GB/T 40595-2021 [V]
    dead_band_hz: float = 0.036

    def policy(self, gun: GunRatings) -> UpstreamPolicy:
        droop = FrequencyDroop(rated_w=gun.max_discharge_power_w or gun.max_power_w,
                               dead_band_hz=self.dead_band_hz, droop=self.droop_pct / 100.0)
        return UpstreamPolicy(
            min_interval_s=self.min_interval_s, max_validity_s=self.max_validity_s,
            max_delivery_age_s=self.max_delivery_age_s,
            fallback_charge_a=self.fallback_charge_a,
            droop=droop if self.frequency_droop else None)


def parse_upstream(table: object, gun: GunRatings) -> UpstreamConfig:
    up: UpstreamConfig = _build(UpstreamConfig, table, "upstream")
    if "fallback_charge_a" in (table if isinstance(table, dict) else {}) \
            and not 0 <= up.fallback_charge_a <= gun.max_current_a:
        raise ConfigError(f"upstream.fallback_charge_a: must be 0..{gun.max_current_a} A")
    if not 0.1 <= up.min_interval_s <= 60 or not 1 <= up.max_validity_s <= 86_400 \
            or not 0.1 <= up.max_delivery_age_s <= 60:
        raise ConfigError("upstream: min_interval_s must be 0.1-60, max_validity_s 1-86400, "
                          "max_delivery_age_s 0.1-60")
    droop = up.policy(gun).droop
    for problem in droop.problems() if droop is not None else []:
        raise ConfigError(f"upstream.{problem}")
    return up


@dataclass(frozen=True, slots=True)
class EmsConfig:
    """The SunSpec Modbus TCP server for the site EMS / VPP (drivers/sunspec)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback unless the operator opens it
    port: int = 502
    unit_id: int = 1
    allowed_writers: tuple[str, ...] = ("127.0.0.1",)  # client addresses that may write
    allow_discharge: bool = False  # WSet injection (discharge) refused unless true
    default_validity_s: float = 60.0  # a WSet without WSetRvrtTms lapses after this
    heartbeat_timeout_s: float = 0.0  # 715 ControllerHb watched when > 0
    # Model 1 SN: this pile's serial (unset: the OCPP station id, else "gun<charger number>")
    serial_number: str = ""


def parse_ems(table: object) -> EmsConfig:
    if not isinstance(table, dict):
        raise ConfigError("[ems] must be a table")
    writers = table.get("allowed_writers", ["127.0.0.1"])
    if not isinstance(writers, list) or not all(isinstance(w, str) for w in writers):
        raise ConfigError("ems.allowed_writers: a list of IP addresses")
    for w in writers:
        try:
            ipaddress.ip_address(w)
        except ValueError as exc:
            raise ConfigError(f"ems.allowed_writers: {w!r} is not an IP address") from exc
    rest = {k: v for k, v in table.items() if k != "allowed_writers"}
    ems: EmsConfig = replace(_build(EmsConfig, rest, "ems"), allowed_writers=tuple(writers))
    try:
        ipaddress.ip_address(ems.host)
    except ValueError as exc:
        raise ConfigError(f"ems.host: {ems.host!r} is not an IP address") from exc
    if not 0 < ems.port < 65536 or not 1 <= ems.unit_id <= 247:
        raise ConfigError("ems: port must be 1-65535 and unit_id 1-247")
    if len(ems.serial_number) > 32 or not ems.serial_number.isascii():
        raise ConfigError("ems.serial_number: at most 32 ASCII characters (SunSpec model 1 SN)")
    if not 1 <= ems.default_validity_s <= 900 or not 0 <= ems.heartbeat_timeout_s <= 3600:
        raise ConfigError("ems: default_validity_s must be 1-900 (the upstream validity "
                          "ceiling), heartbeat_timeout_s 0-3600")
    return ems


@dataclass(frozen=True, slots=True)
class OcppConfig:
    """The OCPP 2.1 central system (drivers/ocpp). Security profile from the URL and the
    credentials: ws + password (1), wss + password (2), wss + client certificate (3)."""

    enabled: bool = False
    url: str = ""  # ws(s)://host:port/path; the station id is appended
    station_id: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    meter_interval_s: float = 60.0  # TransactionEvent Updated with meter values
    # Reconnecting (OCPPCommCtrlr RetryBackOff*, initial values; the central system may set
    # them): wait the minimum, doubled after each failed attempt up to repeat_times, plus a
    # random part of up to random_range_s, so that a site's piles do not all reconnect in
    # the same second after an outage.
    retry_wait_min_s: float = 2.0
    retry_random_range_s: float = 3.0
    retry_repeat_times: int = 5


def parse_ocpp(table: object) -> OcppConfig:
    o: OcppConfig = _build(OcppConfig, table, "ocpp")
    if not o.enabled:
        return o
    if not o.url.startswith(("ws://", "wss://")):
        raise ConfigError(f"ocpp.url: must start with ws:// or wss://, got {o.url!r}")
    if not o.station_id or "/" in o.station_id:
        raise ConfigError("ocpp.station_id: required, without '/'")
    if o.url.startswith("ws://") and (o.cert_file or o.ca_file):
        raise ConfigError("ocpp.url: certificates need wss:// (security profiles 2 and 3)")
    if bool(o.cert_file) != bool(o.key_file):
        raise ConfigError("ocpp.cert_file and ocpp.key_file: both or neither")
    if o.url.startswith("ws://") and not o.password:
        raise ConfigError("ocpp.password: required on ws:// (security profile 1); an "
                          "unauthenticated link is not offered")
    if o.password and not 16 <= len(o.password) <= 40:
        raise ConfigError("ocpp.password: 16 to 40 characters (OCPP 2.1 BasicAuthPassword)")
    if not 1 <= o.meter_interval_s <= 3600:
        raise ConfigError("ocpp.meter_interval_s: 1-3600")
    if not 0 <= o.retry_wait_min_s <= 3600 or not 0 <= o.retry_random_range_s <= 3600 \
            or not 0 <= o.retry_repeat_times <= 10:
        raise ConfigError("ocpp: retry_wait_min_s and retry_random_range_s 0-3600 s, "
                          "retry_repeat_times 0-10")
    return o


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """The local status endpoint (docs/OPERATIONS.md): GET /status (JSON, `pile-agent
    status`) and / (the status page). Read-only; loopback unless the operator opens it to
    the pile's maintenance port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8750


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint: GET /metrics (docs/OPERATIONS.md)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464


def parse_endpoint(cls: type[Any], table: object, section: str) -> Any:
    endpoint = _build(cls, table, section)
    try:
        ipaddress.ip_address(endpoint.host)
    except ValueError as exc:
        raise ConfigError(f"{section}.host: {endpoint.host!r} is not an IP address") from exc
    if not 0 <= endpoint.port < 65536:  # 0: a free port, chosen at start (tests)
        raise ConfigError(f"{section}.port: {endpoint.port} is not a port (0-65535)")
    return endpoint


@dataclass(frozen=True, slots=True)
class TracesConfig:
    """Each session's CAN traffic in files of its own (agent/runtime/session_traces.py)."""

    enabled: bool = False
    directory: str = "traces"
    formats: tuple[str, ...] = ("candump",)  # candump, asc, blf (python-can's loggers)
    keep_days: float = 30.0
    keep_mb: float = 500.0


def parse_traces(table: object) -> TracesConfig:
    if not isinstance(table, dict):
        raise ConfigError("[traces] must be a table")
    formats = table.get("formats", ["candump"])
    known = ("candump", "asc", "blf")
    if not isinstance(formats, list) or not formats \
            or not all(isinstance(f, str) and f in known for f in formats):
        raise ConfigError(f"traces.formats: a non-empty list of {', '.join(known)}")
    rest = {k: v for k, v in table.items() if k != "formats"}
    traces: TracesConfig = replace(_build(TracesConfig, rest, "traces"),
                                   formats=tuple(dict.fromkeys(formats)))
    if not traces.directory:
        raise ConfigError("traces.directory: required")
    if not traces.keep_days > 0 or not traces.keep_mb > 0:
        raise ConfigError("traces: keep_days and keep_mb must be above 0")
    return traces


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    path: str = "pile-ledger.sqlite"  # SQLite (WAL, synchronous=FULL); relative to the cwd


@dataclass(frozen=True, slots=True)
class GunSetup:
    """One gun: its ratings and its own CAN channel, output unit, safety bus and meter."""

    ratings: GunRatings
    can: CanConfig
    modbus: ModbusConfig
    safety_bus: SafetyBusConfig
    meter: MeterConfig
    priority: int = 0  # the module pool serves higher first
    # false: the gun serves no car (taken out of service by the operator; OCPP
    # ChangeAvailability can do the same at run time)
    in_service: bool = True


@dataclass(frozen=True, slots=True)
class PoolSetup:
    """The pile's module pool: its groups, the matrix board that switches them, and the
    limits the guns share."""

    groups: tuple[Group, ...]
    matrix: ModbusConfig
    power_w: float = math.inf  # the pile's rating
    grid_limit_w: float = math.inf
    export_limit_w: float = math.inf


@dataclass(frozen=True, slots=True)
class PileConfig:
    can: CanConfig = field(default_factory=CanConfig)
    modbus: ModbusConfig = field(default_factory=ModbusConfig)
    gun: GunRatings = field(default_factory=GunRatings)
    safety_bus: SafetyBusConfig = field(default_factory=SafetyBusConfig)
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    meter: MeterConfig = field(default_factory=MeterConfig)
    v2g: V2gConfig = field(default_factory=V2gConfig)
    # The operator's battery-health policy for this pile, and owners' per VIN.
    health: HealthPolicy = field(default_factory=HealthPolicy)
    owners: dict[str, HealthPolicy] = field(default_factory=dict)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    tariff: Tariff = field(default_factory=Tariff)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    ems: EmsConfig = field(default_factory=EmsConfig)
    ocpp: OcppConfig = field(default_factory=OcppConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    # Every gun with its own interfaces ([[gun]] tables; one from [gun] otherwise), and the
    # pile's shared module pool ([pile]); None: each gun has its own module stack.
    guns: tuple[GunSetup, ...] = ()
    pile: PoolSetup | None = None

    def extension_pgns(self) -> dict[str, int]:
        return {"CDP": self.v2g.cdp_pgn, "BDP": self.v2g.bdp_pgn, "BDS": self.v2g.bds_pgn}


SECTIONS = ("can", "modbus", "gun", "safety_bus", "thermal", "meter", "v2g", "health",
            "ledger", "tariff", "upstream", "ems", "ocpp", "pile", "status", "metrics",
            "traces")


def _build(cls: type[Any], table: object, section: str, base: Any = None) -> Any:
    """`cls` from a TOML table, each field checked against the type of its default; the
    defaults are `base`'s when given (a table that overrides part of a built-in set)."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    base = cls() if base is None else base
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{section}.{key}"
        if key not in known:
            raise ConfigError(f"{name}: unknown setting (known: {', '.join(sorted(known))})")
        default = getattr(base, key)
        if isinstance(default, bool) != isinstance(value, bool):
            raise ConfigError(f"{name}: expected {type(default).__name__}, got {value!r}")
        if isinstance(default, float):
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
            value = float(value)
        elif not isinstance(value, type(default)):
            raise ConfigError(f"{name}: expected {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return replace(base, **kwargs)


def parse_config(doc: dict[str, Any]) -> PileConfig:
    for section in doc:
        if section not in SECTIONS:
            raise ConfigError(f"[{section}]: unknown section (known: {', '.join(SECTIONS)})")
    can = check_can(_build(CanConfig, doc.get("can", {}), "can"), "can")
    modbus = check_modbus(_build(ModbusConfig, doc.get("modbus", {}), "modbus"), "modbus")
    gun_doc = doc.get("gun", {})
    single = {} if isinstance(gun_doc, list) else gun_doc
    if not isinstance(single, dict):
        raise ConfigError("[gun] must be a table (or [[gun]] tables)")
    gun = _build(GunRatings, {k: v for k, v in single.items() if k != "in_service"}, "gun")
    for problem in gun.problems():
        raise ConfigError(f"gun.{problem}")
    bus = check_safety_bus(_build(SafetyBusConfig, doc.get("safety_bus", {}), "safety_bus"),
                           "safety_bus")
    thermal = parse_thermal(doc.get("thermal", {}))
    meter = check_meter(_build(MeterConfig, doc.get("meter", {}), "meter"), "meter")
    v2g = parse_v2g(doc.get("v2g", {}))
    health, owners = parse_health(doc.get("health", {}))
    ledger = _build(LedgerConfig, doc.get("ledger", {}), "ledger")
    if not ledger.path:
        raise ConfigError("ledger.path: required (every kWh is settled from it)")
    tariff_table = doc.get("tariff", {})
    if not isinstance(tariff_table, dict):
        raise ConfigError("[tariff] must be a table")
    try:
        tariff = parse_tariff(tariff_table)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    ems = parse_ems(doc.get("ems", {}))
    ocpp = parse_ocpp(doc.get("ocpp", {}))
    base = GunSetup(gun, can, modbus, bus, meter,
                    in_service=_in_service(single.get("in_service", True), "gun"))
    guns = parse_guns(gun_doc, base) if isinstance(gun_doc, list) else (base,)
    if "thermal" in doc and not all(g.safety_bus.enabled for g in guns):
        # The temperatures come from each gun's I/O board on its safety bus; without it the
        # curves would be read and silently never applied.
        raise ConfigError("[thermal]: needs [safety_bus] enabled = true for every gun (the "
                          "PT1000s are read from the I/O board)")
    pile = parse_pile(doc["pile"], guns) if "pile" in doc else None
    return PileConfig(can=can, modbus=modbus, gun=guns[0].ratings, safety_bus=bus,
                      thermal=thermal, meter=meter, v2g=v2g, health=health, owners=owners,
                      ledger=ledger, tariff=tariff,
                      upstream=parse_upstream(doc.get("upstream", {}), guns[0].ratings),
                      ems=ems, ocpp=ocpp, guns=guns, pile=pile,
                      status=parse_endpoint(StatusConfig, doc.get("status", {}), "status"),
                      metrics=parse_endpoint(MetricsConfig, doc.get("metrics", {}),
                                             "metrics"),
                      traces=parse_traces(doc.get("traces", {})))


_PER_GUN = {"can": CanConfig, "modbus": ModbusConfig, "safety_bus": SafetyBusConfig,
            "meter": MeterConfig}


def parse_guns(tables: list[Any], base: GunSetup) -> tuple[GunSetup, ...]:
    """[[gun]]: each gun's ratings, priority and its own interfaces; what a gun leaves out
    comes from the top-level [can], [modbus], [safety_bus] and [meter]."""
    guns: list[GunSetup] = []
    for i, table in enumerate(tables):
        where = f"gun[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"[[gun]] #{i}: must be a table")
        ratings = _build(GunRatings, {k: v for k, v in table.items()
                                      if k not in (*_PER_GUN, "priority", "in_service")},
                         where,
                         base=replace(base.ratings, charger_number=i + 1))
        for problem in ratings.problems():
            raise ConfigError(f"{where}.{problem}")
        priority = table.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) \
                or not 0 <= priority <= 100:
            raise ConfigError(f"{where}.priority: an integer 0-100, got {priority!r}")
        parts = {name: _build(cls, table.get(name, {}), f"{where}.{name}",
                              base=getattr(base, name)) for name, cls in _PER_GUN.items()}
        guns.append(GunSetup(ratings, check_can(parts["can"], f"{where}.can"),
                             check_modbus(parts["modbus"], f"{where}.modbus"),
                             check_safety_bus(parts["safety_bus"], f"{where}.safety_bus"),
                             check_meter(parts["meter"], f"{where}.meter"), priority,
                             _in_service(table.get("in_service", True), where)))
    if not guns:
        raise ConfigError("[[gun]]: at least one gun")
    numbers = [g.ratings.charger_number for g in guns]
    if len(set(numbers)) != len(numbers) or not all(1 <= n <= 16 for n in numbers):
        # 16: the matrix board's command word has a bit per gun.
        raise ConfigError(f"[[gun]] charger_number: each gun its own, 1-16, got {numbers}")
    channels = [(g.can.interface, g.can.channel) for g in guns]
    if len(set(channels)) != len(channels):
        raise ConfigError("[[gun]] can.channel: each gun needs its own CAN channel "
                          "(GB/T 27930 addresses one charger and one BMS per bus)")
    return tuple(guns)


def _in_service(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.in_service: true or false, got {value!r}")
    return value


def parse_pile(table: object, guns: tuple[GunSetup, ...]) -> PoolSetup:
    """[pile]: the shared limits, [pile.matrix] the matrix board's bus, [[pile.group]] the
    module groups and the guns each can reach (by charger_number)."""
    if not isinstance(table, dict):
        raise ConfigError("[pile] must be a table")
    known = {"power_w", "grid_limit_w", "export_limit_w", "matrix", "group"}
    for key in table:
        if key not in known:
            raise ConfigError(f"pile.{key}: unknown setting (known: {', '.join(sorted(known))})")
    limits: dict[str, float] = {}
    for key in ("power_w", "grid_limit_w", "export_limit_w"):
        value = table.get(key, math.inf)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"pile.{key}: a number > 0, got {value!r}")
        limits[key] = float(value)
    matrix = check_modbus(_build(ModbusConfig, table.get("matrix", {}), "pile.matrix"),
                          "pile.matrix")
    raw = table.get("group", [])
    if not isinstance(raw, list) or not raw:
        raise ConfigError("[[pile.group]]: at least one module group")
    numbers = {g.ratings.charger_number for g in guns}
    groups: list[Group] = []
    for i, entry in enumerate(raw):
        where = f"pile.group[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"id", "current_a", "power_w", "reach"}:
            raise ConfigError(f"{where}: a table of id, current_a, power_w, reach")
        gid, amps, watts, reach = (entry.get(k) for k in ("id", "current_a", "power_w",
                                                         "reach"))
        if not isinstance(gid, str) or not gid:
            raise ConfigError(f"{where}.id: a name")
        for key, value in (("current_a", amps), ("power_w", watts)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 < value < math.inf:
                raise ConfigError(f"{where}.{key}: a finite number > 0, got {value!r}")
        if not isinstance(reach, list) or not reach or not set(reach) <= numbers \
                or any(isinstance(n, bool) for n in reach):
            raise ConfigError(f"{where}.reach: the guns (charger_number) its matrix "
                              f"contactors reach, among {sorted(numbers)}; got {reach!r}")
        groups.append(Group(gid, float(amps), float(watts),  # type: ignore[arg-type]
                            frozenset(reach)))
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"[[pile.group]] id: each group its own, got {ids}")
    if len(groups) > 32:
        raise ConfigError("[[pile.group]]: at most 32 groups (the matrix board's map)")
    lonely = sorted(numbers - {n for g in groups for n in g.reach})
    if lonely:
        raise ConfigError(f"[[pile.group]]: no group reaches gun(s) {lonely}")
    return PoolSetup(tuple(groups), matrix, limits["power_w"], limits["grid_limit_w"],
                     limits["export_limit_w"])


def check_can(can: CanConfig, section: str) -> CanConfig:
    if can.bitrate <= 0:
        raise ConfigError(f"{section}.bitrate: must be > 0")
    if not 0 <= can.port <= 65535:
        raise ConfigError(f"{section}.port: must be 0-65535")
    if can.port and can.interface != "udp_multicast":
        raise ConfigError(f"{section}.port: only for interface = \"udp_multicast\" (the "
                          f"{can.interface} interface has no port)")
    if can.interface == "udp_loopback":
        try:
            channel_directory(can.channel)
        except ValueError as exc:
            raise ConfigError(f"{section}.channel: {exc}") from None
    return can


def check_modbus(modbus: ModbusConfig, section: str) -> ModbusConfig:
    if modbus.transport not in ("tcp", "rtu"):
        raise ConfigError(f"{section}.transport: must be 'tcp' or 'rtu', got "
                          f"{modbus.transport!r}")
    if modbus.transport == "rtu" and not modbus.serial_port:
        raise ConfigError(f"{section}.serial_port: required when {section}.transport = 'rtu'")
    if not 0 < modbus.port < 65536:
        raise ConfigError(f"{section}.port: must be 1-65535, got {modbus.port}")
    if not 1 <= modbus.unit_id <= 247:
        raise ConfigError(f"{section}.unit_id: must be 1-247 (Modbus serial line spec), "
                          f"got {modbus.unit_id}")
    if modbus.parity not in ("N", "E", "O"):
        raise ConfigError(f"{section}.parity: must be N, E or O, got {modbus.parity!r}")
    if not 0 < modbus.timeout_s <= 5 or not 0 < modbus.poll_period_s <= 1:
        raise ConfigError(f"{section}.timeout_s must be in (0, 5] and {section}.poll_period_s "
                          "in (0, 1]")
    return modbus


def check_safety_bus(bus: SafetyBusConfig, section: str) -> SafetyBusConfig:
    if not 0.01 <= bus.poll_period_s <= 0.2:
        # Above 0.2 s the 1 s staleness budget (I7) would hang on a handful of reads.
        raise ConfigError(f"{section}.poll_period_s: 0.01-0.2 s, got {bus.poll_period_s}")
    if bus.enabled and bus.transport == "rtu" and not bus.serial_port:
        raise ConfigError(f"{section}.serial_port: required when {section}.transport = 'rtu'")
    if bus.transport not in ("tcp", "rtu"):
        raise ConfigError(f"{section}.transport: must be 'tcp' or 'rtu', got "
                          f"{bus.transport!r}")
    return bus


def check_meter(meter: MeterConfig, section: str) -> MeterConfig:
    if meter.transport not in ("tcp", "rtu"):
        raise ConfigError(f"{section}.transport: must be 'tcp' or 'rtu', got "
                          f"{meter.transport!r}")
    if meter.enabled and meter.transport == "rtu" and not meter.serial_port:
        raise ConfigError(f"{section}.serial_port: required when {section}.transport = 'rtu'")
    if not 1 <= meter.unit_id <= 247 or meter.parity not in ("N", "E", "O") \
            or not 0 < meter.poll_period_s <= 60:
        raise ConfigError(f"{section}: unit_id must be 1-247, parity N, E or O, poll_period_s "
                          "in (0, 60]")
    return meter


def parse_v2g(table: object) -> V2gConfig:
    """The extension's PGNs, checked against each other and the standard's by the codec's
    own table builder (nothing is applied here: the agent moves them at start-up)."""
    v2g: V2gConfig = _build(V2gConfig, table, "v2g")
    pgns = {"CDP": v2g.cdp_pgn, "BDP": v2g.bdp_pgn, "BDS": v2g.bds_pgn}
    try:
        extension_pgn_table(pgns)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return v2g


def parse_health(table: object) -> tuple[HealthPolicy, dict[str, HealthPolicy]]:
    """[health]: the operator's policy; [health.owner."VIN"]: an owner's, per vehicle."""
    if not isinstance(table, dict):
        raise ConfigError("[health] must be a table")
    rest = {k: v for k, v in table.items() if k != "owner"}
    operator: HealthPolicy = _build(HealthPolicy, rest, "health")
    for problem in operator.problems():
        raise ConfigError(f"health.{problem}")
    owners: dict[str, HealthPolicy] = {}
    raw_owners = table.get("owner", {})
    if not isinstance(raw_owners, dict):
        raise ConfigError("[health.owner] must be a table of VIN = { ... }")
    for vin, policy_table in raw_owners.items():
        policy: HealthPolicy = _build(HealthPolicy, policy_table, f"health.owner.{vin}")
        for problem in policy.problems():
            raise ConfigError(f"health.owner.{vin}.{problem}")
        owners[vin] = policy
    return operator, owners


def parse_thermal(table: object) -> ThermalConfig:
    """[thermal]: plausibility limits, and per sensor kind ([thermal.connector], .cable,
    .module) a derating curve, trip and hysteresis; what is left out keeps its default."""
    if not isinstance(table, dict):
        raise ConfigError("[thermal] must be a table")
    limits = dict(ThermalConfig().kinds)
    kinds = tuple((kind, _sensor_limits(table[kind], lim, f"thermal.{kind}")
                   if kind in table else lim) for kind, lim in limits.items())
    c = _build(ThermalConfig, {k: v for k, v in table.items() if k not in limits}, "thermal")
    for name in ("short_ohm", "open_ohm", "stuck_s", "disagreement_k", "disagreement_s",
                 "silent_s"):
        if not getattr(c, name) > 0:
            raise ConfigError(f"thermal.{name}: must be > 0")
    if not c.short_ohm < c.open_ohm:
        raise ConfigError("thermal.short_ohm: must be below thermal.open_ohm")
    if c.stuck_min_current_a < 0:
        raise ConfigError("thermal.stuck_min_current_a: must be >= 0")
    if c.silent_s > 10:
        raise ConfigError("thermal.silent_s: a sensor silent over 10 s is blind; at most 10")
    return replace(c, kinds=kinds)  # type: ignore[no-any-return]


def _sensor_limits(table: object, default: SensorLimits, section: str) -> SensorLimits:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    curve = _curve(table["curve"], f"{section}.curve") if "curve" in table else default.curve
    lim = _build(SensorLimits, {k: v for k, v in table.items() if k != "curve"}, section,
                 base=replace(default, curve=curve))
    if not lim.trip_c > curve.points[0][0]:
        raise ConfigError(f"{section}.trip_c: must be above the curve's first point "
                          f"({curve.points[0][0]} °C)")
    # Hysteresis is what keeps the limit from toggling under noise (invariant I10).
    if not 0 < lim.hysteresis_k <= 10:
        raise ConfigError(f"{section}.hysteresis_k: must be in (0, 10] K")
    if not lim.rate_limit_k_per_s > 0 or not 0 <= lim.rate_fraction <= 1 \
            or lim.rate_hold_s < 0:
        raise ConfigError(f"{section}: rate_limit_k_per_s must be > 0, rate_fraction in "
                          "[0, 1], rate_hold_s >= 0")
    return lim  # type: ignore[no-any-return]


def _curve(value: object, name: str) -> DeratingCurve:
    """`[[°C, fraction], ...]`: temperatures rising, fractions not."""
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in p)
            for p in value):
        raise ConfigError(f"{name}: expected [[°C, fraction], ...], got {value!r}")
    try:
        return DeratingCurve(tuple((float(t), float(f)) for t, f in value))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def load_config(path: str | Path) -> PileConfig:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (TOML is UTF-8; byte {exc.start} is not)"
                          ) from exc
    return parse_config(doc)
