"""Trust, but verify the tracking: before a CBT incremental trusts that the blocks its provider reports
unchanged are unchanged, it reads a small random sample of them from the snapshot and compares them with the
previous backup's image.

A provider that under-reports (a write that went around it, a bug, a bitmap restored from an old copy) would
otherwise lose those writes without a word. One differing block is proof that the map lied: the backup then
reads everything (a scan incremental against the previous backup), so nothing is lost this time, and the
provider's tracking is distrusted (its checkpoint is not recorded, so the next incremental scans as well and a
new tracking generation starts).

The sample is drawn at the tracking block's granularity over the whole reported-unchanged area. Its size is a
budget of bytes read from the snapshot: by default 4 MiB or 0.1 % of the device, whichever is smaller. Each
sampled block is compared with the previous image through the scan's comparison (``scan_compare.py``): a
block inside a whole stored chunk is hashed with the chunk it lies in only after that chunk is fetched, so
the cost is at most one chunk fetch per sampled block (fewer where blocks share a chunk), and nothing is
written.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Callable

from cbtbackup.engine.providers.base import BlockReader
from cbtbackup.errors import UsageError
from cbtbackup.model.extent_map import ZERO_DIGEST
from cbtbackup.model.sizes import format_size, parse_size
from cbtbackup.pipeline.plan import Run
from cbtbackup.pipeline.scan_compare import PreviousImage

ChunkId = Callable[[bytes], bytes]  # the repository's chunk id of some bytes

DEFAULT_SIZE = 4 << 20
DEFAULT_FRACTION = 0.001


@dataclasses.dataclass(frozen=True)
class UnchangedSample:
    """How much of the reported-unchanged area to re-read: the smaller of a size and a fraction of the device
    (either may be left out; both left out, or a size of 0, turns the check off)."""

    size: int | None = DEFAULT_SIZE
    fraction: float | None = DEFAULT_FRACTION

    @classmethod
    def parse(cls, text: str) -> UnchangedSample:
        """``0`` (off), ``0.1%`` or a size (``4MiB``)."""
        value = text.strip()
        if value.endswith("%"):
            try:
                percent = float(value[:-1])
            except ValueError:
                raise UsageError(f"{text!r} is not a percentage (examples: 0.1%, 5%)") from None
            if not 0 <= percent <= 100:
                raise UsageError(f"{text!r}: a sample is from 0% to 100%")
            return cls(size=None, fraction=percent / 100)
        size = parse_size(value)
        if size < 0:
            raise UsageError(f"{text!r}: a sample is 0 bytes or more")
        return cls(size=size, fraction=None)

    def budget(self, device_size: int) -> int:
        limits = [limit for limit in (self.size, None if self.fraction is None else int(device_size * self.fraction))
                  if limit is not None]
        return min(limits) if limits else 0

    def __str__(self) -> str:
        if self.size is not None and self.fraction is not None:
            return f"{format_size(self.size)} or {self.fraction * 100:g}%, whichever is smaller"
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return format_size(self.size or 0)


@dataclasses.dataclass(frozen=True)
class TrackingCheck:
    """What the check read, and the first block it found changed although reported unchanged."""

    bytes_checked: int
    mismatch: tuple[int, int] | None = None  # (offset, length) of that block

    def describe(self, source: str) -> str:
        assert self.mismatch is not None
        offset, length = self.mismatch
        return (f"the change tracking of {source} under-reported: the block at offset {offset} "
                f"({format_size(length)}) differs from the previous backup but was reported unchanged")


def unchanged_runs(changed: list[Run], block_count: int) -> list[Run]:
    """The block runs not in ``changed`` (sorted, merged runs) up to ``block_count``."""
    out: list[Run] = []
    at = 0
    for first, count in changed:
        if first > at:
            out.append((at, min(first, block_count) - at))
        at = max(at, first + count)
        if at >= block_count:
            break
    if at < block_count:
        out.append((at, block_count - at))
    return [(f, n) for f, n in out if n > 0]


def draw_blocks(unchanged: list[Run], count: int, rng: random.Random) -> list[int]:
    """``count`` distinct block numbers drawn evenly from the runs, in ascending order."""
    starts, total = [], 0
    for _, n in unchanged:
        starts.append(total)
        total += n
    picks = rng.sample(range(total), min(count, total))
    blocks = []
    for pick in picks:
        i = bisect.bisect_right(starts, pick) - 1
        blocks.append(unchanged[i][0] + pick - starts[i])
    return sorted(blocks)


def check_unchanged(
    image: BlockReader,
    changed: list[Run],
    block_size: int,
    previous: PreviousImage,
    chunk_id: ChunkId,
    sample: UnchangedSample,
    rng: random.Random | None = None,
) -> TrackingCheck:
    """Re-read a sample of the blocks ``changed`` leaves out and compare them with ``previous``."""
    size = image.size
    budget = sample.budget(size)
    block_count = -(-size // block_size)
    if budget <= 0 or block_count == 0:
        return TrackingCheck(0)
    blocks = draw_blocks(unchanged_runs(changed, block_count), -(-budget // block_size), rng or random.Random())
    checked = 0
    for block in blocks:
        offset = block * block_size
        length = min(block_size, size - offset)
        data = image.read(offset, length)
        checked += length
        digest = ZERO_DIGEST if bytes(length) == data else chunk_id(data)
        if previous.changed_parts(offset, data, digest, previous.pieces(offset, length)):
            return TrackingCheck(checked, (offset, length))
    return TrackingCheck(checked)


# A host with a write-only key cannot read the previous backup's chunks to compare with. It draws the sample
# when it writes a backup instead, keeps the digests of those blocks (repo/host_state.py), and the next
# incremental checks those of them the tracking reports unchanged. The blocks are as random, and as unknown
# to anything that writes around the tracker, as those drawn at the check; the few that a later change
# touches are not replaced by others.
SampledBlock = tuple[int, int, bytes]  # (offset, length, chunk id of the bytes)


def block_digest(data: bytes, chunk_id: ChunkId) -> bytes:
    return ZERO_DIGEST if bytes(len(data)) == data else chunk_id(data)


def draw_sample(image: BlockReader, block_size: int, sample: UnchangedSample, chunk_id: ChunkId,
                rng: random.Random | None = None) -> tuple[SampledBlock, ...]:
    """Read a random sample of blocks of ``image`` (the budget of ``sample``) and keep their digests."""
    size = image.size
    budget = sample.budget(size)
    block_count = -(-size // block_size)
    if budget <= 0 or block_count == 0:
        return ()
    out = []
    for block in draw_blocks([(0, block_count)], -(-budget // block_size), rng or random.SystemRandom()):
        offset = block * block_size
        data = image.read(offset, min(block_size, size - offset))
        out.append((offset, len(data), block_digest(data, chunk_id)))
    return tuple(out)


def check_sampled(image: BlockReader, changed: list[Run], block_size: int, sampled: tuple[SampledBlock, ...],
                  chunk_id: ChunkId) -> TrackingCheck:
    """Compare the blocks sampled at the previous backup that ``changed`` leaves out with their digests then."""
    starts = [first * block_size for first, _ in changed]
    checked = 0
    for offset, length, digest in sampled:
        i = bisect.bisect_right(starts, offset + length - 1) - 1
        if i >= 0 and (changed[i][0] + changed[i][1]) * block_size > offset:
            continue  # reported changed: nothing to check
        if offset + length > image.size:
            continue
        data = image.read(offset, length)
        checked += length
        if block_digest(data, chunk_id) != digest:
            return TrackingCheck(checked, (offset, length))
    return TrackingCheck(checked)
