"""The steps inside each session state: what must be measured before moving on.

GB/T 18487.1-2015 Annex B gives the physical sequence (insulation check with K1/K2
closed and bleed-down, precharge 1-10 V below the battery, ramp to <= 5 A before
opening, adhesion check after opening). Each state walks through named phases; a
phase only advances on a measurement taken after it began.
"""

from __future__ import annotations

from agent.core import timing as T
from agent.core.session_base import SessionBase
from agent.core.states import State, Trigger

# The windows of the sequence, each a function of its own so a test (and the mutation
# check) can hold every side of it.

def insulation_test_voltage(bhm_max_v: float, rated_v: float) -> float:
    """GB/T 18487.1-2015 B.4.3: test at min(BHM max voltage, charger rated voltage)."""
    return min(bhm_max_v, rated_v)


def battery_voltage_plausible(measured_v: float, reported_v: float) -> bool:
    """GB/T 18487.1-2015 B.4.4: the measured battery within +-5 % of BCP's, both sides."""
    return abs(measured_v - reported_v) <= T.BATTERY_VOLTAGE_TOLERANCE * reported_v


def precharge_gap_holds(battery_v: float, output_v: float) -> bool:
    """GB/T 18487.1-2015 B.4.4: the output 1-10 V *below* the battery (never above: the
    module would push current into the battery the moment K1/K2 close)."""
    return T.PRECHARGE_BELOW_MIN_V <= battery_v - output_v <= T.PRECHARGE_BELOW_MAX_V


class SequenceSteps(SessionBase):
    # ---- per state -------------------------------------------------------------

    def _advance_state(self) -> None:
        match self.state:
            case State.INSULATION_CHECK:
                self._step_insulation()
            case State.PRECHARGE:
                self._step_precharge()
            case State.CHARGING:
                self._step_charging()
            case State.STOPPING:
                self._step_stopping()
            case State.WELDING_CHECK:
                self._step_welding()

    def _step_insulation(self) -> None:
        d, st = self.data, self.plant.status
        if d.phase == "":
            bhm_v = d.bhm.max_charge_voltage_v if d.bhm else self.ratings.max_voltage_v
            d.insulation_voltage_v = insulation_test_voltage(bhm_v, self.ratings.max_voltage_v)
            if self._gun_lock_refuses():
                return
            self._command_bleeder(on=False)
            self._command_contactors(closed=True)
            self._set_phase("close")
            return
        if self._in_state_for() > T.INSULATION_CHECK_BUDGET.seconds:
            self._fault(f"insulation check not done in {T.INSULATION_CHECK_BUDGET.seconds} s")
            return
        if st is None or not self._fresh():
            return
        if d.phase == "close" and st.contactors_closed:
            self._set_phase("ramp")
        elif d.phase == "ramp" and \
                st.output_voltage_v >= T.INSULATION_AT_TEST_VOLTAGE * d.insulation_voltage_v:
            self._request_insulation_test(d.insulation_voltage_v)
            self._set_phase("measure")
        elif d.phase == "measure" and (ohm := self._insulation_result_ohm()) is not None:
            ohm_per_v = ohm / max(d.insulation_voltage_v, 1.0)
            if not ohm_per_v > T.INSULATION_FAULT_OHM_PER_V:
                self._fault(f"insulation fault: {ohm_per_v:.0f} ohm/V (GB/T 18487.1 B.5.1)",
                            code="insulation", latched=True)
                return
            d.insulation_warning = ohm_per_v <= T.INSULATION_OK_OHM_PER_V
            self._command_bleeder(on=True)
            self._set_phase("bleed")
        elif d.phase == "bleed":
            if max(st.output_voltage_v, st.gun_voltage_v) < T.SAFE_VOLTAGE_V:
                self._command_contactors(closed=False)
                self._command_bleeder(on=False)
                self._set_phase("open")
            elif self._in_phase_for() > T.BLEED_DOWN.seconds + T.CONTACTOR_FEEDBACK.seconds:
                self._fault("output did not bleed below 60 V after the insulation check")
        elif d.phase == "open" and not st.any_contactor_closed:
            self._fire(Trigger.INSULATION_PASSED, "insulation check passed"
                       + (" with a warning (100-500 ohm/V)" if d.insulation_warning else ""))

    def _step_precharge(self) -> None:
        d, st = self.data, self.plant.status
        if d.phase == "":
            self._set_phase("check")
            return
        if self._in_state_for() > T.PRECHARGE_BUDGET.seconds:
            self._fault(f"precharge not done in {T.PRECHARGE_BUDGET.seconds} s")
            return
        if st is None or d.bcp is None or not self._fresh():
            return
        if d.phase == "check":
            reported = d.bcp.battery_voltage_v
            measured = st.gun_voltage_v
            if not battery_voltage_plausible(measured, reported):
                if not self._fresh_since(d.phase_entered_at
                                         + T.BATTERY_VOLTAGE_SETTLE.seconds):
                    return  # K5/K6 still closing, or a lagging reading: a later sample
                self._fault(f"battery voltage {measured:.1f} V differs from the reported "
                            f"{reported:.1f} V by more than 5 % (GB/T 18487.1 B.4.4)")
                return
            if not self.ratings.min_voltage_v <= measured <= self.ratings.max_voltage_v:
                self._fault(f"battery voltage {measured:.1f} V outside the charger's range")
                return
            d.precharge_target_v = measured - T.PRECHARGE_BELOW_TARGET_V
            self._set_phase("match")
        elif d.phase == "match":
            # Close on a settled output, not on one passing through the window on its way
            # to a point above the battery: two samples in a row in the window, and within
            # PRECHARGE_SETTLED_V of each other.
            at = self.plant.sampled_at
            last = d.precharge_last
            if last is not None and at == last[0]:
                return  # the same sample again: the next poll decides
            d.precharge_last = (at, st.output_voltage_v) if at is not None else None
            reported = d.bcp.battery_voltage_v
            if not battery_voltage_plausible(st.gun_voltage_v, reported):
                # On the sample K1/K2 would close on, not only the first one (I4): a
                # battery reading that went wrong during the match is no battery to close on.
                self._fault(f"battery voltage {st.gun_voltage_v:.1f} V differs from the "
                            f"reported {reported:.1f} V by more than 5 % (GB/T 18487.1 B.4.4)")
                return
            if not precharge_gap_holds(st.gun_voltage_v, st.output_voltage_v):
                d.precharge_last = None
            elif last is not None and abs(st.output_voltage_v - last[1]) <= \
                    T.PRECHARGE_SETTLED_V:
                if self._gun_lock_refuses():
                    return
                self._command_contactors(closed=True)
                self._set_phase("close")
        elif d.phase == "close" and st.contactors_closed:
            # A contactor that does not close is the feedback watchdog's (session.py).
            self._fire(Trigger.PRECHARGE_COMPLETE, "precharge done, K1/K2 closed")

    def _step_charging(self) -> None:
        d = self.data
        if d.charging_started_at is None:
            d.charging_started_at = self.now
        if d.paused_since is not None and self.now - d.paused_since > T.PAUSE_LIMIT.seconds:
            self._stop_for(f"BMS paused longer than {T.PAUSE_LIMIT.seconds:.0f} s")

    def _step_stopping(self) -> None:
        d, st = self.data, self.plant.status
        if d.phase == "":
            self._set_phase("ramp")
            return
        if self._in_state_for() > T.STOP_CURRENT_BUDGET.seconds:
            self._fault("current did not fall to 5 A in time", emergency=True)
            return
        if st is None or not self._fresh():
            return
        if d.phase == "ramp" and abs(st.output_current_a) <= T.CONTACTOR_OPEN_CURRENT_A:
            self._command_contactors(closed=False)
            self._set_phase("open")
        elif d.phase == "open" and not st.any_contactor_closed:
            # One that stays closed is welded: the feedback watchdog's (session.py).
            self._fire(Trigger.CURRENT_SETTLED, "current <= 5 A and K1/K2 open")

    def _step_welding(self) -> None:
        d, st = self.data, self.plant.status
        if d.phase == "":
            self._command_bleeder(on=True)
            self._set_phase("bleed")
            return
        if d.phase == "bleed":
            if st is not None and self._fresh() and not st.any_contactor_closed \
                    and st.output_voltage_v < T.SAFE_VOLTAGE_V:
                self._command_bleeder(on=False)
                self._set_phase("statistics")
            elif self._in_phase_for() > T.BLEED_DOWN.seconds + T.CONTACTOR_FEEDBACK.seconds:
                self._fault("module side stays above 60 V with K1/K2 open: welded contactor",
                            code="welding", emergency=True, latched=True)
        elif d.phase == "statistics":
            if d.bsd is not None:
                self._fire(Trigger.WELDING_CHECK_PASSED, "no adhesion; BSD received")
            elif self._in_state_for() > T.TIMEOUTS["BSD"].seconds:
                d.outcome_reason = "BSD not received"
                self._fire(Trigger.WELDING_CHECK_PASSED, "no adhesion; BSD timeout")

    def _advance_fault(self) -> None:
        d, st = self.data, self.plant.status
        since = d.fault_at if d.fault_at is not None else self.now
        if self.act.contactors_closed:
            low = st is not None and self._fresh_since(since) and \
                abs(st.output_current_a) <= T.CONTACTOR_OPEN_CURRENT_A
            if low or self.now - since > T.STOP_CURRENT_BUDGET.seconds:
                self._command_contactors(closed=False)
        elif st is not None:
            self._command_bleeder(on=max(st.output_voltage_v, 0.0) >= T.SAFE_VOLTAGE_V
                                  and self.now - since <= T.BLEED_DOWN.seconds * 10)
