"""Retention rules against a table of backup times (UTC), after the cases restic's policy tests cover."""

from __future__ import annotations

import datetime

import pytest

from cbtbackup.errors import UsageError
from cbtbackup.model.durations import parse_age, parse_wait
from cbtbackup.model.retention import Candidate, RetentionPolicy, apply_policy

UTC = datetime.UTC

TIMES = [  # (id, time): a messy but realistic history
    ("a", "2025-12-30 23:00"), ("b", "2025-12-31 22:00"),                        # two days of 2025
    ("c", "2026-01-01 01:00"), ("d", "2026-01-01 13:00"), ("e", "2026-01-01 13:30"),  # three on one day
    ("f", "2026-01-05 10:00"),                                                   # ISO week 2 of 2026
    ("g", "2026-02-14 09:00"), ("h", "2026-02-28 09:00"),                        # February
    ("i", "2026-03-01 00:00"), ("j", "2026-03-01 00:00"),                        # a tie in time
    ("k", "2026-03-02 08:00"), ("l", "2026-03-02 08:40"),                        # the same hour twice
]


def history() -> list[Candidate]:
    return [Candidate(i, datetime.datetime.strptime(t, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp(), i)
            for i, t in TIMES]


def kept(policy: RetentionPolicy) -> list[str]:
    return sorted(v.id for v in apply_policy(policy, history(), UTC) if v.keep)


@pytest.mark.parametrize(("policy", "expected"), [
    (RetentionPolicy(last=1), ["l"]),
    (RetentionPolicy(last=3), ["j", "k", "l"]),                       # ties broken by stamp: j is newer than i
    (RetentionPolicy(last=100), [i for i, _ in TIMES]),
    (RetentionPolicy(hourly=2), ["j", "l"]),                          # 08:40 wins its hour; then 00:00
    (RetentionPolicy(daily=3), ["h", "j", "l"]),                       # Mar 2, Mar 1, Feb 28
    (RetentionPolicy(daily=5), ["f", "g", "h", "j", "l"]),
    (RetentionPolicy(weekly=3), ["g", "j", "l"]),                      # ISO weeks 10, 9 (Feb 28-Mar 1), 7
    (RetentionPolicy(weekly=4), ["f", "g", "j", "l"]),
    (RetentionPolicy(weekly=9), ["e", "f", "g", "j", "l"]),            # Dec 30 2025 is in ISO week 1 of 2026
    (RetentionPolicy(monthly=3), ["f", "h", "l"]),
    (RetentionPolicy(yearly=5), ["b", "l"]),
    (RetentionPolicy(within=parse_age("2d")), ["h", "i", "j", "k", "l"]),  # from the newest backup, not now
    (RetentionPolicy(last=1, monthly=2, yearly=2), ["b", "h", "l"]),   # several rules: the union
    (RetentionPolicy(last=2, within=parse_age("1d")), ["k", "l"]),     # rules that overlap keep once
])
def test_policy_table(policy: RetentionPolicy, expected: list[str]) -> None:
    assert kept(policy) == expected


def test_reasons_name_every_rule_that_keeps_a_backup() -> None:
    verdicts = {v.id: v for v in apply_policy(RetentionPolicy(last=1, daily=1, monthly=1), history(), UTC)}
    assert verdicts["l"].reasons == ("last", "daily 2026-03-02", "monthly 2026-03")
    assert not verdicts["a"].keep and verdicts["a"].reasons == ()
    assert [v.id for v in apply_policy(RetentionPolicy(last=1), history(), UTC)][:2] == ["l", "k"]  # newest first


def test_an_empty_policy_is_refused() -> None:
    with pytest.raises(UsageError, match="no retention rule"):
        apply_policy(RetentionPolicy(), history(), UTC)
    with pytest.raises(UsageError):
        RetentionPolicy(daily=-1)


def test_durations() -> None:
    assert parse_age("30d") == 30 * 86400 and parse_age("1y6m") == (365 + 180) * 86400
    assert parse_age("36h") == 36 * 3600 and parse_age("2w") == 14 * 86400
    assert parse_wait("90") == 90 and parse_wait("5m") == 300 and parse_wait("1h30m") == 5400
    for bad in ("", "5", "5x", "d5", "1.5d"):
        with pytest.raises(UsageError):
            parse_age(bad)
    with pytest.raises(UsageError):
        parse_wait("soon")
