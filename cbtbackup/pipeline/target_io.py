"""Whole positional reads and writes of a restore target, with errors of the project's tree."""

from __future__ import annotations

import os

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
