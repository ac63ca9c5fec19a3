"""Time series a long run can keep: a sample is stored only when it moved.

A scenario samples the plant every 10 ms; an evening is a million samples. `HeldSeries`
stores a sample when it left the tolerance band around the last one stored, and the
sample before it, so a held value and each step's edge are exact and a ramp is kept at
full resolution. Memory grows with what changed, not with time.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator


class HeldSeries:
    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.t = array("d")
        self.v = array("d")
        self._pending: tuple[float, float] | None = None

    def add(self, t: float, value: float) -> None:
        if not self.t:
            self._store(t, value)
            return
        if abs(value - self.v[-1]) <= self.tolerance:
            self._pending = (t, value)
            return
        if self._pending is not None:
            self._store(*self._pending)
        self._store(t, value)

    def _store(self, t: float, value: float) -> None:
        self.t.append(t)
        self.v.append(value)
        self._pending = None

    def close(self) -> None:
        """Keep the last sample (a held value's end)."""
        if self._pending is not None:
            self._store(*self._pending)

    def __len__(self) -> int:
        return len(self.t) + (self._pending is not None)

    def last(self) -> float:
        """The latest value added (IndexError when empty)."""
        return self._pending[1] if self._pending is not None else self.v[-1]

    def points(self) -> Iterator[tuple[float, float]]:
        yield from zip(self.t, self.v, strict=True)
        if self._pending is not None:
            yield self._pending

    def value_at(self, t: float) -> float | None:
        """The value held at time t (None before the first sample)."""
        last = None
        for ts, v in self.points():
            if ts > t:
                break
            last = v
        return last


class EventSeries:
    """A value that changes at moments (a setpoint, the binding limit): (t, value) on change."""

    def __init__(self) -> None:
        self.items: list[tuple[float, object]] = []

    def add(self, t: float, value: object) -> None:
        if not self.items or self.items[-1][1] != value:
            self.items.append((t, value))
