"""Difference storage: where the old content of chunks goes while a snapshot is held.

Given a directory, the storage is an unnamed ``O_TMPFILE`` file with mode 0600: it never appears in the
directory, nobody else can open it, and the kernel frees it when the last descriptor closes — at destroy,
or when the process dies. Given a regular file, that file is used and truncated to nothing at destroy.
Given a block device, its size is the most it can hold.

The file grows with ``fallocate`` in steps up to a byte limit. When less than half a step is free and the
limit allows no more growth, a ``no_space`` event is raised once; a chunk that no longer fits is refused
and the owner marks its snapshot corrupted.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from cbtbackup.errors import StorageError, UsageError

DEFAULT_STEP = 1 << 30
_NO_COPY_RANGE = (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)


class DiffStorageFull(Exception):
    """No room for another chunk: the snapshot that asked becomes corrupted."""


class DiffStorage:
    """An append-only store of chunks. Thread-safe: allocation is locked, I/O goes to disjoint ranges."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        limit: int,
        step: int = DEFAULT_STEP,
        on_low_space: Callable[[int], None] | None = None,
    ) -> None:
        if limit <= 0:
            raise UsageError(f"difference storage limit must be positive, not {limit}")
        self.path = Path(path)
        self._step = max(1, min(step, limit))
        self._on_low_space = on_low_space
        self._lock = threading.Lock()
        self._used = 0
        self._warned = False
        self._truncate_on_close = False
        self.fd = self._open(self.path)
        st = os.fstat(self.fd)
        if stat.S_ISBLK(st.st_mode):
            device_size = os.lseek(self.fd, 0, os.SEEK_END)
            self.limit = min(limit, device_size)
            self._allocated = self.limit
            self._growable = False
        else:
            self.limit = limit
            self._allocated = 0
            self._growable = True

    def _open(self, path: Path) -> int:
        try:
            if path.is_dir():
                return os.open(path, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            if path.exists() and not (path.is_file() or path.is_block_device()):
                raise UsageError(f"difference storage {path} is not a directory, a file or a block device")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, 0)
                self._truncate_on_close = True
            return fd
        except FileNotFoundError:
            raise UsageError(f"difference storage {path}: no such directory") from None
        except OSError as e:
            raise StorageError(f"difference storage {path}: {e.strerror}") from e

    @property
    def used(self) -> int:
        return self._used

    @property
    def allocated(self) -> int:
        return self._allocated

    def allocate(self, size: int) -> int:
        """Reserve ``size`` bytes and return their offset; raise :class:`DiffStorageFull` if they don't fit."""
        with self._lock:
            if self._used + size > self._allocated:
                self._grow(self._used + size)
            offset = self._used
            self._used += size
            if (
                not self._warned
                and self._allocated - self._used < self._step // 2
                and (not self._growable or self._allocated >= self.limit)
            ):
                self._warned = True
                if self._on_low_space is not None:
                    self._on_low_space(self._step)
            return offset

    def _grow(self, needed: int) -> None:
        if not self._growable or needed > self.limit:
            raise DiffStorageFull(f"difference storage limit of {self.limit} bytes reached")
        new_size = min(self.limit, max(needed, self._allocated + self._step))
        try:
            os.posix_fallocate(self.fd, self._allocated, new_size - self._allocated)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiffStorageFull(f"difference storage cannot grow: {e.strerror}") from e
            raise StorageError(f"difference storage {self.path}: {e.strerror}") from e
        self._allocated = new_size

    def write(self, offset: int, data: bytes | memoryview) -> None:
        written = os.pwrite(self.fd, data, offset)
        if written != len(data):
            raise StorageError(f"difference storage {self.path}: short write")

    def copy_from(self, src_fd: int, src_offset: int, length: int, offset: int) -> None:
        """Copy ``length`` bytes of another file into the storage at ``offset``, inside the kernel."""
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(src_fd, self.fd, length - done, src_offset + done, offset + done)
            except OSError as e:
                if e.errno not in _NO_COPY_RANGE:
                    raise
                n = self._copy_through_memory(src_fd, src_offset + done, offset + done, length - done)
            if n == 0:  # past the end of the source: the rest reads as zeros
                self.write(offset + done, bytes(length - done))
                return
            done += n

    def _copy_through_memory(self, src_fd: int, src_offset: int, offset: int, length: int) -> int:
        """The fallback where the kernel cannot copy between the two files (devices, other filesystems)."""
        data = os.pread(src_fd, min(length, 1 << 20), src_offset)
        if data:
            self.write(offset, data)
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._truncate_on_close:
            os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = -1
