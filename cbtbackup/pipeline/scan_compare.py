"""What a scan incremental compares each extent it reads against: the previous backup's image.

A scan reads the whole source, but must store only what differs from the previous backup — at the
granularity of a tracking block, not of a chunk, or one 64 KiB change after a few CBT incrementals would
store whole megabytes again. The previous backup's resolved map says, for every byte, which stored chunk
holds it:

- an extent that one whole stored chunk covers is compared by digest: no read of the repository;
- an extent the previous image held as zeros is compared with zeros;
- anything else (the digest differs, or the map cut the extent into pieces of several chunks) is compared
  block by block with the previous bytes, fetched and verified from the repository, and only the runs of
  blocks that differ are stored. A previous chunk that cannot be read counts as different, so the bytes
  are stored again rather than trusted.

Previous chunks come from the reading core (``chunk_source.py``), held within a bound in bytes: after CBT
incrementals one chunk serves many extents (a full's chunk the pieces an incremental left of it, a packed
incremental's chunk up to a chunk's worth of scattered blocks), and the scan walks the image in order, so
each is fetched about once.

Nothing here needs local state: a new machine with an empty state directory scans exactly as well, at the
cost of reading back the previous chunks of the extents that changed.
"""

from __future__ import annotations

from cbtbackup.errors import CorruptDataError, NotFoundError
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap, Piece
from cbtbackup.pipeline.chunk_source import ChunkSource, FetchChunk
from cbtbackup.repo.write_only import WriteOnlyError

Part = tuple[int, int]  # (offset, length) of a run of blocks that differ
PREVIOUS_CACHE = 64 << 20


class PreviousImage:
    """The previous backup's resolved map, walked forward as the scan reads extents in order."""

    def __init__(self, resolved: ExtentMap, fetch: FetchChunk, block_size: int, lost: set[bytes],
                 cache_bytes: int = PREVIOUS_CACHE) -> None:
        self._map = resolved
        self._chunks = ChunkSource(fetch, keep_bytes=cache_bytes)
        self._lost = lost  # quarantined chunks: never equal to anything, so their bytes are stored again
        self._i = 0
        self.block_size = block_size

    def pieces(self, offset: int, length: int) -> list[Piece]:
        """The previous map's pieces over ``[offset, offset + length)``, clipped to it (call in offset order)."""
        m, end = self._map, offset + length
        while self._i < len(m) and m[self._i].end <= offset:
            self._i += 1
        out: list[Piece] = []
        i = self._i
        while i < len(m) and m[i].offset < end:
            p = m[i]
            start, stop = max(p.offset, offset), min(p.end, end)
            out.append(Piece(start, stop - start, p.digest, p.chunk_offset + (start - p.offset)))
            i += 1
        return out

    def changed_parts(self, offset: int, data: bytes | memoryview, digest: bytes, pieces: list[Piece]) -> list[Part]:
        """The runs of blocks of ``data`` (read at ``offset``) that differ from the previous image."""
        length = len(data)
        # One piece with the data's own digest: the data is that whole chunk (the digest of a longer chunk,
        # or of other bytes, would differ), or zeros recorded as zeros.
        if len(pieces) == 1 and pieces[0].length == length and pieces[0].digest == digest \
                and digest not in self._lost:
            return []
        if digest == ZERO_DIGEST and all(p.is_zero for p in pieces):
            return []
        old = self._old_bytes(offset, length, pieces)
        if old is None:
            return [(offset, length)]
        return _differing_runs(offset, data, old, self.block_size)

    def _old_bytes(self, offset: int, length: int, pieces: list[Piece]) -> bytes | None:
        """The previous image's bytes over the extent, or None if any of them cannot be read back."""
        out = bytearray(length)
        for p in pieces:
            if p.is_zero:
                continue
            if p.digest in self._lost:
                return None
            try:
                chunk = self._chunks.get(p.digest)
            except (CorruptDataError, NotFoundError, WriteOnlyError):  # write-only: the extent is stored whole
                return None
            if p.chunk_offset + p.length > len(chunk):
                return None
            out[p.offset - offset: p.offset - offset + p.length] = chunk[p.chunk_offset: p.chunk_offset + p.length]
        return bytes(out)


def _differing_runs(offset: int, data: bytes | memoryview, old: bytes, block_size: int) -> list[Part]:
    runs: list[Part] = []
    view, old_view = memoryview(data), memoryview(old)
    run_start = -1
    for pos in range(0, len(data), block_size):
        end = min(pos + block_size, len(data))
        if view[pos:end] != old_view[pos:end]:
            if run_start < 0:
                run_start = pos
        elif run_start >= 0:
            runs.append((offset + run_start, pos - run_start))
            run_start = -1
    if run_start >= 0:
        runs.append((offset + run_start, len(data) - run_start))
    return runs
