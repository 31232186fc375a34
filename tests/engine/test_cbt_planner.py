"""The rule that decides whether an incremental may trust the CBT map."""

from __future__ import annotations

import uuid

import pytest

from cbtbackup.engine import CbtCheckpoint, CbtInfo, changed_runs, plan_incremental

GEN = uuid.UUID(int=1)
STORED = CbtCheckpoint(GEN, 7, 65536, 1 << 30)


def info(gen: uuid.UUID = GEN, number: int = 8, block_size: int = 65536, capacity: int = 1 << 30) -> CbtInfo:
    return CbtInfo(capacity, block_size, capacity // block_size, gen, number)


def test_advancing_number_in_the_same_generation_uses_cbt() -> None:
    decision = plan_incremental(STORED, info())
    assert decision.use_cbt
    assert "7 -> 8" in decision.reason


@pytest.mark.parametrize(
    ("current", "why"),
    [
        (info(gen=uuid.UUID(int=2)), "generation changed"),
        (info(block_size=131072), "block size changed"),
        (info(capacity=2 << 30), "device size changed"),
        (info(number=7), "did not advance"),  # no snapshot since: nothing to compare
        (info(number=1), "did not advance"),  # the 255 -> 1 overflow report under one new generation
        (info(number=255, gen=uuid.UUID(int=3)), "generation changed"),  # the overflow snapshot itself
    ],
)
def test_every_reset_case_asks_for_a_scan(current: CbtInfo, why: str) -> None:
    decision = plan_incremental(STORED, current)
    assert not decision.use_cbt
    assert why in decision.reason


def test_no_checkpoint_asks_for_a_scan() -> None:
    assert not plan_incremental(None, info()).use_cbt


def test_changed_runs() -> None:
    cbt_map = bytes([0, 3, 3, 1, 5, 0, 9])
    assert list(changed_runs(cbt_map, 2)) == [(1, 2), (4, 1), (6, 1)]
    assert list(changed_runs(cbt_map, 0)) == [(1, 4), (6, 1)]
    assert list(changed_runs(cbt_map, 9)) == []
    assert list(changed_runs(b"", 0)) == []
    with pytest.raises(ValueError):
        list(changed_runs(cbt_map, 256))
