"""PT1000 resistance ⇄ temperature, IEC 60751 (Callendar-Van Dusen), R0 = 1000 ohm.

Above 0 °C the quadratic is solved exactly; below 0 °C the C term is included and the
inverse found by Newton's method (the curve is smooth and monotonic there). Outside
the plausible range the reading is not a temperature (open or shorted input): NaN.
"""

from __future__ import annotations

import math

R0 = 1000.0
A = 3.9083e-3
B = -5.775e-7
C = -4.183e-12  # only below 0 °C
MIN_OHM = 602.5  # about -100 °C: lower is a short or a wiring fault
MAX_OHM = 3905.0  # about 850 °C, the top of the IEC 60751 range: higher is an open input


def ohm_from_celsius(t: float) -> float:
    r = R0 * (1 + A * t + B * t * t)
    if t < 0:
        r += R0 * C * (t - 100) * t**3
    return r


def celsius_from_ohm(ohm: float) -> float:
    if not (math.isfinite(ohm) and MIN_OHM <= ohm <= MAX_OHM):
        return math.nan
    if ohm >= R0:
        return (-A + math.sqrt(A * A - 4 * B * (1 - ohm / R0))) / (2 * B)
    t = (ohm / R0 - 1) / A
    for _ in range(20):
        f = ohm_from_celsius(t) - ohm
        df = R0 * (A + 2 * B * t + C * (4 * t**3 - 300 * t**2))
        step = f / df
        t -= step
        if abs(step) < 1e-9:
            break
    return t
