"""cbtbackup's persistent dirty bitmaps in a QEMU block node, and when they can be trusted.

Each backup adds one bitmap at its point in time, named ``cbtbackup-<generation>-<number>``; the manifest's
CBT checkpoint is that (generation, number). Bitmap *k* holds every write after backup *k*'s point until a
later backup froze it, so the writes since backup *n* are the union of bitmaps *n*, *n*+1, … — a run that
was killed after adding its bitmap leaves one more link in that chain, never a gap. The chain is trusted
only when every link from *n* on is present, consistent, and the newest is still recording; otherwise the
next backup scans and starts a new generation, with one line saying why.

A backup taken with ``--keep-base`` also adds ``cbtbackup-base-<generation>-<number>``, which never stops
recording: it holds every write since that backup, which is what a differential against it reads (through
a frozen copy, ``cbtbackup-copy-…``, made in the take's transaction, since an export publishes only frozen
bitmaps). One base per node: a newer ``--keep-base`` backup replaces it. Its cost is one more bitmap in the
image (a bit per 64 KiB: 2 KiB of qcow2 metadata per GiB) and one more bit set per write.
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
BASE_PREFIX = f"{PREFIX}base-"
COPY_PREFIX = f"{PREFIX}copy-"  # a frozen copy of a base for one backup's export; never persistent
_NAME = re.compile(rf"^{PREFIX}([0-9a-f-]{{36}})-(\d+)$")
_BASE_NAME = re.compile(rf"^{BASE_PREFIX}([0-9a-f-]{{36}})-(\d+)$")


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


def base_name(generation: uuid.UUID, number: int) -> str:
    return f"{BASE_PREFIX}{generation}-{number}"


def copy_name(generation: uuid.UUID, number: int) -> str:
    return f"{COPY_PREFIX}{generation}-{number}"


def copies(node: dict[str, Any]) -> list[str]:
    """Frozen copies on a node: a killed run's, in a VM that kept running."""
    return [e["name"] for e in node.get("dirty-bitmaps", []) if str(e.get("name", "")).startswith(COPY_PREFIX)]


def ours(node: dict[str, Any]) -> list[Bitmap]:
    """cbtbackup's bitmaps on a node as query-named-block-nodes describes it; other tools' are left alone."""
    return _matching(node, _NAME)


def bases(node: dict[str, Any]) -> list[Bitmap]:
    """cbtbackup's base bitmaps (``--keep-base``) on a node."""
    return _matching(node, _BASE_NAME)


def _matching(node: dict[str, Any], pattern: re.Pattern[str]) -> list[Bitmap]:
    found = []
    for entry in node.get("dirty-bitmaps", []):
        match = pattern.match(entry.get("name", ""))
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
    base: Bitmap | None = None  # instead of ``since``: the base that recorded every write since the backup


def plan_chain(bitmaps: list[Bitmap], since: CbtCheckpoint | None, node: str,
               kept: list[Bitmap] | None = None) -> ChainPlan:
    """Which bitmaps vouch for the writes since ``since`` (the previous backup's checkpoint, or a
    differential's base), if they can: the base bitmap of that backup among ``kept``, else the chain."""
    if since is None:
        return ChainPlan(uuid.uuid4(), 1, [])
    base = next((b for b in kept or [] if (b.generation, b.number) == (since.generation_id, since.changes_number)),
                None)
    if base is not None and base.recording and not base.inconsistent:
        number = max(b.number for b in [*bitmaps, *(kept or [])] if b.generation == since.generation_id) + 1
        if number <= MAX_NUMBER:
            return ChainPlan(since.generation_id, number, [], base=base)
        return ChainPlan(uuid.uuid4(), 1, [], f"the bitmap chain reached {MAX_NUMBER} backups; a new one starts")
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
