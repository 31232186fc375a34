"""cbtbackup's persistent dirty bitmaps in a QEMU block node, and when they can be trusted.

Each backup adds one bitmap at its point in time, named ``cbtbackup-<generation>-<number>``; the manifest's
CBT checkpoint is that (generation, number). Bitmap *k* holds every write after backup *k*'s point until a
later backup froze it, so the writes since backup *n* are the union of bitmaps *n*, *n*+1, … — a run that
was killed after adding its bitmap leaves one more link in that chain, never a gap. The chain is trusted
only when every link from *n* on is present, consistent, and the newest is still recording; otherwise the
next backup scans and starts a new generation, with one line saying why.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import Any

from cbtbackup.model.checkpoint import CbtCheckpoint

PREFIX = "cbtbackup-"
GRANULARITY = 64 << 10  # the tracking block of the CBT map the provider reports
MAX_NUMBER = 255  # the map holds one byte per block
_NAME = re.compile(rf"^{PREFIX}([0-9a-f-]{{36}})-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Bitmap:
    name: str
    generation: uuid.UUID
    number: int
    recording: bool
    inconsistent: bool
    busy: bool


def bitmap_name(generation: uuid.UUID, number: int) -> str:
    return f"{PREFIX}{generation}-{number}"


def ours(node: dict[str, Any]) -> list[Bitmap]:
    """cbtbackup's bitmaps on a node as query-named-block-nodes describes it; other tools' are left alone."""
    found = []
    for entry in node.get("dirty-bitmaps", []):
        match = _NAME.match(entry.get("name", ""))
        if match is None:
            continue
        try:
            generation = uuid.UUID(match.group(1))
        except ValueError:
            continue
        found.append(Bitmap(entry["name"], generation, int(match.group(2)), bool(entry.get("recording")),
                            bool(entry.get("inconsistent")), bool(entry.get("busy"))))
    return sorted(found, key=lambda b: (str(b.generation), b.number))


@dataclasses.dataclass(frozen=True)
class ChainPlan:
    generation: uuid.UUID
    number: int  # of the bitmap this backup adds
    since: list[Bitmap]  # whose union holds every write since the previous backup ([] for a new generation)
    reset_reason: str = ""


def plan_chain(bitmaps: list[Bitmap], since: CbtCheckpoint | None, node: str) -> ChainPlan:
    """Which bitmaps vouch for the writes since ``since`` (the previous backup's checkpoint), if they can."""
    if since is None:
        return ChainPlan(uuid.uuid4(), 1, [])
    first = bitmap_name(since.generation_id, since.changes_number)
    chain = [b for b in bitmaps if b.generation == since.generation_id and b.number >= since.changes_number]
    numbers = {b.number for b in chain}
    reason = ""
    if since.changes_number not in numbers:
        reason = f"the dirty bitmap {first} that tracks the writes since the previous backup is missing from {node}"
    else:
        newest = max(numbers)
        gap = [n for n in range(since.changes_number, newest + 1) if n not in numbers]
        bad = [b.name for b in chain if b.inconsistent]
        if gap:
            reason = f"the dirty bitmap {bitmap_name(since.generation_id, gap[0])} is missing from {node}"
        elif bad:
            reason = (f"the dirty bitmap {bad[0]} on {node} is inconsistent (QEMU stopped without closing the "
                      "image: a crash or a kill)")
        elif not next(b for b in chain if b.number == newest).recording:
            reason = f"the dirty bitmap {bitmap_name(since.generation_id, newest)} on {node} stopped recording"
        elif newest + 1 > MAX_NUMBER:
            reason = f"the bitmap chain reached {MAX_NUMBER} backups; a new one starts"
    if reason:
        return ChainPlan(uuid.uuid4(), 1, [], reason)
    return ChainPlan(since.generation_id, max(numbers) + 1, sorted(chain, key=lambda b: b.number))
