"""The tracker's state on disk: a header in two checksummed slots and two byte maps, all memory-mapped.

Layout of the state file (little-endian; see docs/design.md):

    [slot A, 4 KiB][slot B, 4 KiB][write map, padded to 4 KiB][read map, padded to 4 KiB]

A header update writes the slot not in use with a higher sequence number and a CRC32, so a process killed
in the middle of an update leaves the older slot valid. The maps are shared mappings of the file: a byte
stored in them is in the page cache at once, so it survives the death of the process (not of the machine,
unless it was synced).
"""

from __future__ import annotations

import dataclasses
import fcntl
import mmap
import os
import struct
import uuid
import zlib
from pathlib import Path

from cbtbackup.engine.errors import TrackerStateError, VolumeLockedError
from cbtbackup.errors import os_error

MAGIC = b"CBTTRACK"
FORMAT_VERSION = 2  # 2: the identity holds ctime where 1 held mtime
READABLE_VERSIONS = (1, 2)
SLOT_SIZE = 4096
_HEADER = struct.Struct("<8sIQ16sIIQBBBB16sQQQ64s")
_CRC = struct.Struct("<I")
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def current_boot_id() -> bytes:
    """The kernel's boot id: it changes at every boot, so it tells a process crash from a reboot."""
    with open(BOOT_ID_PATH) as f:
        return uuid.UUID(f.read().strip()).bytes


def _page_round(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


@dataclasses.dataclass
class TrackerHeader:
    """Everything the tracker keeps besides the maps."""

    generation: bytes
    block_size: int
    block_count: int
    capacity: int
    previous: int = 0
    active: int = 1
    clean: bool = False
    durable: bool = False
    boot_id: bytes = bytes(16)
    image_ino: int = 0
    image_size: int = 0
    image_ctime_ns: int = 0
    reset_reason: str = ""
    seq: int = 0
    version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        self.version = FORMAT_VERSION  # whatever was read, what is written is the current format
        body = _HEADER.pack(
            MAGIC, FORMAT_VERSION, self.seq, self.generation, self.block_size, self.block_count,
            self.capacity, self.previous, self.active, int(self.clean), int(self.durable), self.boot_id,
            self.image_ino, self.image_size, self.image_ctime_ns,
            self.reset_reason.encode()[:64],
        )
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def unpack(cls, raw: bytes) -> TrackerHeader | None:
        """The header in ``raw``, or None when the slot is empty or torn."""
        if len(raw) < _HEADER.size + _CRC.size:  # a truncated file
            return None
        body = raw[: _HEADER.size]
        (crc,) = _CRC.unpack_from(raw, _HEADER.size)
        if zlib.crc32(body) != crc:
            return None
        (magic, version, seq, generation, block_size, block_count, capacity, previous, active, clean,
         durable, boot_id, ino, size, stamp, reason) = _HEADER.unpack(body)
        if magic != MAGIC or not block_size or block_size & (block_size - 1) or active not in range(1, 256):
            return None  # not ours, or nonsense that happens to carry a matching checksum
        if version not in READABLE_VERSIONS:
            raise TrackerStateError(f"tracker state format {version} is not supported (this is {FORMAT_VERSION})")
        return cls(generation, block_size, block_count, capacity, previous, active, bool(clean), bool(durable),
                   boot_id, ino, size, stamp, reason.rstrip(b"\0").decode(errors="replace"), seq, version)


class TrackerStateFile:
    """The mapped state file. Not thread-safe by itself: the tracker serialises access."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except ValueError as e:
            raise TrackerStateError(f"tracker state {path} is empty or unreadable") from e
        finally:
            os.close(fd)
        slots = [TrackerHeader.unpack(self._mm[i * SLOT_SIZE:(i + 1) * SLOT_SIZE]) for i in (0, 1)]
        valid = [(h.seq, i, h) for i, h in enumerate(slots) if h is not None]
        if not valid:
            raise TrackerStateError(f"tracker state {path} has no valid header")
        _, self._slot, header = max(valid)
        self.header = header
        self._map_len = _page_round(header.block_count)
        if len(self._mm) < 2 * SLOT_SIZE + 2 * self._map_len:
            raise TrackerStateError(f"tracker state {path} is shorter than its maps")
        self.write_map = memoryview(self._mm)[2 * SLOT_SIZE: 2 * SLOT_SIZE + header.block_count]
        read_start = 2 * SLOT_SIZE + self._map_len
        self.read_map = memoryview(self._mm)[read_start: read_start + header.block_count]

    @classmethod
    def create(cls, path: Path, header: TrackerHeader) -> TrackerStateFile:
        """Write a fresh state file (zeroed maps) atomically: a temporary file renamed into place."""
        tmp = path.with_name(path.name + ".new")
        map_len = _page_round(header.block_count)
        header.seq = 1
        with open(tmp, "wb") as f:
            f.write(header.pack().ljust(SLOT_SIZE, b"\0"))
            f.truncate(2 * SLOT_SIZE + 2 * map_len)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return cls(path)

    def commit(self, durable: bool = False) -> None:
        """Store ``self.header`` in the slot not in use, so a torn update leaves the older one."""
        self.header.seq += 1
        slot = 1 - self._slot
        raw = self.header.pack()
        self._mm[slot * SLOT_SIZE: slot * SLOT_SIZE + len(raw)] = raw
        self._slot = slot
        if durable:
            self._mm.flush(0, 2 * SLOT_SIZE)

    def sync_write_map(self, first: int, last: int) -> None:
        """Make the write-map bytes [first, last] durable (whole pages around them)."""
        start = 2 * SLOT_SIZE + (first // mmap.PAGESIZE) * mmap.PAGESIZE
        end = 2 * SLOT_SIZE + last + 1
        self._mm.flush(start, end - start)

    def sync(self) -> None:
        self._mm.flush()

    def close(self) -> None:
        self.write_map.release()
        self.read_map.release()
        self._mm.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateDirLock:
    """An exclusive ``flock`` on the state directory's lock file; the kernel drops it when the holder dies."""

    def __init__(self, state_dir: Path) -> None:
        try:
            self._fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise os_error(e, f"cannot lock the state directory {state_dir}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise VolumeLockedError(f"{state_dir} is in use by another tracker") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
