"""Settlement: metered intervals priced at the time-of-use tariff in force when they began.

A V2G owner is paid per discharged kWh (Shenzhen's pilot: 4 CNY/kWh on a test day at peak;
Guangdong: 0.453 CNY/kWh times a time-of-use coefficient) and pays for charging at the
time-of-use price. Tariffs are bands of local hours: [[start_h, end_h, CNY/kWh], ...]
covering 0..24; each interval is priced by the band of its start (intervals are cut at
every quarter hour, so a band boundary on the quarter hour is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

Band = tuple[float, float, float]  # start hour, end hour, CNY/kWh


@dataclass(frozen=True)
class Tariff:
    charge: tuple[Band, ...] = ((0.0, 24.0, 0.8),)
    discharge: tuple[Band, ...] = ((0.0, 24.0, 0.0),)
    utc_offset_h: float = 8.0  # China Standard Time

    def problems(self) -> list[str]:
        out = []
        for name, bands in (("charge", self.charge), ("discharge", self.discharge)):
            ordered = sorted(bands)
            edges = 0.0
            for start, end, price in ordered:
                if not (math.isfinite(price) and price >= 0):
                    out.append(f"tariff.{name}: price {price!r} must be a number >= 0")
                if start != edges or not start < end <= 24:
                    out.append(f"tariff.{name}: bands must cover 0..24 h without gaps or "
                               f"overlaps (at {start}-{end})")
                    break
                edges = end
            else:
                if edges != 24.0:
                    out.append(f"tariff.{name}: bands end at {edges} h, not 24 h")
        return out

    def price(self, bands: tuple[Band, ...], wall: float) -> float:
        local = datetime.fromtimestamp(wall, UTC) + timedelta(hours=self.utc_offset_h)
        return self.price_at(bands, local.hour + local.minute / 60 + local.second / 3600)

    @staticmethod
    def price_at(bands: tuple[Band, ...], hour: float) -> float:
        """The price in force at this local hour of the day (0 <= hour < 24)."""
        for start, end, price in bands:
            if start <= hour < end:
                return price
        return bands[-1][2]


def parse_tariff(table: dict[str, Any]) -> Tariff:
    """[tariff] charge = [[0, 8, 0.4], ...], discharge = [[...]], utc_offset_h = 8;
    ValueError naming the field."""
    unknown = set(table) - {"charge", "discharge", "utc_offset_h"}
    if unknown:
        raise ValueError(f"tariff.{sorted(unknown)[0]}: unknown setting (known: charge, "
                         "discharge, utc_offset_h)")

    def bands(name: str, default: tuple[Band, ...]) -> tuple[Band, ...]:
        raw = table.get(name)
        if raw is None:
            return default
        try:
            return tuple((float(a), float(b), float(c)) for a, b, c in raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tariff.{name}: bands are [start_h, end_h, CNY/kWh]") from exc

    base = Tariff()
    offset = table.get("utc_offset_h", base.utc_offset_h)
    if isinstance(offset, bool) or not isinstance(offset, int | float) \
            or not -12 <= offset <= 14:
        raise ValueError(f"tariff.utc_offset_h: must be a number of hours -12..14, got "
                         f"{offset!r}")
    tariff = Tariff(bands("charge", base.charge), bands("discharge", base.discharge),
                    float(offset))
    problems = tariff.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return tariff


@dataclass
class Summary:
    sessions: int = 0
    to_vehicle_kwh: float = 0.0
    from_vehicle_kwh: float = 0.0
    charge_cost_cny: float = 0.0
    discharge_revenue_cny: float = 0.0
    by_price: dict[str, float] = field(default_factory=dict)

    @property
    def net_cny(self) -> float:
        """What the owner is paid less what charging cost (negative: the owner pays)."""
        return self.discharge_revenue_cny - self.charge_cost_cny


def settle(intervals: list[dict[str, object]], tariff: Tariff, sessions: int) -> Summary:
    s = Summary(sessions=sessions)
    for i in intervals:
        start = float(i["start_wall"])  # type: ignore[arg-type]
        to_kwh = float(i["to_vehicle_kwh"])  # type: ignore[arg-type]
        from_kwh = float(i["from_vehicle_kwh"])  # type: ignore[arg-type]
        cp, dp = tariff.price(tariff.charge, start), tariff.price(tariff.discharge, start)
        s.to_vehicle_kwh += to_kwh
        s.from_vehicle_kwh += from_kwh
        s.charge_cost_cny += to_kwh * cp
        s.discharge_revenue_cny += from_kwh * dp
        for label, kwh, price in (("charge", to_kwh, cp), ("discharge", from_kwh, dp)):
            if kwh > 0:
                key = f"{label} @ {price:g} CNY/kWh"
                s.by_price[key] = s.by_price.get(key, 0.0) + kwh
    return s
