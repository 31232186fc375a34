"""A tracked volume: an image file or block device whose writes go through the tracker and COW filter.

The write path, under the volume's write lock: mark the tracking blocks, preserve the chunks a held
snapshot still needs, then write the data. Marking first is what makes the map never under-report, even
when the process is killed between the two.

Writes that do not come through here are invisible to the map, so the volume also keeps track of whether
it could have missed one since the last snapshot was taken (its *blind reason*); a snapshot taken while it
is blind starts a new CBT generation, which makes the next incremental a scan:
- an image file is watched with a write lease (:mod:`.lease`) for as long as it is open: another process
  opening it for writing breaks the lease before it can write, and the volume becomes blind (and a snapshot
  it holds is no longer consistent); while closed, the identity check of :mod:`.file_identity` stands in;
- a block device has no leases and no ctime that writes update: the engine sees its writes only while it
  holds the device open (exclusively), so every open starts a new generation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from cbtbackup.engine import lease
from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.engine.cow import CowFilter
from cbtbackup.engine.errors import (
    AlreadyTrackedError,
    NotTrackedError,
    OutOfRangeError,
    SnapshotBusyError,
)
from cbtbackup.engine.file_identity import image_identity, settled_identity
from cbtbackup.engine.geometry import check_block_size, tracking_block_size
from cbtbackup.engine.source_file import open_image_or_device
from cbtbackup.engine.tracker import STATE_FILE, ChangeTracker
from cbtbackup.engine.tracker_state import StateDirLock
from cbtbackup.errors import NotADirError, StorageError, UsageError, os_error

if TYPE_CHECKING:
    from cbtbackup.engine.snapshot import Snapshot

DEVICE_STATE_ROOT = Path("/var/lib/cbtbackup/devices")
BLOCK_DEVICE_REASON = "block device opened: writes while it was not held are unseen"


def default_state_dir(path: Path) -> Path:
    """Beside an image file (``disk.img`` -> ``disk.img.cbt``); under /var/lib/cbtbackup for a device."""
    if path.is_block_device():
        return DEVICE_STATE_ROOT / (str(path.resolve()).strip("/").replace("/", "_") + ".cbt")
    return path.with_name(path.name + ".cbt")


def is_tracked(path: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``path`` has tracker state (it may be open in another process)."""
    p = Path(path)
    sd = Path(state_dir) if state_dir is not None else default_state_dir(p)
    try:
        return stat.S_ISREG(os.stat(sd / STATE_FILE).st_mode)
    except OSError:  # absent, or a path too long to exist
        return False


class TrackedVolume:
    """An open tracked volume; get one from :meth:`track` or :meth:`open` and close it when done."""

    def __init__(self, path: Path, state_dir: Path, fd: int, lock: StateDirLock, tracker: ChangeTracker) -> None:
        self.path = path
        self.state_dir = state_dir
        self._fd = fd
        self._lock = lock
        self._tracker = tracker
        self._write_lock = threading.Lock()
        self._cow: CowFilter | None = None
        self._holder: Snapshot | None = None
        self.size = tracker.header.capacity
        self.closed = False
        self.is_file = stat.S_ISREG(os.fstat(fd).st_mode)
        self._blind: str | None = None  # why a write since the last take may have gone unseen

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def track(
        cls,
        path: str | os.PathLike[str],
        block_size: int | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        durable: bool = False,
        exclusive: bool = True,
    ) -> TrackedVolume:
        """Start tracking ``path`` (a new generation) and return it open.

        ``durable`` syncs each newly marked map page before the data it describes, so the map stays
        trustworthy even after a power loss, at the cost of a sync on the first write to each block.
        """
        p, sd, fd, st, capacity = _open_volume(path, state_dir, exclusive)
        with contextlib.ExitStack() as undo:  # undone only if something below fails
            undo.callback(os.close, fd)
            if capacity == 0:
                raise UsageError(f"{p} is empty: there is nothing to track")
            bs = check_block_size(block_size) if block_size is not None else tracking_block_size(capacity)
            try:
                sd.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                hint = " (choose a shorter one with --state-dir)" if e.errno == errno.ENAMETOOLONG else ""
                raise os_error(e, f"cannot create the state directory {sd}{hint}") from None
            lock = StateDirLock(sd)
            undo.callback(lock.release)
            if (sd / STATE_FILE).exists():
                raise AlreadyTrackedError(f"{p} is tracked already (state in {sd}); open it instead")
            ChangeTracker.create(sd, capacity, bs, durable, image_identity(st)).close(image_identity(st))
            tracker = ChangeTracker.load(sd, capacity, image_identity(st))
            undo.pop_all()
        vol = cls(p, sd, fd, lock, tracker)
        vol._watch()
        return vol

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None, exclusive: bool = True
    ) -> TrackedVolume:
        """Reopen a tracked volume, applying the crash rules (which may start a new generation).

        ``exclusive`` (the default) opens a block device with ``O_EXCL``; the blksnap simulator, which stands
        in for a filter under a mounted file system, does without.
        """
        p, sd, fd, st, capacity = _open_volume(path, state_dir, exclusive)
        with contextlib.ExitStack() as undo:  # undone only if something below fails
            undo.callback(os.close, fd)
            if not (sd / STATE_FILE).is_file():
                raise NotTrackedError(f"{p} is not tracked (no state in {sd}); start tracking it first")
            lock = StateDirLock(sd)
            undo.callback(lock.release)
            # The lease first, then the identity: a write between the two changes the identity.
            sink = _OpenSink()
            blind = _watch_fd(fd, sink) if stat.S_ISREG(st.st_mode) else None
            undo.callback(lease.unwatch, fd)
            tracker = ChangeTracker.load(sd, capacity, image_identity(os.fstat(fd)))
            if not stat.S_ISREG(st.st_mode):
                tracker.new_generation(BLOCK_DEVICE_REASON)
            undo.pop_all()
        vol = cls(p, sd, fd, lock, tracker)
        vol._blind = blind
        sink.attach(vol)
        return vol

    # -- data ----------------------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Current content of the volume."""
        self._check_range(offset, length)
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # a file with a hole at its end reads short; it is zeros
            data += bytes(length - len(data))
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write through the tracker and the COW filter of a held snapshot."""
        length = len(data)
        self._check_range(offset, length)
        with self._write_lock:
            self._tracker.mark(offset, length)
            if self._cow is not None:
                self._cow.before_write(offset, length)
            view = memoryview(data)
            done = 0
            while done < length:
                try:
                    done += os.pwrite(self._fd, view[done:], offset + done)
                except OSError as e:
                    raise StorageError(f"write to {self.path} failed: {e.strerror}") from e

    def flush(self) -> None:
        """Make the map and then the data durable (the map first: it may over-report, never under)."""
        with self._write_lock:
            self._tracker.flush()
            os.fsync(self._fd)

    # -- tracking ------------------------------------------------------------------------------------------

    def cbt_info(self) -> CbtInfo:
        return self._tracker.info()

    def cbt_map(self) -> bytes:
        """The CBT map as of the last snapshot taken: one byte per tracking block."""
        return self._tracker.read_map()

    def cbt_live_map(self) -> bytes:
        """The map as writes leave it; blocks equal to ``changes_number + 1`` changed since the last take."""
        return self._tracker.write_map()

    def blocks_changed_since_take(self) -> int:
        """How many tracking blocks were written since the last snapshot was taken."""
        return self._tracker.write_map().count(self._tracker.header.active)

    @property
    def reset_reason(self) -> str:
        """Why the current generation started."""
        return self._tracker.header.reset_reason

    def mark_dirty(self, ranges: list[tuple[int, int]]) -> None:
        """Mark byte ranges ``(offset, length)`` changed, in the current and the next backup's view."""
        for offset, length in ranges:
            self._check_range(offset, length)
        with self._write_lock:
            self._tracker.mark_dirty(ranges)

    def reset_tracking(self, reason: str) -> None:
        """Distrust the tracking: start a new generation, so the next backup reads everything and says why."""
        with self._write_lock:
            self._tracker.new_generation(reason)

    # -- lifetime ------------------------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot holding this volume, if any."""
        return self._holder

    def close(self) -> None:
        """Destroy a snapshot still holding the volume, make everything durable and record a clean close."""
        if self.closed:
            return
        if self._holder is not None:
            self._holder.destroy()
        with self._write_lock:
            os.fsync(self._fd)
            if self._blind is not None:  # the identity recorded below may already include a foreign write
                self._tracker.new_generation(self._blind)
            identity = settled_identity(self._fd)  # still under the lease: nobody else writes meanwhile
            lease.unwatch(self._fd)
            self._tracker.close(identity)
            os.close(self._fd)
            self._lock.release()
            self.closed = True

    def __enter__(self) -> TrackedVolume:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrackedVolume({str(self.path)!r}, size={self.size})"

    # -- for Snapshot --------------------------------------------------------------------------------------

    def _reserve(self, snapshot: Snapshot) -> None:
        with self._write_lock:
            if self.closed:
                raise UsageError(f"{self.path} is closed")
            if self._holder is not None:
                raise SnapshotBusyError(f"{self.path} is already in another snapshot")
            self._holder = snapshot

    def _before_take(self) -> None:
        """Under the write lock, just before the tracker switches: a blind map starts a new generation."""
        if self._blind is not None:
            self._tracker.new_generation(self._blind)
            self._blind = None
        if self.is_file and not lease.holds(self._fd):
            self._watch()

    def _watch(self) -> None:
        """Start watching an image file; if it cannot be watched, the volume is blind.

        Only a failure is recorded here: once the lease is held, a break may already have made the volume
        blind (in the watcher thread), and an assignment of "not blind" after it would lose that."""
        if self.is_file:
            reason = _watch_fd(self._fd, self._opened_elsewhere)
            if reason is not None:
                self._blind = reason

    def _opened_elsewhere(self, writer: bool) -> None:
        """Another process opened the image (the lease watcher calls this before that open returns)."""
        how = "for writing" if writer else "to read it"
        self._blind = f"another process opened the image {how}"
        holder = self._holder
        if writer and holder is not None:
            holder._lose(f"another process opened {self.path} for writing while the snapshot was held; "
                         "writes that bypass cbtbackup make the snapshot inconsistent")

    def _release(self, snapshot: Snapshot) -> None:
        with self._write_lock:
            if self._holder is snapshot:
                self._holder = None
                self._cow = None

    def _check_range(self, offset: int, length: int) -> None:
        if self.closed:
            raise UsageError(f"{self.path} is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(
                f"{length} bytes at offset {offset} reach past the end of {self.path} ({self.size} bytes)"
            )


class _OpenSink:
    """Holds a lease break that came while the volume was still being opened, until it exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._volume: TrackedVolume | None = None
        self._pending: bool | None = None

    def __call__(self, writer: bool) -> None:
        with self._lock:
            if self._volume is None:
                self._pending = writer
                return
            volume = self._volume
        volume._opened_elsewhere(writer)

    def attach(self, volume: TrackedVolume) -> None:
        with self._lock:
            self._volume, pending = volume, self._pending
        if pending is not None:
            volume._opened_elsewhere(pending)


def _watch_fd(fd: int, on_open: lease.OnOpen) -> str | None:
    try:
        lease.watch(fd, on_open)
    except lease.LeaseUnavailable as e:
        return f"writes around the engine cannot be seen: {e.reason}"[:64]
    return None


def _open_volume(
    path: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None, exclusive: bool
) -> tuple[Path, Path, int, os.stat_result, int]:
    p = Path(path)
    sd = Path(state_dir) if state_dir is not None else default_state_dir(p)
    try:
        if not stat.S_ISDIR(os.stat(sd).st_mode):
            raise NotADirError(f"the state directory {sd} is not a directory")
    except FileNotFoundError:
        pass  # made by track
    except OSError as e:
        hint = " (choose a shorter one with --state-dir)" if e.errno == errno.ENAMETOOLONG else ""
        raise os_error(e, f"cannot use the state directory {sd}{hint}") from None
    # A block device is opened exclusively: nothing can mount it, or hold it exclusively, meanwhile.
    fd, st, size = open_image_or_device(p, os.O_RDWR, exclusive=exclusive)
    return p, sd, fd, st, size
