"""The independent decoder agrees with the real traces it was written for."""

from __future__ import annotations

from pathlib import Path

from tests.independent_gbt_decoder import decode_log

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gbt27930"


def test_session_b_decodes_to_a_whole_session() -> None:
    messages = decode_log((TRACES / "session-b.candump.log").read_text().splitlines())
    names = [n for n, _f in messages]
    assert names.count("BCL") == 1461 and names.count("CCS") == 1461
    assert names[0] == "CHM" and "BRM" in names and "BCP" in names and names[-1] == "CST"
    bcl = next(f for n, f in messages if n == "BCL")
    assert bcl == {"voltage": 405.6, "current": 200.0, "mode": 2}
    bcp = next(f for n, f in messages if n == "BCP")
    assert bcp["soc"] == 34.3 and bcp["max_current"] == 200.0
    bcs = next(f for n, f in messages if n == "BCS")
    assert bcs["soc"] == 34
    cml = next(f for n, f in messages if n == "CML")
    assert cml == {"max_voltage": 450.0, "max_current": 120.0}
