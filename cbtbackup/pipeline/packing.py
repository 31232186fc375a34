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

A scan incremental packs too (:class:`ScanPacker`): what it stores of a partly changed extent are runs of
tracking blocks, found by workers comparing extents in parallel. Each worker hands its runs over with the
extent's plan number; they are packed in plan order, as a CBT incremental's are, so the packs depend only
on the changes. A worker whose extent is far ahead of the oldest one still being compared waits while the
runs held for packing pass a bound in bytes, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable


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


StorePack = Callable[[Pack, list[tuple[int, int]]], None]  # a complete pack, and (extent, run) of each member
HELD_BYTES = 32 << 20  # runs held for packing, waiting for an older extent's comparison


class ScanPacker:
    """Packs a scan's changed runs in plan order, whatever order the workers finish in; shared by them."""

    def __init__(self, limit: int, store: StorePack) -> None:
        self._packer = ExtentPacker(limit)
        self._store = store
        self._members: list[tuple[int, int]] = []  # per run packed: (extent's plan number, run's index)
        self._next = 0  # the plan number whose runs go into the packs next
        self._held: dict[int, list[tuple[int, bytes]]] = {}
        self._held_bytes = 0
        self._aborted = False
        self._cond = threading.Condition()

    def offer(self, seq: int, runs: list[tuple[int, bytes]]) -> None:
        """The runs of extent ``seq`` to store, as (index among the extent's parts, bytes); every extent of
        the scan offers once, with no runs when nothing of it changed."""
        size = sum(len(data) for _, data in runs)
        with self._cond:
            self._cond.wait_for(lambda: self._aborted or seq == self._next or self._held_bytes + size <= HELD_BYTES)
            if self._aborted:
                return
            self._held[seq] = runs
            self._held_bytes += size
            done: list[tuple[Pack, list[tuple[int, int]]]] = []
            while self._next in self._held:
                ready = self._held.pop(self._next)
                for index, data in ready:
                    self._held_bytes -= len(data)
                    self._members.append((self._next, index))
                    full = self._packer.add(len(self._members) - 1, data)
                    if full is not None:
                        done.append((full, self._members))
                self._next += 1
            self._cond.notify_all()
        for pack, members in done:
            self._store(pack, members)

    def abort(self) -> None:
        """An extent failed: nobody waits for its runs any more (the scan fails as a whole)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def flush(self) -> None:
        """Store the last pack; call once every extent has offered."""
        last = self._packer.flush()
        if last is not None:
            self._store(last, self._members)
