"""Random access to a backup's image: the one reader behind ``restore -``, ``mount`` and ``serve``.

The backup's chain is resolved once into its map; a read finds the pieces it touches by binary search and
takes each chunk from a cache bounded in bytes, or fetches, verifies and decompresses it (the same checks
``restore`` makes). A chunk that fails them raises :class:`CorruptChunkError`: callers turn it into EIO,
never into bytes. Memory is the cache's bound plus the chunks being read, whatever the device size.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from cbtbackup.model.extent_map import Piece
from cbtbackup.pipeline.chunk_cache import ChunkCache
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import Repository

DEFAULT_CACHE = 64 << 20
READ_AHEAD = 8 << 20  # on sequential reads, fetch the chunks of the next 8 MiB in the background


class BackupReader:
    """Reads of one backup's image by offset; safe to share between threads."""

    def __init__(self, repo: Repository, ref: BackupRef, cache_bytes: int = DEFAULT_CACHE) -> None:
        self.repo = repo
        self.manifest: Manifest
        self.manifest, self.map = repo.resolve(ref)
        self.size = self.manifest.device_size
        self._starts = array("Q", (self.map[i].offset for i in range(len(self.map))))
        self._cache = ChunkCache(repo.get_chunk, cache_bytes)
        self._lock = threading.Lock()
        self._last_end = -1
        self._ahead: set[bytes] = set()  # digests being fetched ahead
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="read-ahead")

    def pieces(self, offset: int, length: int) -> Iterator[Piece]:
        """The map's pieces over ``[offset, offset + length)``, clipped to it."""
        end = min(self.size, offset + length)
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while i < len(self.map):
            p = self.map[i]
            if p.offset >= end:
                break
            if p.end > offset:
                start, stop = max(p.offset, offset), min(p.end, end)
                yield Piece(start, stop - start, p.digest, p.chunk_offset + (start - p.offset))
            i += 1

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the image (short only at its end)."""
        length = max(0, min(length, self.size - offset))
        sequential = offset == self._last_end
        self._last_end = offset + length
        if sequential:
            self._read_ahead(offset + length)
        out = bytearray(length)
        for p in self.pieces(offset, length):
            if not p.is_zero:
                chunk = self.chunk(p.digest)
                out[p.offset - offset: p.end - offset] = chunk[p.chunk_offset: p.chunk_offset + p.length]
        return bytes(out)

    def _read_ahead(self, start: int) -> None:
        """Fetch the chunks of the next stretch in the background, so a sequential reader does not wait."""
        budget = min(READ_AHEAD, self._cache.limit // 2)
        for p in self.pieces(start, budget):
            if p.is_zero:
                continue
            with self._lock:
                if p.digest in self._cache or p.digest in self._ahead:
                    continue
                self._ahead.add(p.digest)
            self._pool.submit(self._fetch_ahead, p.digest)

    def _fetch_ahead(self, digest: bytes) -> None:
        try:
            self.chunk(digest)
        except Exception:
            pass
        finally:
            with self._lock:
                self._ahead.discard(digest)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def chunks_fetched(self) -> int:
        return self._cache.fetched

    def chunk(self, digest: bytes) -> bytes:
        """A verified chunk, from the cache or the repository."""
        return self._cache.get(digest)
