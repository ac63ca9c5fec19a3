"""Verdicts on a GB/T 27930-2015 charger from a CAN trace, in the manner of GB/T 34658's
conformance cases: grouped by phase (link layer, handshake, identification and
configuration, charging, end, errors), each PASS, FAIL (with the first offending frame) or
N/A (the trace never reached what it judges).

Everything here is written from the fact sheet (../shared/reference/vehicle-protocols.md:
identifiers, priorities, lengths, periods, timeouts, scaling, J1939-21 transport) and the
limits sheet (safety-limits.md: regulation accuracy, ramp), not from the project's driver:
it decodes the bytes itself, reassembles the car's multi-packet messages itself, and judges
any charger's trace the same way (`pile-agent hil judge TRACE`, `pile-agent hil car`).
Tolerances the standard leaves to the test house are the harness's, and say so.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CHARGER, BMS = 0x56, 0xF4

# PF (the PGN's second byte) of each message, from the fact sheet's table 1.2.
CHM, BHM, CRM, BRM, BCP, CTS, CML, BRO, CRO = 0x26, 0x27, 0x01, 0x02, 0x06, 0x07, 0x08, \
    0x09, 0x0A
BCL, BCS, CCS, BSM, BST, CST, BSD, CSD, BEM, CEM = 0x10, 0x11, 0x12, 0x13, 0x19, 0x1A, \
    0x1C, 0x1D, 0x1E, 0x1F
TP_CM, TP_DT = 0xEC, 0xEB
NAMES = {CHM: "CHM", BHM: "BHM", CRM: "CRM", BRM: "BRM", BCP: "BCP", CTS: "CTS", CML: "CML",
         BRO: "BRO", CRO: "CRO", BCL: "BCL", BCS: "BCS", CCS: "CCS", BSM: "BSM", BST: "BST",
         CST: "CST", BSD: "BSD", CSD: "CSD", BEM: "BEM", CEM: "CEM", TP_CM: "TP.CM",
         TP_DT: "TP.DT"}
# The charger's messages: (priority, data lengths allowed). CCS: 8 bytes, "some tables say 6".
CHARGER_LAYOUT = {CHM: (6, {3}), CRM: (6, {8}), CTS: (6, {7}), CML: (6, {8}), CRO: (4, {1}),
                  CCS: (6, {6, 7, 8}), CST: (4, {4}), CSD: (6, {8}), CEM: (2, {4}),
                  TP_CM: (7, {8})}
PERIOD_S = {CHM: 0.25, CRM: 0.25, CML: 0.25, CRO: 0.25, CCS: 0.05}
# The harness's tolerance on a period (the standard names none in our sources): the median
# interval within 10 % of the period.
PERIOD_TOLERANCE = 0.10
DEFAULT_TIMEOUT_S = 5.0  # GB/T 27930-2015 §8: the default timeout
CCS_TIMEOUT_S = 1.0  # §8: the BMS gives up on CCS after 1 s
BCL_TIMEOUT_S = 1.0  # §8: the charger stops 1 s after the last BCL
STOP_REACTION_S = 0.5  # the harness's allowance for "stop immediately" after a timeout
CRM_AFTER_BHM_S = 30.0  # §1.4: the vehicle waits 30 s for CRM (the insulation check between)
READY_WAIT_S = 60.0  # §8: waiting for BRO/CRO 0xAA may take 60 s
STOP_CURRENT_A, STOP_CURRENT_S = 5.0, 10.0  # vehicle side: <= 5 A within 10 s of BST
STATISTICS_S = 10.0  # BSD/CSD expected within 10 s
# A DLC-8 29-bit frame takes 524 us at 250 kbit/s (safety-limits §4.1) and GB/T traffic is
# under 5 % of the bus, so a real clock moves milliseconds a frame on average; one that moves
# under 0.5 ms a frame is a logger stamping everything alike (both shared real traces).
UNTIMED_S_PER_FRAME = 0.0005
TP_ANSWER_S = 1.25  # J1939-21 T3: the originator waits 1250 ms for CTS / EndOfMsgAck
RAMP_DOWN_A_PER_S = 100.0  # IEC 61851-23 101.2.1.4: ramp down at >= 100 A/s ...
FOLLOW_S = 1.0  # ... within T_d = max(1 s, |dI| / slope) of a new request (limits sheet)


def accuracy_a(request_a: float) -> float:
    """IEC 61851-23 101.2.1.2.1: +-2.5 A below 50 A, +-5 % at or above."""
    return 2.5 if request_a < 50.0 else 0.05 * request_a


@dataclass(frozen=True)
class Frame:
    t: float
    can_id: int
    data: bytes

    @property
    def source(self) -> int:
        return self.can_id & 0xFF

    @property
    def dest(self) -> int:
        return (self.can_id >> 8) & 0xFF

    @property
    def pf(self) -> int:
        return (self.can_id >> 16) & 0xFF

    @property
    def priority(self) -> int:
        return (self.can_id >> 26) & 0x7

    def __str__(self) -> str:
        return f"{self.t:.3f} s {self.can_id:08X}#{self.data.hex().upper()} " \
               f"({NAMES.get(self.pf, f'PF {self.pf:02X}')})"


@dataclass(frozen=True)
class Case:
    id: str
    phase: str
    title: str
    source: str


@dataclass
class CaseVerdict:
    case: Case
    status: str  # PASS, FAIL, N/A
    detail: str
    frame: str = ""  # the first offending frame

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


CASES = (
    Case("DN.L01", "link layer", "the charger's frames are 29-bit PDU1 from 0x56 to 0xF4",
         "GB/T 27930-2015 §6 (J1939-21 PDU1; charger 0x56, BMS 0xF4)"),
    Case("DN.L02", "link layer", "each charger message has its table's priority and length",
         "GB/T 27930-2015 Table (CHM P6/3 ... CEM P2/4); CCS 8 bytes (6 in some tables)"),
    Case("DN.L03", "link layer", "the car's multi-packet messages are answered: CTS to each "
         "RTS, EndOfMsgAck after the last packet, within 1.25 s",
         "GB/T 27930-2015 §6.5, J1939-21 TP (T3 1250 ms)"),
    Case("DN.H01", "handshake", "CHM every 250 ms until the car answers",
         "GB/T 27930-2015 Table: CHM 250 ms (median within 10 %, harness tolerance)"),
    Case("DN.H02", "handshake", "CRM(0x00) follows BHM within 30 s (insulation check between)",
         "GB/T 27930-2015 §8 / Fig. A: the vehicle waits 30 s for CRM"),
    Case("DN.H03", "identification", "CRM(0xAA) only after a complete BRM, within 5 s of it",
         "GB/T 27930-2015 §8: BRM / CRM(0xAA) 5 s"),
    Case("DN.H04", "identification", "CRM every 250 ms", "GB/T 27930-2015 Table: CRM 250 ms"),
    Case("DN.C01", "configuration", "CTS and CML within 5 s of a complete BCP",
         "GB/T 27930-2015 §8: the default timeout 5 s"),
    Case("DN.C02", "configuration", "CRO(0xAA) only after BRO(0xAA), within 60 s of it",
         "GB/T 27930-2015 §8: BRO / CRO 0xAA may take 60 s"),
    Case("DN.C03", "configuration", "CML and CRO every 250 ms",
         "GB/T 27930-2015 Table: CML, CRO 250 ms"),
    Case("DN.E01", "charging", "CCS every 50 ms", "GB/T 27930-2015 Table: CCS 50 ms "
         "(median within 10 %, harness tolerance)"),
    Case("DN.E02", "charging", "CCS never silent 1 s while charging",
         "GB/T 27930-2015 §8: the BMS's CCS timeout 1 s"),
    Case("DN.E03", "charging", "output current not above the BCL demand (accuracy, ramp)",
         "GB/T 27930-2015 BCL; IEC 61851-23 101.2.1.2.1 (+-2.5 A / 5 %), 101.2.1.4 "
         "(>= 100 A/s down within 1 s)"),
    Case("DN.E04", "charging", "output current not above BCP's maximum charge current",
         "GB/T 27930-2015 BCP SPN 2817; IEC 61851-23 101.2.1.2.1 accuracy"),
    Case("DN.E05", "charging", "output voltage not above BCP's maximum total charge voltage "
         "and BHM's maximum", "GB/T 27930-2015 BCP SPN 2819, BHM SPN 2601; GB measurement "
         "accuracy 0.5 %"),
    Case("DN.E06", "charging", "output current not above the charger's own CML maximum",
         "GB/T 27930-2015 CML SPN 2826; IEC 61851-23 101.2.1.2.1 accuracy"),
    Case("DN.S01", "end", "CST follows the car's BST within 5 s",
         "GB/T 27930-2015 §8: the default timeout 5 s"),
    Case("DN.S02", "end", "the reported current is at most 5 A within 10 s of BST",
         "GB/T 27930-2015 stop sequence, vehicle side: <= 5 A 10 s after BST (fact "
         "sheet 1.4, [V])"),
    Case("DN.S03", "end", "CSD within 10 s of BSD", "GB/T 27930-2015: BSD/CSD within 10 s"),
    Case("DN.X01", "errors", "BCL silent 1 s while charging: the charger stops (CST or CEM)",
         "GB/T 27930-2015 §8: BCL 1 s, then stop immediately (0.5 s harness allowance)"),
)
CASE = {c.id: c for c in CASES}


@dataclass
class _Trace:
    frames: list[Frame]
    charger: list[Frame] = field(default_factory=list)
    bms: list[Frame] = field(default_factory=list)
    messages: list[tuple[Frame, int, bytes]] = field(default_factory=list)  # car's, whole

    def of(self, who: int, pf: int) -> list[Frame]:
        return [f for f in (self.charger if who == CHARGER else self.bms) if f.pf == pf]

    def car(self, pf: int) -> list[tuple[Frame, bytes]]:
        """The car's messages of one PGN, single frames and reassembled ones alike (the
        frame is the one that completed the message)."""
        single = [(f, f.data) for f in self.bms if f.pf == pf]
        return sorted(single + [(f, d) for f, p, d in self.messages if p == pf],
                      key=lambda x: x[0].t)


def _reassemble(trace: _Trace) -> list[str]:
    """The car's TP messages (RTS, the charger's CTS, DT packets, EndOfMsgAck): whole
    messages into trace.messages; what the charger failed to answer, as problems."""
    problems: list[str] = []
    pending: dict[str, object] | None = None
    for f in trace.frames:
        if f.source == BMS and f.pf == TP_CM and f.data[:1] == b"\x10" and len(f.data) >= 8:
            if pending is not None and pending["cts"] is None and not problems:
                problems.append(f"the car's RTS was never answered with CTS (it sent "
                                f"another): {pending['rts']}")
            pending = {"rts": f, "size": int.from_bytes(f.data[1:3], "little"),
                       "packets": f.data[3], "pgn": f.data[5:8], "data": bytearray(),
                       "cts": None, "last": None}
        elif pending is not None and f.source == CHARGER and f.pf == TP_CM and len(f.data) >= 8:
            if f.data[0] == 0x11 and pending["cts"] is None:
                pending["cts"] = f
            elif f.data[0] == 0x13:
                last = pending["last"]
                if isinstance(last, Frame) and f.t - last.t > TP_ANSWER_S:
                    problems.append(f"EndOfMsgAck {f.t - last.t:.2f} s after the last "
                                    f"packet: {f}")
                pending = None
        elif pending is not None and f.source == BMS and f.pf == TP_DT and f.data:
            buf = pending["data"]
            assert isinstance(buf, bytearray)
            buf.extend(f.data[1:8])
            if f.data[0] == pending["packets"]:
                pending["last"] = f
                pgn = pending["pgn"]
                assert isinstance(pgn, bytes)
                size = pending["size"]
                assert isinstance(size, int)
                trace.messages.append((f, pgn[1], bytes(buf[:size])))
        if pending is not None:
            rts, cts = pending["rts"], pending["cts"]
            assert isinstance(rts, Frame)
            if cts is None and f.t - rts.t > TP_ANSWER_S:
                problems.append(f"no CTS within {TP_ANSWER_S} s of the car's RTS: {rts}")
                pending = None
            elif isinstance(cts, Frame) and cts.t - rts.t > TP_ANSWER_S:
                problems.append(f"CTS {cts.t - rts.t:.2f} s after the car's RTS: {cts}")
                pending["cts"] = rts  # said once
    return problems


def _amps(raw: bytes) -> float:
    """0.1 A/bit, -400 A offset, as a magnitude (vendors differ on the sign: §4.5)."""
    return abs(int.from_bytes(raw[:2], "little") * 0.1 - 400.0)


def _volts(raw: bytes) -> float:
    return int.from_bytes(raw[:2], "little") * 0.1


def judge(frames: Iterable[tuple[float, int, bytes]]) -> list[CaseVerdict]:
    raw = sorted(frames, key=lambda f: f[0])
    t0 = raw[0][0] if raw else 0.0  # times from the trace's first frame
    trace = _Trace([Frame(t - t0, i, bytes(d)) for t, i, d in raw])
    trace.charger = [f for f in trace.frames if f.source == CHARGER]
    trace.bms = [f for f in trace.frames if f.source == BMS]
    tp_problems = _reassemble(trace)
    out = [
        _link_ids(trace), _link_layout(trace), _tp(trace, tp_problems),
        _period(trace, "DN.H01", CHM, until=_first(trace.of(BMS, BHM))),
        _crm_after_bhm(trace), _crm_recognised(trace),
        _period(trace, "DN.H04", CRM, until=_first(trace.of(CHARGER, CML))),
        _config_answer(trace), _ready(trace),
        _periods(trace, "DN.C03", (CML, CRO)),
        _period(trace, "DN.E01", CCS, until=_stop_time(trace)),
        _ccs_timeout(trace), _current_vs_demand(trace),
        *_against_limits(trace),
        _cst_after_bst(trace), _current_after_stop(trace), _csd_after_bsd(trace),
        _bcl_timeout(trace),
    ]
    if not _timed(trace):
        # A logger that stamps every frame alike (both shared real traces): order can be
        # judged, periods and deadlines cannot.
        untimed = "the trace's timestamps do not advance: no period or deadline to judge"
        for v in out:
            if v.case.id in ("DN.H01", "DN.H04", "DN.C03", "DN.E01", "DN.E02", "DN.X01"):
                v.status, v.detail, v.frame = "N/A", untimed, ""
            elif v.status != "N/A":
                v.detail += " (order only: the trace's timestamps do not advance)"
    return out


def _timed(trace: _Trace) -> bool:
    times = [f.t for f in trace.frames]
    if len(times) < 2:
        return False
    # A car or a charger stamps a task cycle's frames alike, so many equal neighbours do not
    # make a trace untimed; a clock that moves less than UNTIMED_S_PER_FRAME a frame does.
    return (times[-1] - times[0]) / (len(times) - 1) >= UNTIMED_S_PER_FRAME


def _verdict(case_id: str, ok: bool | None, detail: str, frame: Frame | None = None) -> \
        CaseVerdict:
    status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
    return CaseVerdict(CASE[case_id], status, detail, str(frame) if frame else "")


def _first(frames: Sequence[Frame]) -> float | None:
    return frames[0].t if frames else None


def _stop_time(trace: _Trace) -> float | None:
    stops = [f.t for f in trace.charger if f.pf == CST] + [f.t for f in trace.bms
                                                           if f.pf == BST]
    return min(stops, default=None)


def _link_ids(trace: _Trace) -> CaseVerdict:
    if not trace.charger:
        return _verdict("DN.L01", None, "no frame from the charger (source 0x56)")
    bad = next((f for f in trace.charger if f.can_id > 0x1FFFFFFF or f.dest != BMS
                or f.pf >= 0xF0), None)
    return _verdict("DN.L01", bad is None, f"{len(trace.charger)} frames" if bad is None
                    else "a frame not PDU1 to 0xF4", bad)


def _link_layout(trace: _Trace) -> CaseVerdict:
    judged = [f for f in trace.charger if f.pf in CHARGER_LAYOUT]
    if not judged:
        return _verdict("DN.L02", None, "no charger message of the table")
    for f in judged:
        priority, lengths = CHARGER_LAYOUT[f.pf]
        if f.priority != priority or len(f.data) not in lengths:
            return _verdict("DN.L02", False, f"{NAMES[f.pf]}: priority {f.priority} length "
                            f"{len(f.data)}, the table says {priority} / "
                            f"{'/'.join(map(str, sorted(lengths)))}", f)
    return _verdict("DN.L02", True, f"{len(judged)} frames as the table says")


def _tp(trace: _Trace, problems: list[str]) -> CaseVerdict:
    rts = [f for f in trace.bms if f.pf == TP_CM and f.data[:1] == b"\x10"]
    if not rts:
        return _verdict("DN.L03", None, "the car sent no multi-packet message")
    if problems:
        return _verdict("DN.L03", False, problems[0])
    return _verdict("DN.L03", True, f"{len(rts)} RTS, {len(trace.messages)} messages "
                    "reassembled and acknowledged")


def _median_period(times: list[float]) -> tuple[float, int] | None:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return (statistics.median(gaps), len(gaps)) if len(gaps) >= 4 else None


def _period(trace: _Trace, case_id: str, pf: int, until: float | None) -> CaseVerdict:
    frames = [f for f in trace.of(CHARGER, pf) if until is None or f.t <= until]
    period = PERIOD_S[pf]
    found = _median_period([f.t for f in frames])
    if found is None:
        return _verdict(case_id, None, f"fewer than 5 {NAMES[pf]} to time")
    median, n = found
    ok = abs(median - period) <= PERIOD_TOLERANCE * period
    return _verdict(case_id, ok, f"{NAMES[pf]}: median interval {median * 1000:.1f} ms over "
                    f"{n} intervals (period {period * 1000:.0f} ms)",
                    None if ok else frames[len(frames) // 2])


def _periods(trace: _Trace, case_id: str, pfs: tuple[int, ...]) -> CaseVerdict:
    verdicts = [_period(trace, case_id, pf, until=None) for pf in pfs]
    failed = next((v for v in verdicts if v.status == "FAIL"), None)
    if failed is not None:
        return failed
    judged = [v for v in verdicts if v.status == "PASS"]
    if not judged:
        return verdicts[0]
    return CaseVerdict(CASE[case_id], "PASS", "; ".join(v.detail for v in judged))


def _crm_after_bhm(trace: _Trace) -> CaseVerdict:
    bhm = trace.of(BMS, BHM)
    if not bhm:
        return _verdict("DN.H02", None, "the car never sent BHM")
    crm = [f for f in trace.of(CHARGER, CRM) if f.t >= bhm[0].t and f.data[:1] == b"\x00"]
    if not crm:
        return _verdict("DN.H02", False, "no CRM(0x00) after BHM", bhm[0])
    took = crm[0].t - bhm[0].t
    return _verdict("DN.H02", took <= CRM_AFTER_BHM_S, f"CRM(0x00) {took:.2f} s after BHM",
                    None if took <= CRM_AFTER_BHM_S else crm[0])


def _crm_recognised(trace: _Trace) -> CaseVerdict:
    brm = trace.car(BRM)
    recognised = [f for f in trace.of(CHARGER, CRM) if f.data[:1] == b"\xaa"]
    if recognised and (not brm or recognised[0].t < brm[0][0].t):
        return _verdict("DN.H03", False, "CRM(0xAA) before any complete BRM", recognised[0])
    if not brm:
        return _verdict("DN.H03", None, "the car's BRM never completed")
    if not recognised:
        later = next((f for f in trace.charger if f.t > brm[0][0].t and f.pf in
                      (CTS, CML, CRO, CCS)), None)
        return _verdict("DN.H03", False, "no CRM(0xAA) after the car's BRM"
                        + (f"; the charger went on to {NAMES[later.pf]}" if later else ""),
                        later)
    took = recognised[0].t - brm[0][0].t
    return _verdict("DN.H03", took <= DEFAULT_TIMEOUT_S, f"CRM(0xAA) {took:.2f} s after BRM",
                    None if took <= DEFAULT_TIMEOUT_S else recognised[0])


def _config_answer(trace: _Trace) -> CaseVerdict:
    bcp = trace.car(BCP)
    if not bcp:
        return _verdict("DN.C01", None, "the car's BCP never completed")
    at = bcp[0][0].t
    for pf in (CML, CTS):
        answer = next((f for f in trace.of(CHARGER, pf) if f.t >= at), None)
        if pf == CTS and answer is None:
            continue  # CTS is optional in practice (the fact sheet's CTS is 500 ms)
        if answer is None or answer.t - at > DEFAULT_TIMEOUT_S:
            return _verdict("DN.C01", False, f"no {NAMES[pf]} within 5 s of BCP", answer)
    cml = next(f for f in trace.of(CHARGER, CML) if f.t >= at)
    return _verdict("DN.C01", True, f"CML {cml.t - at:.2f} s after BCP")


def _ready(trace: _Trace) -> CaseVerdict:
    cro = [f for f in trace.of(CHARGER, CRO) if f.data[:1] == b"\xaa"]
    bro = [f for f in trace.of(BMS, BRO) if f.data[:1] == b"\xaa"]
    if cro and (not bro or cro[0].t < bro[0].t):
        return _verdict("DN.C02", False, "CRO(0xAA) before the car's BRO(0xAA)", cro[0])
    if not bro:
        return _verdict("DN.C02", None, "the car never sent BRO(0xAA)")
    if not cro:
        return _verdict("DN.C02", None if _stop_time(trace) is not None else False,
                        "no CRO(0xAA) after BRO(0xAA)")
    took = cro[0].t - bro[0].t
    return _verdict("DN.C02", took <= READY_WAIT_S, f"CRO(0xAA) {took:.2f} s after BRO(0xAA)",
                    None if took <= READY_WAIT_S else cro[0])


def _charging_window(trace: _Trace) -> tuple[float, float] | None:
    start = next((f.t for f in trace.of(CHARGER, CRO) if f.data[:1] == b"\xaa"), None)
    if start is None:
        return None
    return start, _stop_time(trace) or trace.frames[-1].t


def _ccs_timeout(trace: _Trace) -> CaseVerdict:
    window = _charging_window(trace)
    if window is None:
        return _verdict("DN.E02", None, "charging never began (no CRO(0xAA))")
    start, stop = window
    times = [start] + [f.t for f in trace.of(CHARGER, CCS) if start <= f.t <= stop] + [stop]
    worst = max((b - a, b) for a, b in itertools.pairwise(times))
    ok = worst[0] <= CCS_TIMEOUT_S
    frame = next((f for f in trace.of(CHARGER, CCS) if f.t >= worst[1]), None)
    return _verdict("DN.E02", ok, f"longest CCS silence {worst[0] * 1000:.0f} ms",
                    None if ok else frame)


def _current_vs_demand(trace: _Trace) -> CaseVerdict:
    bcl = [(f.t, _amps(f.data[2:4])) for f in trace.of(BMS, BCL) if len(f.data) >= 4]
    ccs = [f for f in trace.of(CHARGER, CCS) if len(f.data) >= 4]
    if not bcl or not ccs:
        return _verdict("DN.E03", None, "no BCL demand and CCS current to compare")
    worst, k, allowed_by = 0.0, 0, list[tuple[float, float]]()
    for f in ccs:
        while k < len(bcl) and bcl[k][0] <= f.t:
            allowed_by.append(bcl[k])
            k += 1
        if not allowed_by:
            continue
        allowed = _allowed_a(allowed_by, f.t)
        amps = _amps(f.data[2:4])
        over = amps - allowed - accuracy_a(allowed)
        if over > 0:
            return _verdict("DN.E03", False, f"CCS {amps:.1f} A against a demand allowing "
                            f"{allowed:.1f} A (+{accuracy_a(allowed):.1f} A accuracy)", f)
        worst = max(worst, amps - allowed)
    return _verdict("DN.E03", True, f"{len(ccs)} CCS; at most {worst:+.1f} A against the "
                    "demand")


def _allowed_a(demands: list[tuple[float, float]], t: float) -> float:
    """The current a charger may still deliver at t: the latest demand, or an earlier
    higher one it is still ramping down from (1 s, then >= 100 A/s)."""
    allowed = demands[-1][1]
    for k in range(len(demands) - 1, -1, -1):
        _at, amps = demands[k]
        ended = demands[k + 1][0] if k + 1 < len(demands) else t
        if t - ended > FOLLOW_S + amps / RAMP_DOWN_A_PER_S:
            break
        decay = max(t - ended - FOLLOW_S, 0.0) * RAMP_DOWN_A_PER_S
        allowed = max(allowed, amps - decay)
    return allowed


def _against_limits(trace: _Trace) -> list[CaseVerdict]:
    ccs = [f for f in trace.of(CHARGER, CCS) if len(f.data) >= 4]
    bcp = trace.car(BCP)
    bhm = trace.of(BMS, BHM)
    cml = trace.of(CHARGER, CML)
    out = []
    if not ccs or not bcp:
        out.append(_verdict("DN.E04", None, "no BCP and CCS to compare"))
        out.append(_verdict("DN.E05", None, "no BCP and CCS to compare"))
    else:
        params = bcp[0][1]
        max_a, max_v = _amps(params[2:4]), _volts(params[6:8])
        if bhm:
            max_v = min(max_v, _volts(bhm[0].data[0:2]))
        over_a = next((f for f in ccs if _amps(f.data[2:4]) > max_a + accuracy_a(max_a)), None)
        out.append(_verdict("DN.E04", over_a is None,
                            f"BCP maximum {max_a:.1f} A; CCS at most "
                            f"{max(_amps(f.data[2:4]) for f in ccs):.1f} A", over_a))
        over_v = next((f for f in ccs if _volts(f.data[0:2]) > max_v * 1.005), None)
        out.append(_verdict("DN.E05", over_v is None,
                            f"BCP/BHM maximum {max_v:.1f} V; CCS at most "
                            f"{max(_volts(f.data[0:2]) for f in ccs):.1f} V", over_v))
    if not ccs or not cml:
        out.append(_verdict("DN.E06", None, "no CML and CCS to compare"))
    else:
        # Vendors differ on which CML current field is the maximum (fact sheet §1.1).
        own = max(_amps(cml[0].data[4:6]), _amps(cml[0].data[6:8]))
        over = next((f for f in ccs if _amps(f.data[2:4]) > own + accuracy_a(own)), None)
        out.append(_verdict("DN.E06", over is None, f"CML maximum {own:.1f} A", over))
    return out


def _cst_after_bst(trace: _Trace) -> CaseVerdict:
    bst = trace.of(BMS, BST)
    if not bst:
        return _verdict("DN.S01", None, "the car never sent BST")
    cst = next((f for f in trace.of(CHARGER, CST) if f.t >= bst[0].t - DEFAULT_TIMEOUT_S),
               None)
    if cst is None or cst.t - bst[0].t > DEFAULT_TIMEOUT_S:
        return _verdict("DN.S01", False, "no CST within 5 s of BST", bst[0])
    return _verdict("DN.S01", True, f"CST {max(cst.t - bst[0].t, 0.0):.2f} s after BST")


def _current_after_stop(trace: _Trace) -> CaseVerdict:
    bst = trace.of(BMS, BST)
    if not bst:
        return _verdict("DN.S02", None, "the car never sent BST")
    # Strictly after BST: a CCS stamped with it was sent before the charger could know.
    after = [f for f in trace.of(CHARGER, CCS) if f.t > bst[0].t and len(f.data) >= 4]
    if not after:
        return _verdict("DN.S02", None, "no CCS after BST to read the current from")
    low = next((f for f in after if _amps(f.data[2:4]) <= STOP_CURRENT_A), None)
    if low is not None and low.t - bst[0].t <= STOP_CURRENT_S:
        return _verdict("DN.S02", True, f"<= 5 A {low.t - bst[0].t:.2f} s after BST")
    late = next((f for f in after if f.t - bst[0].t > STOP_CURRENT_S
                 and _amps(f.data[2:4]) > STOP_CURRENT_A), None)
    if late is not None:
        return _verdict("DN.S02", False, "the reported current was still above 5 A 10 s "
                        "after BST", late)
    return _verdict("DN.S02", None, "CCS stopped before it reported <= 5 A: the trace "
                    "cannot tell")


def _csd_after_bsd(trace: _Trace) -> CaseVerdict:
    bsd = trace.of(BMS, BSD)
    if not bsd:
        return _verdict("DN.S03", None, "the car never sent BSD")
    csd = next((f for f in trace.of(CHARGER, CSD) if f.t >= bsd[0].t - STATISTICS_S), None)
    if csd is None or csd.t - bsd[0].t > STATISTICS_S:
        return _verdict("DN.S03", False, "no CSD within 10 s of BSD", bsd[0])
    return _verdict("DN.S03", True, f"CSD {max(csd.t - bsd[0].t, 0.0):.2f} s after BSD")


def _bcl_timeout(trace: _Trace) -> CaseVerdict:
    window = _charging_window(trace)
    bcl = [f.t for f in trace.of(BMS, BCL)]
    if window is None or not bcl:
        return _verdict("DN.X01", None, "no charging with BCL")
    start, _stop = window
    # A silence the car explained (its BST) or that followed the charger's own stop is no
    # timeout: only a BCL gap of 1 s with neither before the timeout came is judged.
    stops = [f.t for f in trace.bms if f.pf == BST] + [f.t for f in trace.charger
                                                         if f.pf == CST]
    gap_from = next((a for a, b in zip(bcl, [*bcl[1:], trace.frames[-1].t], strict=False)
                     if a >= start and b - a > BCL_TIMEOUT_S
                     and not any(start <= x <= a + BCL_TIMEOUT_S - 0.05 for x in stops)),
                    None)
    if gap_from is None:
        return _verdict("DN.X01", None, "BCL was never silent for 1 s while charging")
    deadline = gap_from + BCL_TIMEOUT_S + STOP_REACTION_S
    stop_frame = next((f for f in trace.charger if f.t > gap_from + BCL_TIMEOUT_S - 0.05
                       and f.pf in (CST, CEM)), None)
    ok = stop_frame is not None and stop_frame.t <= deadline
    return _verdict("DN.X01", ok, f"BCL silent from {gap_from:.2f} s; "
                    + (f"{NAMES[stop_frame.pf]} {stop_frame.t - gap_from:.2f} s after the "
                       "last BCL" if stop_frame else "no CST or CEM"),
                    None if ok else stop_frame)
