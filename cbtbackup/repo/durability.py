"""What a local store must make durable at its next ``sync``, and making it so at the least cost.

A commit needs the objects it depends on durable — the chunks before a manifest names them, the
manifest before the commit returns. ``syncfs`` does that in one call with one flush of the disk's cache,
but it flushes *everything* dirty on the file system, whoever wrote it: with 1 GiB of another program's
writes not yet on disk, a backup that changed nothing took 0.8 s instead of 0.15 s, most of it in the
two ``syncfs`` of its commit. So the store records what it changed — each file it put, each directory
whose entries changed (a rename or link into it, a removal, a directory made in it) — and ``sync``
fsyncs exactly those. Each fsync may be a disk cache flush of its own, so past :data:`FSYNC_LIMIT`
paths one ``syncfs`` is cheaper again; a large backup (which wrote more than that many chunks) pays it
once, and little is left for it to flush because chunks are written through.

Objects this process did not write but a commit will depend on (a chunk an interrupted run or another
backup stored, found by a lookup) are recorded too (:meth:`PendingSync.adopt`): until some ``sync``
covered them they may exist only in the page cache, and ``syncfs`` used to cover them by accident.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from cbtbackup.errors import StorageError

FSYNC_LIMIT = 64  # paths (files and directories) fsynced one by one; more, and one syncfs

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4


def write_back(fd: int, offset: int = 0, length: int = 0, *, wait: bool = False) -> bool:
    """Send a range of a file's written pages to the disk (``length`` 0: to the end) — data only, no
    metadata and no cache flush, so it never stands in for a sync. ``wait``: return once they are
    written. False where the file system cannot (the pages are then simply left to the kernel)."""
    flags = _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER if wait else _SFR_WRITE
    # ctypes releases the GIL for the call, so other threads go on working meanwhile.
    return bool(_libc.sync_file_range(fd, offset, length, flags) == 0)


class PendingSync:
    """Paths changed since the last sync, recorded from any thread."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._files: set[str] = set()
        self._dirs: set[str] = set()
        self._overflow = False  # too many to record: the next sync is a syncfs
        self._lock = threading.Lock()

    def wrote(self, path: Path, new_dirs: bool = False) -> None:
        """``path`` was created or replaced (its directory's entries changed); ``new_dirs``: directories
        on the way to it may have been made, so their parents changed too."""
        with self._lock:
            if self._overflow:
                return
            self._files.add(str(path))
            self._changed_dir(path.parent)
            if new_dirs:
                parent = path.parent
                while parent != self._root.parent and parent != parent.parent:
                    self._changed_dir(parent.parent)
                    parent = parent.parent
            self._check_size()

    def made_root(self) -> None:
        """The store's directory was just made, perhaps with parents: their entries changed."""
        with self._lock:
            for parent in self._root.absolute().parents:
                self._changed_dir(parent)
            self._check_size()

    def adopt(self, path: Path) -> None:
        """An object found, not written, that a commit will depend on: make it durable like one written."""
        self.wrote(path)

    def removed(self, path: Path) -> None:
        with self._lock:
            if not self._overflow:
                self._changed_dir(path.parent)
                self._check_size()

    def _changed_dir(self, directory: Path) -> None:
        self._dirs.add(str(directory))

    def _check_size(self) -> None:
        if len(self._files) + len(self._dirs) > FSYNC_LIMIT:
            self._overflow = True
            self._files.clear()
            self._dirs.clear()

    def sync(self) -> None:
        """Make durable everything recorded; on failure it stays recorded (as a syncfs) for the next try."""
        with self._lock:
            files, dirs, overflow = self._files, self._dirs, self._overflow
            self._files, self._dirs, self._overflow = set(), set(), False
        try:
            if overflow:
                _syncfs(self._root)
                return
            for path in sorted(files):
                _fsync(path)
            for path in sorted(dirs):  # each fsync makes one directory's entries durable: any order
                _fsync(path)
        except BaseException:
            with self._lock:
                self._overflow = True
            raise


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # removed since it was recorded: nothing of it to make durable
    except OSError as e:
        raise StorageError(f"cannot open {path} to make it durable: {e.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as e:
        raise StorageError(f"sync of {path} failed: {e.strerror}") from None
    finally:
        os.close(fd)


def _syncfs(root: Path) -> None:
    if not root.is_dir():
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StorageError(f"sync of {root} failed: {os.strerror(err)}")
    finally:
        os.close(fd)
