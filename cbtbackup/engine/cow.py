"""The copy-on-write filter of one volume inside one snapshot.

Before a write lands, every chunk it touches that still holds its take-time content is copied to the
difference storage; the chunk's storage offset is published only once the copy is complete. The snapshot
image reads copied chunks from the storage and the rest from the volume.

Readers take no lock. A reader that found a chunk uncopied reads the volume and then looks again: a writer
publishes the copy before it overwrites the chunk, so if the overwrite could have reached the reader's
buffer, the second look finds the copy and the reader takes the old content from there instead.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from cbtbackup.engine.diff_storage import DiffStorage, DiffStorageFull
from cbtbackup.engine.geometry import index_range
from cbtbackup.engine.read_once import pread_once, preadv_once
from cbtbackup.errors import StorageError


class CowFilter:
    """Chunk bookkeeping for one volume. ``before_write`` runs under the volume's write lock."""

    def __init__(
        self,
        volume_fd: int,
        capacity: int,
        chunk_size: int,
        storage: DiffStorage,
        on_failure: Callable[[int], None],
        is_failed: Callable[[], bool],
    ) -> None:
        self._fd = volume_fd
        self.capacity = capacity
        self.chunk_size = chunk_size
        self._storage = storage
        self._on_failure = on_failure
        self._is_failed = is_failed
        self._copied: dict[int, int] = {}  # chunk index -> offset in the difference storage

    @property
    def copied_chunks(self) -> int:
        return len(self._copied)

    def _chunk_len(self, chunk: int) -> int:
        return min(self.chunk_size, self.capacity - chunk * self.chunk_size)

    def before_write(self, offset: int, length: int) -> None:
        """Preserve every not yet copied chunk in the range, in one copy per run of neighbours."""
        if self._is_failed():
            return
        run: list[int] = []
        for chunk in index_range(offset, length, self.chunk_size):
            if chunk in self._copied:
                if run:
                    self._copy_run(run)
                    run = []
            else:
                run.append(chunk)
        if run:
            self._copy_run(run)

    def _copy_run(self, chunks: list[int]) -> None:
        if self._is_failed():
            return
        start = chunks[0] * self.chunk_size
        length = sum(self._chunk_len(c) for c in chunks)
        try:
            base = self._storage.allocate(length)
            self._storage.copy_from(self._fd, start, length, base)
        except DiffStorageFull:
            self._on_failure(errno.ENOSPC)
            return
        except (StorageError, OSError) as e:
            self._on_failure(getattr(e, "errno", None) or errno.EIO)
            return
        for i, chunk in enumerate(chunks):
            self._copied[chunk] = base + i * self.chunk_size

    def read_image(self, offset: int, length: int) -> bytes:
        """Bytes of the image as it was at the take (the caller checks bounds and corruption afterwards)."""
        chunks = index_range(offset, length, self.chunk_size)
        if not any(i in self._copied for i in chunks):
            # The common case of a backup: nothing in the range was overwritten since the take. One read
            # straight into the bytes returned; after a short read, or if a chunk was copied meanwhile, the
            # careful path reads again. A backup reads the image once: the pages are not kept.
            data = pread_once(self._fd, length, offset)
            if len(data) == length and not any(i in self._copied for i in chunks):
                return data
        out = bytearray(length)
        view = memoryview(out)
        end = offset + length
        chunks = index_range(offset, length, self.chunk_size)
        i = chunks.start
        while i < chunks.stop:
            if i in self._copied:
                self._read_copied(i, offset, end, view)
                i += 1
                continue
            j = i + 1  # a run of uncopied chunks: one read from the volume
            while j < chunks.stop and j not in self._copied:
                j += 1
            lo = max(offset, i * self.chunk_size)
            hi = min(end, j * self.chunk_size)
            self._pread_into(self._fd, view[lo - offset: hi - offset], lo)
            for chunk in range(i, j):  # the second look: copied meanwhile means overwritten maybe
                if chunk in self._copied:
                    self._read_copied(chunk, offset, end, view)
            i = j
        return bytes(out)

    def _read_copied(self, chunk: int, offset: int, end: int, view: memoryview) -> None:
        lo = max(offset, chunk * self.chunk_size)
        hi = min(end, (chunk + 1) * self.chunk_size)
        base = self._copied[chunk] + (lo - chunk * self.chunk_size)
        self._pread_into(self._storage.fd, view[lo - offset: hi - offset], base)

    @staticmethod
    def _pread_into(fd: int, dest: memoryview, offset: int) -> None:
        done = 0
        while done < len(dest):
            n = preadv_once(fd, dest[done:], offset + done)
            if n == 0:
                raise StorageError("unexpected end of file while reading a snapshot image")
            done += n
