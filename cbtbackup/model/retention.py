"""Retention rules as restic users know them, applied to one chain's backups.

Each ``keep_*`` rule keeps the newest backup of each of the last N periods that have a backup (hours, days,
ISO weeks, months, years, in the given time zone); ``keep_last`` keeps the N newest; ``keep_within`` keeps
every backup not older than that many seconds before the newest backup. A backup kept by any rule stays,
and the reasons say which rules keep it. Plain data and one pure function: no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Sequence

from cbtbackup.errors import UsageError

Bucket = Callable[[datetime.datetime], tuple[int, ...]]

PERIODS: dict[str, Bucket] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float = 0.0  # seconds before the newest backup

    def __post_init__(self) -> None:
        counts = [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly]
        if any(n < 0 for n in counts) or self.within < 0:
            raise UsageError("keep counts and --keep-within cannot be negative")

    @property
    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
                    or self.within)


@dataclasses.dataclass(frozen=True)
class Candidate:
    id: str
    created: float  # seconds since the epoch
    order: str = ""  # ties on ``created`` are broken by this (the backup's stamp), larger is newer


@dataclasses.dataclass(frozen=True)
class Verdict:
    id: str
    keep: bool
    reasons: tuple[str, ...]  # the rules that keep it, e.g. ("last", "daily 2026-11-24")


def apply_policy(
    policy: RetentionPolicy, backups: Sequence[Candidate], tz: datetime.tzinfo | None = None
) -> list[Verdict]:
    """A verdict for every backup, newest first."""
    if policy.empty:
        raise UsageError("no retention rule given: say at least one --keep-* option (or name backups)")
    ordered = sorted(backups, key=lambda b: (b.created, b.order), reverse=True)
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}
    for i, b in enumerate(ordered):
        if i < policy.last:
            reasons[b.id].append("last")
    if policy.within and ordered:
        newest = ordered[0].created
        for b in ordered:
            if b.created >= newest - policy.within:
                reasons[b.id].append("within")
    for name, bucket in PERIODS.items():
        remaining = getattr(policy, name)
        last_bucket: tuple[int, ...] | None = None
        for b in ordered:
            if remaining <= 0:
                break
            when = datetime.datetime.fromtimestamp(b.created, tz)
            key = bucket(when)
            if key != last_bucket:  # the newest backup of a period not seen yet
                reasons[b.id].append(f"{name} {_label(name, when)}")
                last_bucket = key
                remaining -= 1
    return [Verdict(b.id, bool(reasons[b.id]), tuple(reasons[b.id])) for b in ordered]


def _label(period: str, when: datetime.datetime) -> str:
    if period == "hourly":
        return when.strftime("%Y-%m-%d %H:00")
    if period == "daily":
        return when.strftime("%Y-%m-%d")
    if period == "weekly":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "monthly":
        return when.strftime("%Y-%m")
    return when.strftime("%Y")
