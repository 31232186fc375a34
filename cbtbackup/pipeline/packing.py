"""Small changed extents of a CBT incremental, packed into shared chunks of up to the chunk size.

A CBT incremental stores what the tracker reported, which is often scattered single tracking blocks
(64 KiB). Stored one chunk each, a month of daily incrementals leaves the newest backup's image spread
over five times as many objects as a full holds — each an open, a read and a request of its own for every
restore, and each compressed alone, which compresses text-like data worse than a megabyte does.

The repository format already lets several records share a chunk at different chunk offsets (a resolved
map is made of such records), so an incremental packs its short extents, in plan order, into one buffer
until the next would overflow the chunk size; every extent becomes a record at its offset in the pack.
Nothing that reads a repository changes. Extents of a whole chunk are never packed (the same aligned run
yields the same chunk as a full, which deduplicates), nor are extents of zeros (they are recorded, not
stored). Packing depends only on the extents and their bytes, so a run killed and started again over the
same changes builds the same packs and finds them stored.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Pack:
    """One chunk's worth of extents: their bytes end to end and where each starts in them."""

    data: bytearray = dataclasses.field(default_factory=bytearray)
    members: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # (seq, chunk offset, length)

    def __len__(self) -> int:
        return len(self.data)


class ExtentPacker:
    """Fills packs in the order extents are added; the reader thread's alone (not shared)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pack = Pack()

    def add(self, seq: int, data: bytes | memoryview) -> Pack | None:
        """Take the extent planned as ``seq``; return the pack it did not fit in, now complete, if any."""
        if len(data) > self.limit:
            raise ValueError(f"an extent of {len(data)} bytes is longer than a chunk ({self.limit})")
        done = None
        if len(self._pack) + len(data) > self.limit:
            done, self._pack = self._pack, Pack()
        self._pack.members.append((seq, len(self._pack.data), len(data)))
        self._pack.data += data  # a copy: a pack's extents come from different reads
        return done

    def flush(self) -> Pack | None:
        """The last, partly filled pack (None if empty)."""
        done, self._pack = self._pack, Pack()
        return done if done.members else None
