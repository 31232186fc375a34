"""The scan provider: any file or block device, read as it is, with no tracker and no snapshot.

Without a snapshot the image is whatever the source holds while it is read; back up sources nobody
writes meanwhile (an unmounted device, a stopped VM's disk), or use a tracked source.
"""

from __future__ import annotations

import os
from pathlib import Path

from cbtbackup.engine.errors import OutOfRangeError
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.read_once import pread_once
from cbtbackup.engine.source_file import open_image_or_device
from cbtbackup.errors import StorageError


class FileReader:
    """Reads of a file or block device by offset, for a backup's one pass: they do not fill the page cache."""

    def __init__(self, path: Path) -> None:
        self._fd, _, self.size = open_image_or_device(path, os.O_RDONLY)
        self.path = path

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(f"read of {length} bytes at {offset} is outside {self.path}")
        try:
            data = pread_once(self._fd, length, offset)  # read once: the pages are not kept
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
        self.source = str(self.path.absolute())

    def open_snapshot(self) -> ScanSession:
        return ScanSession(self.path)
