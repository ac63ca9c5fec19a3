"""`pile-agent records`: list the ledger, export it (CSV or JSON), and settle it.

The ledger is read only; tariffs come from a pile.toml's [tariff] table (or the defaults,
printed with the summary so nobody mistakes them for a contract).
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from pathlib import Path

from agent.ledger.settlement import Tariff, parse_tariff, settle
from agent.ledger.store import Ledger, LedgerError


def load_tariff(path: str | None) -> Tariff:
    """[tariff] charge = [[0, 8, 0.4], ...], discharge = [[...]]; ValueError naming the field."""
    if path is None:
        return Tariff()
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    table = doc.get("tariff", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [tariff] must be a table")
    return parse_tariff(table)


def run_records(ledger_path: str, fmt: str, tariff_path: str | None) -> int:
    if not Path(ledger_path).is_file():
        print(f"pile-agent records: no ledger at {ledger_path}", file=sys.stderr)
        return 2
    try:
        tariff = load_tariff(tariff_path)
        ledger = Ledger(ledger_path)
    except (ValueError, LedgerError) as exc:
        print(f"pile-agent records: {exc}", file=sys.stderr)
        return 2
    try:
        sessions, intervals = ledger.sessions(), ledger.intervals()
    finally:
        ledger.close()
    if fmt == "json":
        print(json.dumps({"sessions": sessions, "intervals": intervals}, indent=2))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        if intervals:
            writer.writerow(intervals[0].keys())
            writer.writerows(i.values() for i in intervals)
    else:
        for s in sessions:
            print(f"{s['session_key']}  VIN {s['vin'] or '-':17}  {s['outcome']:8}  "
                  f"SOC {s['start_soc_pct']} -> {s['end_soc_pct']} %  "
                  f"charged {s['to_vehicle_kwh'] or 0:.3f} kWh  "
                  f"discharged {s['from_vehicle_kwh'] or 0:.3f} kWh  ({s['stop_reason']})")
        summary = settle(intervals, tariff, len(sessions))
        print(f"settlement over {summary.sessions} sessions, {len(intervals)} intervals "
              f"({'tariff from ' + tariff_path if tariff_path else 'default tariff'}):")
        for key, kwh in sorted(summary.by_price.items()):
            print(f"  {key:32} {kwh:10.3f} kWh")
        print(f"  charging cost       {summary.charge_cost_cny:10.2f} CNY\n"
              f"  discharge revenue   {summary.discharge_revenue_cny:10.2f} CNY\n"
              f"  net to the owner    {summary.net_cny:10.2f} CNY")
    return 0
