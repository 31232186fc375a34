"""Snapshots over one or more tracked volumes, with blksnap's verbs: create, take, image, wait_event, destroy.

``take`` holds the write lock of every volume at once, switches their trackers and installs the COW
filters, so all volumes switch at one instant. One difference storage serves all volumes of a snapshot.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from cbtbackup.engine.cow import CowFilter
from cbtbackup.engine.diff_storage import DEFAULT_STEP, DiffStorage
from cbtbackup.engine.errors import (
    OutOfRangeError,
    SnapshotCorruptedError,
    SnapshotStateError,
)
from cbtbackup.engine.events import EventCode, EventQueue, SnapshotEvent
from cbtbackup.engine.geometry import cow_chunk_size
from cbtbackup.errors import UsageError

if TYPE_CHECKING:
    from cbtbackup.engine.volume import TrackedVolume


class SnapshotState(enum.Enum):
    CREATED = "created"
    TAKEN = "taken"
    DESTROYED = "destroyed"


class Snapshot:
    """A consistent point in time of several volumes; use :meth:`create`."""

    def __init__(self, volumes: list[TrackedVolume], storage_path: Path, limit: int, step: int) -> None:
        self.volumes = volumes
        self.state = SnapshotState.CREATED
        self.error_code = 0  # negative errno once corrupted, as blksnap's SNAPSHOTINFO reports it
        self.failure: str | None = None  # why, in words, when it is not the difference storage
        self._events = EventQueue()
        self._filters: dict[int, CowFilter] = {}
        self._lock = threading.Lock()
        self.storage = DiffStorage(storage_path, limit, step, on_low_space=self._low_space)
        reserved: list[TrackedVolume] = []
        try:
            for vol in volumes:
                vol._reserve(self)
                reserved.append(vol)
        except BaseException:
            for vol in reserved:
                vol._release(self)
            self.storage.close()
            raise

    @classmethod
    def create(
        cls,
        volumes: Sequence[TrackedVolume],
        diff_storage: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        *,
        step: int = DEFAULT_STEP,
    ) -> Snapshot:
        """Reserve the volumes and open the difference storage.

        ``diff_storage`` is a directory (a private unnamed file is made in it), a regular file or a block
        device; by default the first volume's state directory. ``limit`` caps the storage in bytes; by
        default the volumes' total size, which can never overflow. ``step`` is the growth increment.
        """
        vols = list(volumes)
        if not vols:
            raise UsageError("a snapshot needs at least one volume")
        if len({id(v) for v in vols}) != len(vols):
            raise UsageError("a volume is listed twice in one snapshot")
        if limit is None:
            limit = sum(v.size for v in vols)
        storage_path = Path(diff_storage) if diff_storage is not None else vols[0].state_dir
        return cls(vols, storage_path, limit, step)

    # -- the verbs -----------------------------------------------------------------------------------------

    def take(self) -> None:
        """Switch CBT and start COW on every volume at one instant."""
        if self.state is not SnapshotState.CREATED:
            raise SnapshotStateError(f"snapshot is {self.state.value}, it can be taken only once")
        ordered = sorted(self.volumes, key=lambda v: v.state_dir)
        locks = [v._write_lock for v in ordered]
        for lock in locks:
            lock.acquire()
        try:
            for vol in ordered:
                vol._before_take()
                vol._tracker.switch()
                cow = CowFilter(
                    vol._fd, vol.size, cow_chunk_size(vol.size), self.storage, self._corrupt,
                    lambda: self.error_code != 0,
                )
                self._filters[id(vol)] = cow
                vol._cow = cow
            self.state = SnapshotState.TAKEN
        finally:
            for lock in reversed(locks):
                lock.release()

    def image(self, volume: TrackedVolume) -> SnapshotImage:
        """The read-only image of ``volume`` as it was at the take."""
        if id(volume) not in {id(v) for v in self.volumes}:
            raise UsageError(f"{volume.path} is not in this snapshot")
        return SnapshotImage(self, volume)

    def wait_event(self, timeout: float | None = None) -> SnapshotEvent | None:
        """The next event (``no_space``, ``corrupted``), or None after ``timeout`` seconds."""
        return self._events.wait(timeout)

    def destroy(self) -> None:
        """Stop COW, release the volumes and free the difference storage. Safe to call twice."""
        with self._lock:
            if self.state is SnapshotState.DESTROYED:
                return
            self.state = SnapshotState.DESTROYED
        for vol in self.volumes:
            vol._release(self)
        self._filters.clear()
        self.storage.close()

    @property
    def corrupted(self) -> bool:
        return self.error_code != 0

    def copied_chunks(self, volume: TrackedVolume) -> int:
        cow = self._filters.get(id(volume))
        return cow.copied_chunks if cow else 0

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    # -- internals -----------------------------------------------------------------------------------------

    def _low_space(self, requested: int) -> None:
        self._events.put(EventCode.NO_SPACE, requested_bytes=requested)

    def _corrupt(self, err: int) -> None:
        """A chunk could not be preserved: the whole snapshot is lost (blksnap's -ENOSPC, or the errno)."""
        err = err or errno.EIO
        with self._lock:
            first = self.error_code == 0
            if first:
                self.error_code = -err
        if first:  # one corrupted event per device, as blksnap queues them
            for vol in self.volumes:
                self._events.put(EventCode.CORRUPTED, volume=str(vol.path), errno=err)

    def _lose(self, why: str) -> None:
        """Something bypassed the COW filter: the images may no longer show the take."""
        with self._lock:
            if self.failure is None:
                self.failure = why
        self._corrupt(errno.ESTALE)

    def _filter(self, volume: TrackedVolume) -> CowFilter:
        if self.state is SnapshotState.CREATED:
            raise SnapshotStateError("the snapshot is not taken yet")
        if self.state is SnapshotState.DESTROYED:
            raise SnapshotStateError("the snapshot was destroyed")
        self.check_intact()
        return self._filters[id(volume)]

    def check_intact(self) -> None:
        """Raise :class:`SnapshotCorruptedError` if the snapshot lost data."""
        if self.error_code and self.failure is not None:
            raise SnapshotCorruptedError(f"snapshot is no longer consistent: {self.failure}")
        if self.error_code:
            raise SnapshotCorruptedError(
                f"snapshot is corrupted ({os.strerror(-self.error_code)}): the difference storage "
                f"overflowed or failed; raise its limit (was {self.storage.limit} bytes) and try again"
            )


class SnapshotImage:
    """Reads of one volume's image. Thread-safe; fails once the snapshot is corrupted."""

    def __init__(self, snapshot: Snapshot, volume: TrackedVolume) -> None:
        self._snapshot = snapshot
        self._volume = volume
        self.size = volume.size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(f"read of {length} bytes at {offset} is outside the image ({self.size} bytes)")
        data = self._snapshot._filter(self._volume).read_image(offset, length)
        # A write that could not be preserved marks the snapshot corrupted before it lands.
        self._snapshot.check_intact()
        return data
