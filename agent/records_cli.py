"""`pile-agent records`: list the ledger, export it (CSV or JSON), and settle it.

The ledger is opened read-only (nothing is created in a file that is not one: it is refused);
tariffs come from a pile.toml's [tariff] table (or the defaults,
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
    except OSError as exc:
        raise ValueError(f"--tariff {path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"--tariff {path}: not a text file (byte {exc.start} is not UTF-8)"
                         ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--tariff {path}: not valid TOML: {exc}") from exc
    table = doc.get("tariff", {})
    if not isinstance(table, dict):
        raise ValueError(f"--tariff {path}: [tariff] must be a table")
    try:
        return parse_tariff(table)
    except ValueError as exc:
        raise ValueError(f"--tariff {path}: [tariff] {exc}") from exc


def run_records(ledger_path: str, fmt: str, tariff_path: str | None) -> int:
    try:
        tariff = load_tariff(tariff_path)
        ledger = Ledger(ledger_path, read_only=True)  # nothing is created or written
    except (ValueError, LedgerError) as exc:
        print(f"pile-agent records: {exc}", file=sys.stderr)
        return 2
    try:
        sessions, intervals = ledger.sessions(), ledger.intervals()
    except LedgerError as exc:
        print(f"pile-agent records: {exc}", file=sys.stderr)
        return 2
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
