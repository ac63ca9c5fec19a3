"""Every timing constant of the session, with the clause it comes from.

One table for message periods (what we send, how often) and one for timeouts (what
we wait for, how long). `[V]` marks values taken from public secondary sources that
must be verified against the purchased standard (see ../shared/reference/).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    source: str


# Periods of the charger's messages: GB/T 27930-2015 §10 message definitions [V].
PERIODS: dict[str, Timing] = {
    "CHM": Timing(0.250, "GB/T 27930-2015 §10 (CHM definition): period 250 ms"),
    "CRM": Timing(0.250, "GB/T 27930-2015 §10 (CRM definition): period 250 ms"),
    "CTS": Timing(0.500, "GB/T 27930-2015 §10 (CTS definition): period 500 ms"),
    "CML": Timing(0.250, "GB/T 27930-2015 §10 (CML definition): period 250 ms"),
    "CRO": Timing(0.250, "GB/T 27930-2015 §10 (CRO definition): period 250 ms"),
    "CCS": Timing(0.050, "GB/T 27930-2015 §10 (CCS definition): period 50 ms"),
    "CST": Timing(0.010, "GB/T 27930-2015 §10 (CST definition): period 10 ms"),
    "CSD": Timing(0.250, "GB/T 27930-2015 §10 (CSD definition): period 250 ms"),
    "CEM": Timing(0.250, "GB/T 27930-2015 §10 (CEM definition): period 250 ms"),
    "CDP": Timing(0.250, "V2G extension (docs/V2G.md): sent with CML, at CML's 250 ms"),
}

# How long the charger waits for a BMS message: GB/T 27930-2015 §8 / Fig. A.6 [V].
TIMEOUTS: dict[str, Timing] = {
    "BHM": Timing(5.0, "GB/T 27930-2015 §8: default message timeout 5 s"),
    "BRM": Timing(5.0, "GB/T 27930-2015 §8, Fig. A.6: BRM within 5 s of CRM(0x00)"),
    "BCP": Timing(5.0, "GB/T 27930-2015 §8, Fig. A.6: BCP within 5 s of CRM(0xAA)"),
    "BRO": Timing(5.0, "GB/T 27930-2015 §8, Fig. A.6: first BRO within 5 s of CML"),
    "BRO_AA": Timing(60.0, "GB/T 27930-2015 §8, Fig. A.6: BRO(0xAA) within 60 s"),
    "BCL": Timing(1.0, "GB/T 27930-2015 §8, Fig. A.6: BCL silent 1 s -> stop at once"),
    "BCS": Timing(5.0, "GB/T 27930-2015 §8, Fig. A.6: BCS silent 5 s -> stop"),
    "BST_ACK": Timing(5.0, "GB/T 27930-2015 §8: default timeout 5 s for BST after CST"),
    "BSD": Timing(10.0, "GB/T 27930-2015 §8: BSD expected within 10 s of the stop"),
}

# Physical-sequence deadlines of the charger (GB/T 18487.1, IEC 61851-23, GB 44263).
INSULATION_CHECK_BUDGET = Timing(
    25.0, "GB/T 18487.1-2015 B.4.3 insulation check; some EVs give up after 30 s (EVerest dc.rst)"
)
BLEED_DOWN = Timing(1.0, "GB 44263-2024 §8.1.4 / GB/T 18487.1 B.5.2: output < 60 V within 1 s")
PRECHARGE_BUDGET = Timing(
    60.0, "GB/T 27930-2015 Fig. A.6: the BMS waits 60 s for CRO(0xAA) after BRO(0xAA)"
)
# B.4.4 gives the battery-voltage check no time. The car closes K5/K6 around its BRO(0xAA)
# (contactor operate time), and a module's reading lags by its update period: a reading out
# of the window is judged on the first sample after this settle, not the first one after BRO.
BATTERY_VOLTAGE_SETTLE = Timing(
    1.0, "project rule on GB/T 18487.1-2015 B.4.4: K5/K6 closing; module V/I update <= 200 ms"
)
STOP_CURRENT_BUDGET = Timing(
    10.0, "GB/T 27930-2015 §8 / GB/T 18487.1 B.4.6: current <= 5 A within 10 s of BST/CST"
)
# The safety controller's heartbeat trip (the agent was dead or hung) is re-armed by the
# living agent while nothing is at stake, at most this often (a loop that keeps hanging must
# not keep the relay toggling). Project rule; the board's contract: io_board_map.toml.
TRIP_REARM_RETRY = Timing(5.0, "project rule: one re-arm of a heartbeat trip per 5 s")
CONTACTOR_FEEDBACK = Timing(
    1.0, "GB/T 18487.1-2015 B.4.7.1: C1/C2 open within 100 ms; 1 s allows polled feedback"
)
MODULE_STATUS_STALE = Timing(
    1.0, "State Grid module spec: V/I update <= 200 ms; 5 missed polls = link lost"
)
FAULT_MESSAGE_DURATION = Timing(
    5.0, "GB/T 27930-2015 §8: peer's default timeout 5 s; CST/CEM sent that long after a fault"
)

# The gun's electronic lock (read from the I/O board; no timing of our own: clauses cited).
GUN_LOCK_BEFORE_CLOSING = (
    "GB/T 18487.1-2015 Annex B connection sequence: the lock engages before charging [V]"
)
GUN_LOCK_LOST = "IEC 61851-23 AA.3.4: lock failure while charging: < 5 A within 2 s, then open"

# Electrical thresholds used by the sequence (not time, but sourced the same way).
SAFE_VOLTAGE_V = 60.0  # GB 44263-2024 §8.1.4, IEC 61851-23 7.2.3.1: touch-safe below 60 V
CONTACTOR_OPEN_CURRENT_A = 5.0  # GB/T 18487.1-2015 B.4.6, IEC 61851-23 AA.3.5: open at <= 5 A
PRECHARGE_BELOW_MIN_V = 1.0  # GB/T 18487.1-2015 B.4.4: output 1-10 V below the battery
PRECHARGE_BELOW_MAX_V = 10.0
PRECHARGE_BELOW_TARGET_V = 5.0
# The window must hold, not be passed through: two samples 100 ms apart within 0.5 V
# (project rule on top of B.4.4; a module still rising would close with an inrush).
PRECHARGE_SETTLED_V = 0.5
# GB/T 18487.1-2015 B.4.3: measured at the test voltage; 95 % allows the module's voltage
# regulation tolerance (State Grid module spec: +-0.5 % typical, start-up overshoot 5 %).
INSULATION_AT_TEST_VOLTAGE = 0.95
BATTERY_VOLTAGE_TOLERANCE = 0.05  # GB/T 18487.1-2015 B.4.4: within +-5 % of BCP voltage
INSULATION_OK_OHM_PER_V = 500.0  # GB/T 18487.1-2015 B.5.1: > 500 ohm/V safe
INSULATION_FAULT_OHM_PER_V = 100.0  # GB/T 18487.1-2015 B.5.1: <= 100 ohm/V stop
PRECHARGE_CURRENT_A = 20.0  # GB/T 18487.1-2015 B.4.4 / E.5.3.4: inrush < 20 A peak
INSULATION_TEST_CURRENT_A = 2.0  # IEC 61851-23:2023 6.3.1.109 via EVerest: cable check <= 2 A
PAUSE_LIMIT = Timing(600.0, "GB/T 18487.1-2015 B.4.5: a BMS pause may last at most 10 min")
SAFETY_IO_STALE = Timing(
    1.0, "I/O board polled every 100 ms: 1 s of silence means E-stop and temperatures are "
    "unknown. The E-stop itself acts in hardware (GB/T 18487.1-2023 Table C.15: <= 70 ms)"
)
HEARTBEAT_PERIOD = Timing(
    0.1, "safety-controller contract (drivers/safety_io): trips after 500 ms without a change"
)
HEARTBEAT_TRIP = Timing(
    0.5, "safety-controller contract (drivers/safety_io/io_board_map.toml heartbeat_timeout, "
    "armed by the driver): K1/K2 open 500 ms after the last change of the heartbeat")
# A fault's shutdown that fresh module readings do not show on its way to <= 5 A is handed
# to the safety controller: the core stops its heartbeat, and the board opens K1/K2 and
# turns the output off on its own (a module that refuses or ignores every write cannot).
SAFE_STATE_HIGH_CURRENT_A = 200.0  # GB 44263-2024 §8.2.1: the 2 s / 3 s split
SAFE_STATE_DEADLINE = Timing(
    2.0, "GB 44263-2024 §8.2.1: <= 5 A and K1/K2 open within 2 s of a fault at <= 200 A")
SAFE_STATE_DEADLINE_HIGH = Timing(
    3.0, "GB 44263-2024 §8.2.1: within 3 s above 200 A (at >= 100 A/s)")
SAFE_STATE_GRACE = Timing(
    0.5, "the 0 A write and the polls that read its effect (module polled every 100 ms)")
# What the hand-over itself takes: the board's trip, a heartbeat period, one module poll
# (100 ms, drivers/power_module/owner.py POLL_PERIOD_S) to see it.
SAFE_STATE_HANDOVER_S = HEARTBEAT_TRIP.seconds + HEARTBEAT_PERIOD.seconds + 0.1

# ---- V2G: the project's extension of GB/T 27930-2015 (docs/V2G.md) and two-way energy flow ----
V2G_ANSWER = Timing(
    5.0, "GB/T 27930-2015 §8 default message timeout 5 s, applied to BDP after the first CDP "
    "(extension); a car that does not answer charges only"
)
V2G_STATUS = Timing(
    1.0, "extension rule modelled on GB/T 27930-2015 Fig. A.6's BCL 1 s: a BDS older than this "
    "withdraws consent, so discharge stops within the same budget as a silent demand"
)
# A direction change: ramp to <= 5 A (GB/T 18487.1-2023 Annex E normal stop: <= 5 A within
# 5 s), hold zero, then a new energy-transfer phase (Annex E.5.1: no seamless switch).
DIRECTION_CHANGE_BUDGET = Timing(
    5.0, "GB/T 18487.1-2023 Annex E (normal stop of a two-way transfer: <= 5 A within 5 s)"
)
DIRECTION_CHANGE_CURRENT_A = 5.0  # GB/T 18487.1-2023 Annex E / B.4.6: the <= 5 A point
DIRECTION_DWELL = Timing(
    0.5, "GB/T 18487.1-2023 E.5.1 forbids a seamless switch; zero held 0.5 s (two BCS/BDS "
    "periods) so the vehicle sees the old phase end before the new one starts"
)

# The plant held to what it was told (agent/core/plant_checks.py, I17, I18).
OVER_VOLTAGE_MARGIN_V = 15.0  # GB/T 18487.1-2015 B.4.7.6: V > EV max + 15 V -> open C1/C2 in 1 s
OVER_VOLTAGE_HOLD = Timing(
    0.4, "IEC 61851-23:2023 CC.3.4.2 (error OVP): over the limit > 400 ms -> error shutdown; "
    "GB/T 18487.1-2015 B.4.7.6: C1/C2 open within 1 s"
)
# GB 44263-2024 §8.2.8: I > 1.1 x I_req (I_req >= 30 A) or > I_req + 3 A (below) for 1 s.
OVER_CURRENT_RATIO = 1.1
OVER_CURRENT_SMALL_A = 3.0
OVER_CURRENT_SMALL_BELOW_A = 30.0
OVER_CURRENT_HOLD = Timing(
    1.0, "GB 44263-2024 §8.2.8: over the request for 1 s -> fault shutdown within 500 ms"
)
SETTLE_MIN = Timing(
    1.0, "IEC 61851-23 101.2.1.3: a new request settled within 1 s (|dI| <= 20 A), else "
    "within |dI| / 20 A/s"
)
SETTLE_SLOPE_A_PER_S = 20.0  # IEC 61851-23 101.2.1.3: dI_min >= 20 A/s

# The ledger's checkpoint of a running session (agent/core/metering.py; LedgerCheckpoint).
CHECKPOINT_PERIOD = Timing(
    10.0, "project rule (issue 24): a session killed at any moment loses at most 10 s or "
    "0.1 kWh of metered energy"
)
CHECKPOINT_ENERGY_KWH = 0.1
