"""``restore --onto-existing``: bring a stale copy of the device up to a backup, writing only what differs.

The target is read once, piece by piece of the backup's map. Where a piece is one whole stored chunk, the
target's bytes are hashed with the repository's chunk id: equal means equal, and nothing is fetched or
written. Elsewhere the chunk is fetched and verified, and the target is compared block by block (64 KiB);
only the blocks that differ are written. Zero pieces write zeros only where the target is not zero.
Chunks come from the reading core (``chunk_source.py``), least recently used first out within a bound in
bytes (which are needed is known only once the target is read): a chunk shared by many pieces — a full's
around an incremental's changes, a packed incremental's — is fetched about once.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.progress import Progress
from cbtbackup.pipeline.target_io import pread_full, pwrite_all
from cbtbackup.repo.repository import Repository

ReadTarget = Callable[[int, int], bytes]
WriteTarget = Callable[[memoryview, int], None]
BLOCK = 64 << 10
CACHE = 64 << 20


def restore_onto(repo: Repository, resolved: ExtentMap, fd: int, progress: Progress) -> tuple[int, int, int]:
    """(bytes read from the target, bytes written to it, chunks fetched)."""
    result = restore_onto_target(repo, resolved, lambda offset, length: pread_full(fd, offset, length),
                                 lambda data, offset: pwrite_all(fd, data, offset), progress)
    os.fsync(fd)
    return result


def restore_onto_target(repo: Repository, resolved: ExtentMap, read_target: ReadTarget, write_target: WriteTarget,
                        progress: Progress) -> tuple[int, int, int]:
    """The same for any target that reads and writes by offset (a file, a device, an RBD image)."""
    read = written = 0
    chunks = ChunkSource(repo.get_chunk, keep_bytes=CACHE)
    for i in range(len(resolved)):
        piece = resolved[i]
        have = read_target(piece.offset, piece.length)
        read += len(have)
        if piece.is_zero:
            want = bytes(piece.length)
        elif repo.chunk_id(have) == piece.digest:
            progress.advance(piece.length)
            continue
        else:
            want = chunks.get(piece.digest)[piece.chunk_offset: piece.chunk_offset + piece.length]
        written += _write_differences(write_target, piece.offset, have, want)
        progress.advance(piece.length)
    return read, written, chunks.fetched


def _write_differences(write_target: WriteTarget, offset: int, have: bytes, want: bytes) -> int:
    written = 0
    hv, wv = memoryview(have), memoryview(want)
    for pos in range(0, len(want), BLOCK):
        end = min(pos + BLOCK, len(want))
        if hv[pos:end] != wv[pos:end]:
            write_target(wv[pos:end], offset + pos)
            written += end - pos
    return written
