"""A store in a local directory: one file per object, written to a temporary name and renamed.

Puts are atomic (rename) but not synced one by one: the store records what it changed, and
:meth:`LocalStore.sync` — which the repository calls before and after it writes a manifest — makes just
that durable (``repo/durability.py``: an fsync per file and directory, or one ``syncfs`` when many).

Large objects (chunks) are written through: their pages are sent to the disk as soon as they are
written (``sync_file_range``, data only, no cache flush and no metadata) and then dropped from the page
cache. A backup writes far more than anything reads back soon, and letting the page cache grow by the
size of everything stored costs more CPU than the write itself (measured: 1.5 GiB in 1 MiB objects,
3.4 to 3.8 s of system time written plainly, 1.3 s written through). It also leaves the final ``syncfs``
little to flush. Durability does not change: it still comes from ``sync``.

Large objects are dropped from the page cache after they are read, too. A restore or a verify reads each
chunk once, and the page cache grown by the size of a repository cost more than decompressing it: a cold
restore of an 8 GiB image (4.1 GiB of chunks) took 14.2 s and 17.6 s of CPU, 8.6 s and 9.0 s dropping
behind (median of three, interleaved). What a mount or an NBD export reads again is held by the reader's
own chunk cache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cbtbackup.errors import NotFoundError, StorageError, os_error
from cbtbackup.repo.durability import PendingSync, write_back
from cbtbackup.repo.store import ObjectInfo, Store, StoreCapabilities

TMP_MARK = ".tmp-"
WRITE_THROUGH = 64 << 10  # objects at least this large are written through (see the module doc)


def _write_through(fd: int) -> None:
    """Send a file's written pages to the disk and drop them from the page cache.

    Only a hint for the cache: a file system without ``sync_file_range`` simply keeps its pages."""
    if write_back(fd, wait=True):  # the GIL is released meanwhile: other workers go on compressing
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    # A put renames a new file into place, so the inode tells one version of an object from the next.
    return ObjectInfo(key, st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}", st.st_mtime)


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._pending = PendingSync(self.root)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid object key {key!r}")
        return self.root / key

    def _write_temp(self, path: Path, data: bytes) -> tuple[Path, bool]:
        """``data`` in a new temporary file beside ``path`` (made with its directory if need be), and
        whether a directory was made for it."""
        tmp = path.with_name(f"{TMP_MARK}{path.name}.{os.urandom(4).hex()}")
        made_dirs = False
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                made_dirs = True
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if len(data) >= WRITE_THROUGH:
                    _write_through(fd)
            finally:
                os.close(fd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise os_error(e, f"cannot write {path}") from None
        return tmp, made_dirs

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp, made_dirs = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise os_error(e, f"cannot write {path}") from None
        self._pending.wrote(path, made_dirs)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """A complete temporary file hard-linked to the key: link fails if the key exists, and is atomic."""
        path = self._path(key)
        tmp, made_dirs = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            raise os_error(e, f"cannot write {path}") from None
        finally:
            tmp.unlink(missing_ok=True)
        self._pending.wrote(path, made_dirs)
        return True

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                data = f.read() if length is None else f.read(length)
                if len(data) >= WRITE_THROUGH:  # a chunk: read once by a restore or a verify (module doc)
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(f.fileno(), offset, len(data), os.POSIX_FADV_DONTNEED)
                return data
        except FileNotFoundError:
            raise NotFoundError(f"{key}: no such object in {self.root}") from None
        except OSError as e:
            raise os_error(e, f"cannot read {path}") from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            return _info(key, self._path(key).stat())
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(e, f"cannot stat {key}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else rel + "/"
            # Only descend where keys with the prefix can be.
            dirnames[:] = [d for d in dirnames if (base + d + "/").startswith(prefix) or prefix.startswith(base + d)]
            for name in filenames:
                key = base + name
                if key.startswith(prefix) and not name.startswith(TMP_MARK):
                    try:
                        found.append(_info(key, os.stat(os.path.join(dirpath, name))))
                    except FileNotFoundError:
                        continue
        return iter(sorted(found, key=lambda o: o.key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise os_error(e, f"cannot delete {key}") from None
        self._pending.removed(path)

    def made_root(self) -> None:
        """The directory was made just now (by ``init``): the next sync makes its entry durable too."""
        self._pending.made_root()

    def depend_on(self, key: str) -> None:
        self._pending.adopt(self._path(key))

    def sync(self) -> None:
        self._pending.sync()

    def remove_incomplete(self, older_than: float) -> int:
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(TMP_MARK):
                    path = os.path.join(dirpath, name)
                    try:
                        if os.stat(path).st_mtime < older_than:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        return removed

    def capabilities(self) -> StoreCapabilities:
        # A disk serves several reads at once; how many threads a pipeline runs is its own choice below this.
        return StoreCapabilities(parallelism=max(8, (os.cpu_count() or 2) * 4), description=f"directory {self.root}")


