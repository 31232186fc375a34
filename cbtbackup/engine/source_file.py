"""Opening what a volume can be — an image file or a block device — with clear errors."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cbtbackup.errors import BusyError, UsageError, os_error


def check_source_kind(path: Path) -> os.stat_result:
    """Stat ``path`` and refuse at once anything but a regular file or a block device (a FIFO would hang)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_error(e, f"cannot open {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is a directory, not an image file or block device")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode) \
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise UsageError(f"{path} is {kind}, not an image file or block device")
    return st


def open_image_or_device(path: Path, flags: int, *, exclusive: bool = False) -> tuple[int, os.stat_result, int]:
    """Open ``path`` (``os.O_RDONLY`` or ``os.O_RDWR``); return the descriptor, its stat, and its size.

    ``exclusive`` opens a block device with ``O_EXCL``: the kernel refuses it while the device is mounted or
    held exclusively, and refuses those while we hold it.
    """
    first = check_source_kind(path)
    if exclusive and stat.S_ISBLK(first.st_mode):
        flags |= os.O_EXCL
    try:
        # Not O_NONBLOCK, which would skip the FIFO hang: it makes an open fail at once where a watching
        # tracker holds a lease, instead of waiting for the tracker to take note.
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        if exclusive and e.errno == errno.EBUSY:
            raise BusyError(f"{path} is mounted or held exclusively by another program") from None
        raise os_error(e, f"cannot open {path}") from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return fd, st, st.st_size
    if stat.S_ISBLK(st.st_mode):
        return fd, st, os.lseek(fd, 0, os.SEEK_END)
    os.close(fd)
    raise UsageError(f"{path} is not an image file or block device")
