"""Whole positional reads and writes of a restore target, with errors of the project's tree."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

from cbtbackup.errors import os_error
from cbtbackup.repo.durability import write_back


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    except OSError as e:
        raise os_error(e, "write to the restore target failed") from None


def pread_full(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` (zeros past the end of a shorter file)."""
    try:
        data = os.pread(fd, length, offset)
    except OSError as e:
        raise os_error(e, "read of the restore target failed") from None
    return data + bytes(length - len(data))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start sending a range just written to the disk, without waiting for it.

    A restore ends with an fsync of the whole target (it is linked into place only once durable). Left
    to the kernel, dirty pages pile up until that fsync, which then waits for all of them; started as
    each large piece is written, the disk works while later chunks are still fetched and decompressed.
    Small pieces are left to the fsync: a call per 64 KiB costs more than it saves. A hint only: it
    changes when data is written, never whether."""
    write_back(fd, offset, length)


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
ZERO_WRITE = 1 << 20


def zero_range(fd: int, offset: int, length: int) -> bool:
    """Make ``[offset, offset + length)`` of an existing target read as zeros; whether by punching a hole.

    A file gets a hole (its blocks are freed: a restored image stays as sparse as the backup); a block
    device gets the kernel's zeroing, which guarantees zeros or refuses (``blkdev_fallocate``: a discard
    that does not read back as zeros is never used). Where neither is supported, zeros are written."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENODEV, errno.ENOSYS, errno.EPERM):
        raise os_error(OSError(err, os.strerror(err)), "zeroing a range of the restore target failed")
    zeros = memoryview(bytes(ZERO_WRITE))
    for pos in range(offset, offset + length, ZERO_WRITE):
        pwrite_all(fd, zeros[: min(ZERO_WRITE, offset + length - pos)], pos)
    return False


DIRECT_ALIGN = 4096  # offsets, lengths and buffers of direct writes: a multiple of any logical block size


class DirectWriter:
    """Writes of large, aligned runs straight to the device (``O_DIRECT``), past the page cache, from one
    page-aligned buffer per thread (``buffer``), in which the restore puts each window together.

    A buffered restore copies every byte into freshly allocated page-cache pages, with the threads taking
    turns at the file's lock, and then waits for the dirty pages to reach the disk: on 1 GiB that copy
    was 29 % of the restore's CPU and the lock's spinning 9 %. A direct write sends the window's bytes
    from the thread's aligned buffer; the final fsync finds only metadata left, and the restore does
    not push the machine's cached data out. The target is opened a second time for it (the first open
    stays buffered, for small or unaligned runs and zeros); where the file system refuses direct I/O
    (tmpfs before Linux 6.6, some FUSE and network file systems) nothing is written this way."""

    def __init__(self, fd: int) -> None:
        self._local = threading.local()
        self._refused = False
        try:
            self._fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self._fd = -1

    @property
    def available(self) -> bool:
        return self._fd >= 0 and not self._refused

    def buffer(self, length: int) -> memoryview:
        """This thread's page-aligned buffer, at least ``length`` bytes: fill it, then ``write_buffer``."""
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < length:
            buf = self._local.buf = mmap.mmap(-1, length)  # anonymous: page-aligned
        return memoryview(buf)

    def write_buffer(self, start: int, length: int, offset: int) -> bool:
        """Write ``length`` bytes from ``start`` of this thread's buffer at ``offset`` directly; False if not
        (unaligned, or refused): write them buffered."""
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None or start + length > len(buf) or not self._can(start, length, offset):
            return False
        view = memoryview(buf)[start: start + length]
        done = 0
        try:
            while done < length:
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as e:
            if e.errno == errno.EINVAL and done == 0:  # refused after all: buffered from now on
                self._refused = True
                return False
            raise os_error(e, "write to the restore target failed") from None
        finally:
            view.release()
        return True

    def _can(self, start: int, length: int, offset: int) -> bool:
        return self.available and length > 0 and not (start % DIRECT_ALIGN or offset % DIRECT_ALIGN
                                                       or length % DIRECT_ALIGN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
