"""A read-only FUSE tree of a repository's backups: what ``cbtbackup mount`` serves.

    MOUNTPOINT/<chain>/<id>.img                      a backup's image, its device size
    MOUNTPOINT/<chain>/<2026-11-25T16:16:00Z>.img    the same, by the time it was taken (a link; a second
                                                     backup in that second: 16:16:00.123456Z)
    MOUNTPOINT/<chain>/latest.img                    the chain's newest backup (a link)

Reads go through one :class:`BackupReader` per open backup: only the chunks a read touches are fetched,
verified and decompressed, through a cache bounded in bytes. A chunk that fails its checks makes that read
fail with EIO and logs one line naming it; other reads go on. The tree is the repository as it was at
mount time; mount again to see newer backups.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from typing import Any

from cbtbackup.engine.attach.libfuse_stderr import without_false_alarm
from cbtbackup.errors import CbtError
from cbtbackup.pipeline.reader import BackupReader
from cbtbackup.repo.chunk_codec import CorruptChunkError
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import Repository

# mfusepy picks libfuse 2 when both are installed; libfuse 3 allows larger requests.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy

MAX_REQUEST = 1 << 20


def time_name(ref: BackupRef, fraction: bool = False) -> str:
    """The time ``ref`` was taken, to the second (``fraction``: to the microsecond)."""
    stamp = ref.stamp  # YYYYMMDDTHHMMSSffffffZ
    seconds = f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
    return f"{seconds}.{stamp[15:21]}Z" if fraction else f"{seconds}Z"


class BackupTree(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, repo: Repository, name: str | None, cache_bytes: int, only: BackupRef | None = None) -> None:
        self.repo = repo
        self.cache_bytes = cache_bytes
        self._now = time.time_ns()
        self.files: dict[str, BackupRef] = {}  # "/chain/id.img" -> backup
        self.links: dict[str, str] = {}  # "/chain/time.img" -> "id.img"
        self.dirs: dict[str, list[str]] = {"/": []}
        for ref in [only] if only is not None else repo.list_backups(name):
            chain = f"/{ref.name}"
            if chain not in self.dirs:
                self.dirs[chain] = []
                self.dirs["/"].append(ref.name)
            leaf = f"{ref.id}.img"
            self.files[f"{chain}/{leaf}"] = ref
            self.dirs[chain].append(leaf)
            by_time = f"{time_name(ref)}.img"
            if f"{chain}/{by_time}" in self.links:  # two backups in one second: the first keeps the name
                by_time = f"{time_name(ref, fraction=True)}.img"
            if f"{chain}/{by_time}" not in self.links:
                self.links[f"{chain}/{by_time}"] = leaf
                self.dirs[chain].append(by_time)
            self.links[f"{chain}/latest.img"] = leaf  # refs come oldest first: the last one stays
        for chain, entries in self.dirs.items():
            if chain != "/":
                entries.append("latest.img")
        self._sizes: dict[str, int] = {}
        self._readers: dict[str, tuple[BackupReader, int]] = {}  # backup id -> (reader, open count)
        self._lock = threading.Lock()

    # -- metadata ------------------------------------------------------------------------------------------

    def _size(self, ref: BackupRef) -> int:
        size = self._sizes.get(ref.id)
        if size is None:
            try:
                size = self.repo.load_manifest(ref).device_size
            except CbtError as e:
                _log(f"backup {ref.id} cannot be read: {e}")
                raise mfusepy.FuseOSError(errno.EIO) from None
            self._sizes[ref.id] = size
        return size

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        base = {"st_uid": 0, "st_gid": 0, "st_atime": self._now, "st_mtime": self._now, "st_ctime": self._now}
        if path in self.dirs:
            return {**base, "st_mode": stat.S_IFDIR | 0o500, "st_nlink": 2}
        if path in self.links:
            return {**base, "st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_size": len(self.links[path])}
        ref = self.files.get(path)
        if ref is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return {**base, "st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": self._size(ref),
                "st_mtime": int(ref.time * 1e9)}

    def readdir(self, path: str, fh: int) -> list[str]:
        if path not in self.dirs:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", *self.dirs[path]]

    def readlink(self, path: str) -> str:
        target = self.links.get(path)
        if target is None:
            raise mfusepy.FuseOSError(errno.EINVAL)
        return target

    # -- data ----------------------------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        ref = self.files.get(path)
        if ref is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        with self._lock:
            held = self._readers.get(ref.id)
            if held is not None:
                self._readers[ref.id] = (held[0], held[1] + 1)
                return 0
        try:
            reader = BackupReader(self.repo, ref, self.cache_bytes)
        except CbtError as e:
            _log(f"backup {ref.id} cannot be opened: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None
        with self._lock:
            held = self._readers.get(ref.id)
            self._readers[ref.id] = (held[0], held[1] + 1) if held else (reader, 1)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        ref = self.files.get(path)
        if ref is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        with self._lock:
            held = self._readers.get(ref.id)
        if held is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        try:
            return held[0].read(offset, size)
        except CorruptChunkError as e:
            _log(f"read of {size} bytes at {offset} of {path} failed: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None
        except CbtError as e:
            _log(f"read of {size} bytes at {offset} of {path} failed: {e}")
            raise mfusepy.FuseOSError(errno.EIO) from None

    def release(self, path: str, fh: int) -> int:
        ref = self.files.get(path)
        if ref is not None:
            with self._lock:
                held = self._readers.get(ref.id)
                if held is not None:
                    if held[1] <= 1:
                        del self._readers[ref.id]  # its cache goes with it
                        held[0].close()
                    else:
                        self._readers[ref.id] = (held[0], held[1] - 1)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if conn_info is not None:
            conn_info.max_readahead = MAX_REQUEST


def _log(line: str) -> None:
    print(f"cbtbackup mount: {line}", file=sys.stderr, flush=True)


def serve(tree: BackupTree, mountpoint: str) -> None:
    """Mount read-only and serve until unmounted (blocks; run it in a thread)."""
    with without_false_alarm():
        mfusepy.FUSE(tree, mountpoint, foreground=True, nothreads=False, fsname="cbtbackup", subtype="cbtbackup",
                     ro=True, default_permissions=True)
