"""Durations as people write them: ``30s``, ``5m``, ``2h`` for waits; ``30d``, ``1y6m``, ``2w`` for ages."""

from __future__ import annotations

import re

from cbtbackup.errors import UsageError

_WAIT_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# For ages (--keep-within), as restic reads them: m is a month. Months and years are counted as 30 and
# 365 days.
_AGE_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}
_PART = re.compile(r"(\d+)([a-z])")


def _parse(text: str, units: dict[str, int], what: str, examples: str) -> float:
    compact = text.strip().lower()
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact or any(u not in units for _, u in parts):
        raise UsageError(f"{text!r} is not {what} (examples: {examples})")
    return float(sum(int(n) * units[u] for n, u in parts))


def parse_wait(text: str) -> float:
    """A wait in seconds: ``90s``, ``5m``, ``1h30m`` (plain digits are seconds)."""
    if text.strip().isdigit():
        return float(text)
    return _parse(text, _WAIT_UNITS, "a duration", "30s, 5m, 1h")


def parse_age(text: str) -> float:
    """An age in seconds for retention: ``36h``, ``30d``, ``2w``, ``6m`` (months), ``1y``, ``1y6m``."""
    return _parse(text, _AGE_UNITS, "an age", "36h, 30d, 2w, 6m, 1y")


def parse_when(text: str) -> float:
    """A point in time: ``2026-11-20 13:00`` (local time), ``2026-11-20T13:00:05``, a trailing ``Z`` for
    UTC, or a date alone (its midnight); seconds since the epoch."""
    import datetime

    value = text.strip()
    utc = value.endswith(("Z", "z"))
    value = value.rstrip("Zz").replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            when = datetime.datetime.strptime(value, fmt)
        except ValueError:
            continue
        return (when.replace(tzinfo=datetime.UTC) if utc else when.astimezone()).timestamp()
    raise UsageError(f"{text!r} is not a time (examples: 2026-11-20 13:00, 2026-11-20T13:00:00Z, 2026-11-20)")


def format_when(when: float) -> str:
    """A UNIX time as people read it in a report: ``2026-12-04 21:45:09 UTC``."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def format_duration(seconds: float) -> str:
    """A span as people write it: ``30d``, ``12h``, ``90s`` (the largest unit that divides it)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
