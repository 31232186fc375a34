"""The scan provider: any file or block device, read as it is, with no tracker and no snapshot.

Without a snapshot the image is whatever the source holds while it is read; back up sources nobody
writes meanwhile (an unmounted device, a stopped VM's disk), or use a tracked source.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cbtbackup.engine.errors import OutOfRangeError
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.errors import NotFoundError, StorageError, UsageError


class FileReader:
    """Reads of a file or block device by offset."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file or device") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not an image file or block device") from None
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}") from e
        st = os.fstat(self._fd)
        if stat.S_ISREG(st.st_mode):
            self.size = st.st_size
        elif stat.S_ISBLK(st.st_mode):
            self.size = os.lseek(self._fd, 0, os.SEEK_END)
        else:
            os.close(self._fd)
            raise UsageError(f"{path} is not an image file or block device")
        self.path = path

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(f"read of {length} bytes at {offset} is outside {self.path}")
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as e:
            raise StorageError(f"read of {self.path} failed: {e.strerror}") from e
        if len(data) != length:
            raise StorageError(f"{self.path} shrank while it was read")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ScanSession(SnapshotSession):
    provider = "scan"
    cbt: CbtState | None = None

    def __init__(self, path: Path) -> None:
        self.source = str(path.absolute())
        self._reader = FileReader(path)
        self.image = self._reader

    def close(self) -> None:
        self._reader.close()


class ScanProvider:
    name = "scan"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def open_snapshot(self) -> ScanSession:
        return ScanSession(self.path)
