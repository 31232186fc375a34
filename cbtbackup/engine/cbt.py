"""What changed-block tracking reports, and the rule for trusting it.

A backup stores a :class:`CbtCheckpoint` taken from the snapshot it read. The next backup may use the
tracker's map only if :func:`plan_incremental` says so; every case where the map could miss a change
(a new generation, a different block size or capacity, the 255-overflow report) asks for a scan instead.
Tracking may over-report; it may never under-report.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from typing import Any

from cbtbackup.model.checkpoint import CbtCheckpoint

__all__ = ["CbtCheckpoint", "CbtDecision", "CbtInfo", "changed_runs", "plan_incremental"]


@dataclasses.dataclass(frozen=True)
class CbtInfo:
    """The tracker's state as blksnap's CBTINFO reports it."""

    device_capacity: int
    block_size: int
    block_count: int
    generation_id: uuid.UUID
    changes_number: int

    def to_dict(self) -> dict[str, int | str]:
        """JSON-ready fields (the control socket and ``--json`` output use them)."""
        return {"device_capacity": self.device_capacity, "block_size": self.block_size,
                "block_count": self.block_count, "generation_id": str(self.generation_id),
                "changes_number": self.changes_number}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CbtInfo:
        return cls(int(d["device_capacity"]), int(d["block_size"]), int(d["block_count"]),
                   uuid.UUID(str(d["generation_id"])), int(d["changes_number"]))

    def checkpoint(self) -> CbtCheckpoint:
        return CbtCheckpoint(self.generation_id, self.changes_number, self.block_size, self.device_capacity)


@dataclasses.dataclass(frozen=True)
class CbtDecision:
    """Whether an incremental may trust the map; if not, why (one line for the user)."""

    use_cbt: bool
    reason: str


def plan_incremental(stored: CbtCheckpoint | None, current: CbtInfo) -> CbtDecision:
    """Decide whether the map of ``current`` shows every change since the backup that stored ``stored``."""
    if stored is None:
        return CbtDecision(False, "the previous backup has no CBT checkpoint")
    if stored.generation_id != current.generation_id:
        return CbtDecision(False, "the CBT generation changed (tracking was reset) since the previous backup")
    if stored.block_size != current.block_size:
        return CbtDecision(False, f"the CBT block size changed ({stored.block_size} -> {current.block_size})")
    if stored.device_capacity != current.device_capacity:
        return CbtDecision(
            False, f"the device size changed ({stored.device_capacity} -> {current.device_capacity})"
        )
    if current.changes_number <= stored.changes_number:
        # The counter wrapped (blksnap reports 255 and then 1 under one new generation) or went back.
        return CbtDecision(
            False,
            f"the CBT changes number did not advance ({stored.changes_number} -> {current.changes_number});"
            " the map was reset",
        )
    return CbtDecision(True, f"CBT changes {stored.changes_number} -> {current.changes_number}")


def changed_runs(cbt_map: bytes, since: int) -> Iterator[tuple[int, int]]:
    """Runs ``(first_block, block_count)`` of blocks whose map byte is greater than ``since``."""
    if not 0 <= since <= 255:
        raise ValueError(f"changes number {since} is not a byte")
    # Map every byte to 0 or 1 in C, then let the regex engine find the runs of ones.
    table = bytes(1 if value > since else 0 for value in range(256))
    flags = cbt_map.translate(table)
    for match in re.finditer(b"\x01+", flags):
        yield match.start(), match.end() - match.start()
