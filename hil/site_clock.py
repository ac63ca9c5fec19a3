"""The site's local time of day, as scenario files and `--site-time` write it."""

from __future__ import annotations


def hhmm(site_s: float) -> str:
    """Seconds after midnight -> 'HH:MM:SS' (wrapping at midnight)."""
    s = round(site_s) % 86400
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def parse_hhmm(text: str) -> float | None:
    """'HH:MM' or 'HH:MM:SS' -> seconds after midnight (None: not a time of day)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        return None
    h, m, sec = (int(p) for p in (*parts, "0")[:3])
    return h * 3600.0 + m * 60.0 + sec if h < 24 and m < 60 and sec < 60 else None
