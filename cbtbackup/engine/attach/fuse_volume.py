"""The FUSE file system that serves a tracked volume: ``volume`` (read-write, through the engine) and, while
a snapshot is held for a backup, ``snapshot-<id>`` (read-only, the snapshot image).

Every write reaches the engine before it returns — no writeback cache — so tracking and copy-on-write see
each one, and ``fsync`` makes the map and the data durable. The files are root's alone (mode 0600).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import time
from typing import Any

from cbtbackup.engine.attach.libfuse_stderr import without_false_alarm
from cbtbackup.engine.attach.write_gate import WriteGate
from cbtbackup.engine.snapshot import SnapshotImage
from cbtbackup.engine.volume import TrackedVolume
from cbtbackup.errors import CbtError

# mfusepy picks libfuse 2 when both are installed; libfuse 3 allows larger requests.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy

VOLUME = "/volume"
SOURCE_INFO = "/.cbtbackup-source"
SNAPSHOT_PREFIX = "/snapshot-"
MAX_REQUEST = 1 << 20


class VolumeFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, volume: TrackedVolume, source_info: bytes) -> None:
        self.volume = volume
        self._source_info = source_info
        self._images: dict[str, SnapshotImage] = {}
        self._lock = threading.Lock()
        self._now = time.time_ns()
        self.gate = WriteGate()  # a group take holds the writes here for a moment (write_gate.py)

    # -- snapshots exposed for backups ---------------------------------------------------------------------

    def expose(self, name: str, image: SnapshotImage) -> str:
        with self._lock:
            self._images[SNAPSHOT_PREFIX + name] = image
        return (SNAPSHOT_PREFIX + name)[1:]

    def hide(self, name: str) -> None:
        with self._lock:
            self._images.pop(SNAPSHOT_PREFIX + name, None)

    # -- file system operations ----------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        """Ask for 1 MiB requests (libfuse 3 and the kernel agree on max_pages from max_write)."""
        if conn_info is not None:
            conn_info.max_write = MAX_REQUEST
            conn_info.max_readahead = MAX_REQUEST

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        base = {"st_uid": 0, "st_gid": 0, "st_atime": self._now, "st_mtime": self._now, "st_ctime": self._now}
        if path == "/":
            return {**base, "st_mode": stat.S_IFDIR | 0o700, "st_nlink": 2}
        if path == VOLUME:
            return {**base, "st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": self.volume.size}
        if path == SOURCE_INFO:
            return {**base, "st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": len(self._source_info)}
        image = self._images.get(path)
        if image is not None:
            return {**base, "st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": image.size}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._lock:
            snaps = [p[1:] for p in self._images]
        return [".", "..", VOLUME[1:], SOURCE_INFO[1:], *snaps]

    def open(self, path: str, flags: int) -> int:
        if path == VOLUME:
            return 0
        if path == SOURCE_INFO or path in self._images:
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise mfusepy.FuseOSError(errno.EROFS)
            return 0
        raise mfusepy.FuseOSError(errno.ENOENT)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == VOLUME:
            reader: Any = self.volume
            total = self.volume.size
        elif path == SOURCE_INFO:
            return self._source_info[offset: offset + size]
        else:
            reader = self._images.get(path)
            if reader is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            total = reader.size
        size = max(0, min(size, total - offset))
        if size == 0:
            return b""
        try:
            data: bytes = reader.read(offset, size)
        except CbtError:
            raise mfusepy.FuseOSError(errno.EIO) from None
        return data

    def write(self, path: str, data: bytes | memoryview, offset: int, fh: int) -> int:
        if path != VOLUME:
            raise mfusepy.FuseOSError(errno.EROFS)
        if offset + len(data) > self.volume.size:
            raise mfusepy.FuseOSError(errno.ENOSPC)  # a block device does not grow
        self.gate.enter()
        try:
            self.volume.write(offset, data)
        except CbtError:
            raise mfusepy.FuseOSError(errno.EIO) from None
        finally:
            self.gate.leave()
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if path == VOLUME and length == self.volume.size:
            return 0
        raise mfusepy.FuseOSError(errno.EPERM)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if path == VOLUME:
            self.volume.flush()
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": self.volume.size // 4096, "f_namemax": 255}


class _ZeroCopyFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """Hands writes to the engine as a view of libfuse's buffer instead of a copy of it."""

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        view = memoryview(ctypes.cast(buf, ctypes.POINTER(ctypes.c_char * size)).contents).cast("B")
        try:
            fh = fip.contents.fh
            written: int = self.operations.write(None if path is None else path.decode(), view, offset, fh)
            return written
        finally:
            view.release()


def serve(fs: VolumeFS, mountdir: str) -> None:
    """Mount and serve until unmounted (blocks; run it in a thread)."""
    with without_false_alarm():
        _ZeroCopyFUSE(fs, mountdir, foreground=True, nothreads=False, fsname="cbtbackup", subtype="cbtbackup",
                      default_permissions=True)
