"""Opening what a volume can be — an image file or a block device — with clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cbtbackup.errors import NotFoundError, StorageError, UsageError


def open_image_or_device(path: Path, flags: int) -> tuple[int, os.stat_result, int]:
    """Open ``path`` (``os.O_RDONLY`` or ``os.O_RDWR``); return the descriptor, its stat, and its size."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file or device") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not an image file or block device") from None
    except OSError as e:
        raise StorageError(f"cannot open {path}: {e.strerror}") from e
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return fd, st, st.st_size
    if stat.S_ISBLK(st.st_mode):
        return fd, st, os.lseek(fd, 0, os.SEEK_END)
    os.close(fd)
    raise UsageError(f"{path} is not an image file or block device")
