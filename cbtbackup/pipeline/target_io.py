"""Whole positional reads and writes of a restore target, with errors of the project's tree."""

from __future__ import annotations

import os

from cbtbackup.errors import os_error


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
