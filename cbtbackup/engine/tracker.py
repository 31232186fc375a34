"""Changed-block tracking with blksnap's numbering, persisted beside the volume.

Every write marks its tracking blocks in the *write map* with the ``active`` number before the data goes
to the volume, so a write that reached the volume is always marked, even if the process dies right after.
Taking a snapshot copies the write map to the *read map* (what backups read) and advances the numbers;
when ``active`` would reach 256 the write map is zeroed under a new generation, exactly as the module does.

When the map may have missed a write, a new generation starts (see docs/design.md, "What the engine can
see"):
- the tracker was not closed cleanly (process killed, machine crashed): nothing recorded the file as it was
  when tracking stopped, so a write made afterwards could not be told apart — new generation;
- closed cleanly, then the image's identity (inode, size, ctime) differs: something wrote it meanwhile;
- the state was written by an older version that recorded mtime, which ``touch -r`` can restore;
- the state cannot be read at all (truncated, overwritten, another format): it is made anew.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.engine.errors import TrackerStateError
from cbtbackup.engine.file_identity import Identity
from cbtbackup.engine.geometry import ceil_div, index_range, tracking_block_size
from cbtbackup.engine.tracker_state import TrackerHeader, TrackerStateFile, current_boot_id

STATE_FILE = "tracker"
OVERFLOW = 256


class ChangeTracker:
    """One volume's CBT state. Callers serialise calls (the volume holds its lock around them)."""

    def __init__(self, state: TrackerStateFile) -> None:
        self._state = state
        self.header = state.header

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, state_dir: Path, capacity: int, block_size: int, durable: bool, identity: Identity
    ) -> ChangeTracker:
        """A new state (a new generation, zeroed maps), recorded as cleanly closed over ``identity``."""
        header = TrackerHeader(
            generation=uuid.uuid4().bytes,
            block_size=block_size,
            block_count=ceil_div(capacity, block_size),
            capacity=capacity,
            durable=durable,
            clean=True,
            reset_reason="tracking started",
            image_ino=identity[0],
            image_size=identity[1],
            image_ctime_ns=identity[2],
        )
        return cls(TrackerStateFile.create(state_dir / STATE_FILE, header))

    @classmethod
    def load(cls, state_dir: Path, capacity: int, identity: Identity) -> ChangeTracker:
        """Open the persisted state and apply the crash rules; the tracker is then marked in use.

        State that cannot be read — truncated, overwritten, of another format — vouches for nothing: it is
        replaced by a new generation (the next incremental scans and says why), never an error."""
        try:
            state = TrackerStateFile(state_dir / STATE_FILE)
        except TrackerStateError:  # the reason is kept in 64 bytes of the header: short
            tracker = cls.create(state_dir, capacity, tracking_block_size(capacity), False, identity)
            tracker.header.reset_reason = "the tracker state was unreadable; tracking started again"
            tracker.header.clean = False
            tracker.header.boot_id = current_boot_id()
            tracker._state.commit(durable=True)
            return tracker
        h = state.header
        boot_id = current_boot_id()
        if h.capacity != capacity:
            state.close()
            tracker = cls.create(state_dir, capacity, h.block_size, h.durable, identity)
            tracker.header.reset_reason = f"device size changed ({h.capacity} -> {capacity})"
        else:
            tracker = cls(state)
            if not h.clean:
                across = "across a reboot" if h.boot_id != boot_id else "the process was killed"
                tracker.new_generation(f"the tracker was not closed cleanly ({across})")
            elif h.version < 2:
                tracker.new_generation("tracker state from an older version (it could not see every write)")
            elif identity != (h.image_ino, h.image_size, h.image_ctime_ns):
                tracker.new_generation("the image was written while it was not tracked")
        tracker.header.clean = False
        tracker.header.boot_id = boot_id
        tracker._state.commit(durable=True)
        return tracker

    def close(self, identity: Identity) -> None:
        """Record a clean shutdown; the caller has made the volume's data durable first."""
        self._state.sync()
        self.header.clean = True
        self.header.image_ino, self.header.image_size, self.header.image_ctime_ns = identity
        self._state.commit(durable=True)
        self._state.close()

    # -- tracking ------------------------------------------------------------------------------------------

    def mark(self, offset: int, length: int) -> None:
        """Mark the blocks a write of ``length`` bytes at ``offset`` touches; call before writing the data."""
        blocks = index_range(offset, length, self.header.block_size)
        if not blocks:
            return
        active = self.header.active
        wmap = self._state.write_map
        first, stop = blocks.start, blocks.stop
        if wmap[first] == active and wmap[stop - 1] == active and (
            stop - first <= 2 or wmap[first:stop] == bytes([active]) * (stop - first)
        ):
            return  # already marked in this period: the common case for repeated writes
        wmap[first:stop] = bytes([active]) * (stop - first)
        if self.header.durable:
            self._state.sync_write_map(first, stop - 1)

    def mark_dirty(self, ranges: list[tuple[int, int]]) -> None:
        """Mark byte ranges as changed in both maps, as blksnap's CBTDIRTY does."""
        for offset, length in ranges:
            blocks = index_range(offset, length, self.header.block_size)
            if not blocks:
                continue
            n = len(blocks)
            self._state.write_map[blocks.start: blocks.stop] = bytes([self.header.active]) * n
            self._state.read_map[blocks.start: blocks.stop] = bytes([self.header.previous]) * n
            if self.header.durable:
                self._state.sync_write_map(blocks.start, blocks.stop - 1)

    def switch(self) -> None:
        """The CBT half of taking a snapshot."""
        h = self.header
        h.previous = h.active
        h.active += 1
        if h.active == OVERFLOW:
            # blksnap keeps previous = 255 (the number reported for this snapshot) and leaves the read map
            # as it was; the header goes first so a crash before the zeroing can only over-report.
            h.active = 1
            h.generation = uuid.uuid4().bytes
            h.reset_reason = "changes number overflow"
            self._state.commit(durable=h.durable)
            self._state.write_map[:] = bytes(h.block_count)
        else:
            self._state.read_map[:] = self._state.write_map
            self._state.commit(durable=h.durable)
        if h.durable:
            self._state.sync()

    def new_generation(self, reason: str) -> None:
        """Forget everything: a new generation id and zeroed maps (header first, so a crash over-reports)."""
        h = self.header
        h.generation = uuid.uuid4().bytes
        h.previous, h.active = 0, 1
        h.reset_reason = reason
        self._state.commit(durable=True)
        self._state.write_map[:] = bytes(h.block_count)
        self._state.read_map[:] = bytes(h.block_count)
        self._state.sync()

    # -- reporting -----------------------------------------------------------------------------------------

    def info(self) -> CbtInfo:
        h = self.header
        return CbtInfo(h.capacity, h.block_size, h.block_count, uuid.UUID(bytes=h.generation), h.previous)

    def read_map(self) -> bytes:
        """The map as of the last snapshot taken (what a backup plans from)."""
        return bytes(self._state.read_map)

    def write_map(self) -> bytes:
        """The live map: blocks equal to ``active`` were written since the last snapshot."""
        return bytes(self._state.write_map)

    def flush(self) -> None:
        self._state.sync()
