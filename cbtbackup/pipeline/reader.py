"""Random access to a backup's image: the reader behind ``mount``, ``serve`` and ``export-diff``.

The backup's chain is resolved once into its map; a read finds the pieces it touches by binary search and
takes each chunk from the reading core (``chunk_source.py``: held in memory bounded in bytes, or fetched,
verified and decompressed with the same checks ``restore`` makes). A chunk that fails them raises
:class:`CorruptChunkError`: callers turn it into EIO, never into bytes. Memory is the bound plus the
chunks being read, whatever the device size.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator

from cbtbackup.model.extent_map import Piece
from cbtbackup.pipeline.chunk_source import ChunkSource
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
        self._chunks = ChunkSource(repo.get_chunk, keep_bytes=cache_bytes, fetchers=3)
        self._last_end = -1

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
        if sequential:  # fetch the chunks of the next stretch in the background, so the reader does not wait
            budget = min(READ_AHEAD, self._chunks.keep_bytes // 2)
            self._chunks.prefetch(p.digest for p in self.pieces(offset + length, budget) if not p.is_zero)
        out = bytearray(length)
        for p in self.pieces(offset, length):
            if not p.is_zero:
                chunk = self.chunk(p.digest)
                out[p.offset - offset: p.end - offset] = chunk[p.chunk_offset: p.chunk_offset + p.length]
        return bytes(out)

    def close(self) -> None:
        self._chunks.close()

    @property
    def chunks_fetched(self) -> int:
        return self._chunks.fetched

    def chunk(self, digest: bytes) -> bytes:
        """A verified chunk, from memory or the repository."""
        return self._chunks.get(digest)
