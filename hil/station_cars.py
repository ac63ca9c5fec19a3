"""Who comes to the station in a day, and what the VPP asks of it: the draws behind
`pile-agent station-day` (hil/station_day.py). Seeded, so a day is repeatable.

A public station in a V2G pilot city: charge-only cars arrive through the day (more in the
morning and evening rush), charge to their target and leave; V2G cars (a share of the
guns) are parked overnight, plugged in the previous evening and leaving in the morning,
and new ones arrive in the late afternoon. The VPP dispatches discharge in the evening
peak, split evenly over the V2G cars that will stay past the end of the peak.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hil.ev_battery import BatteryParams
from hil.ev_bms import VehicleConfig

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
# Charge-only arrivals per gun and hour, by hour of the day: a quiet night, the morning
# rush, a steady day, the evening rush (the shape of public-station occupancy in the
# pilot cities' published load curves; the level is this model's choice).
ARRIVALS_PER_GUN_H = (0.1, 0.05, 0.05, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 0.8, 0.6, 0.5,
                      0.6, 0.5, 0.5, 0.6, 0.7, 0.9, 1.0, 0.9, 0.7, 0.5, 0.3, 0.2)
# A charge-only car's session ends at its target (the BMS stops it) and the car leaves;
# its owner is back after this at the latest, whatever its SOC.
MAX_DWELL_S = 2 * HOUR_S


@dataclass(frozen=True)
class Car:
    arrive_s: float
    leave_s: float  # the owner is back by then (a charge-only car leaves earlier, at target)
    vehicle: VehicleConfig
    v2g: bool


@dataclass(frozen=True)
class Dispatch:
    """The VPP's evening peak: the station exports up to `export_w`, split evenly over the
    V2G cars plugged in that stay past `until_s` (they recharge before leaving)."""

    from_s: float = 18 * HOUR_S
    until_s: float = 21 * HOUR_S
    export_w: float = 1_000_000.0


def _battery(rng: random.Random) -> BatteryParams:
    # 96 cells in series (a 400 V class pack), 100-200 Ah: 36-71 kWh.
    return BatteryParams(capacity_ah=rng.uniform(100.0, 200.0))


def _charge_only(rng: random.Random, n: int, arrive_s: float) -> Car:
    start = rng.uniform(10.0, 50.0)
    vehicle = VehicleConfig(battery=_battery(rng), start_soc_pct=start,
                            target_soc_pct=rng.uniform(max(start + 20.0, 80.0), 95.0),
                            max_charge_current_a=rng.choice((150.0, 200.0, 250.0)),
                            vin=f"LSIMDAY{n:010d}")
    return Car(arrive_s, arrive_s + MAX_DWELL_S, vehicle, v2g=False)


def _v2g(rng: random.Random, n: int, arrive_s: float, leave_s: float, soc: float) -> Car:
    vehicle = VehicleConfig(battery=_battery(rng), start_soc_pct=soc,
                            target_soc_pct=rng.uniform(80.0, 90.0), v2g=True,
                            stop_at_target=False, soc_floor_pct=rng.uniform(30.0, 40.0),
                            max_discharge_current_a=150.0, max_discharge_power_w=60_000.0,
                            energy_window_kwh=rng.uniform(15.0, 30.0),
                            vin=f"LSIMV2G{n:010d}")
    return Car(arrive_s, leave_s, vehicle, v2g=True)


def draw_cars(guns: int, seed: int, day_s: float = DAY_S, v2g_share: float = 0.25
              ) -> list[Car]:
    """The day's cars, by arrival time. V2G guns (the first `v2g_share` of them) hold an
    overnight car from t = 0 until the morning and take a new one in the late afternoon
    that stays to the end of the day; the others take charge-only cars as they come."""
    rng = random.Random(seed)
    cars: list[Car] = []
    v2g_guns = round(guns * v2g_share)
    for _ in range(v2g_guns):
        cars.append(_v2g(rng, len(cars), 0.0, rng.uniform(6.5, 9.0) * HOUR_S,
                         rng.uniform(50.0, 80.0)))
        arrive = rng.uniform(16.5, 19.5) * HOUR_S
        if arrive < day_s:
            cars.append(_v2g(rng, len(cars), arrive, day_s + 10 * HOUR_S,
                             rng.uniform(50.0, 80.0)))
    top = max(ARRIVALS_PER_GUN_H) / HOUR_S
    for _ in range(guns - v2g_guns):
        # A Poisson process whose rate follows the hour (thinning: draw at the top rate,
        # keep each arrival with the hour's share of it).
        t = rng.expovariate(top)
        while t < day_s:
            if rng.random() * top < ARRIVALS_PER_GUN_H[int(t // HOUR_S) % 24] / HOUR_S:
                cars.append(_charge_only(rng, len(cars), t))
            t += rng.expovariate(top)
    return sorted(cars, key=lambda c: (c.arrive_s, c.vehicle.vin))
