"""``restore BACKUP -``: the image in order on a stream (a pipe to ``dd``, ``ssh``, ``zstd``).

Chunks come from the reading core (``chunk_source.py``), fetched ahead by its pool in the order the image
first uses them, a bounded number at a time; the writer walks the map in order and waits for each chunk it
needs. Zero ranges are written as zeros. A chunk used again further on is held until its last use, within
a bound in bytes: a packed incremental's
chunk serves blocks spread over much of the image, and a long chain has one such chunk per incremental
at every point. Past the bound the least recently used goes, and is fetched again if needed.
Every chunk is verified as in a file restore, and a bad one stops the stream with an error: the reader
at the other end sees a short stream and a non-zero exit, never wrong bytes presented as whole.
"""

from __future__ import annotations

import collections
import os

from cbtbackup.errors import StorageError
from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.progress import Progress
from cbtbackup.pipeline.workers import PipelineConfig
from cbtbackup.repo.repository import Repository

ZEROS = bytes(1 << 20)
KEPT_BYTES = 64 << 20  # chunks kept for a later use


def stream_image(
    repo: Repository, resolved: ExtentMap, fd: int, progress: Progress, config: PipelineConfig,
    kept_bytes: int = KEPT_BYTES,
) -> tuple[int, int]:
    """Write the whole image to ``fd`` in order; (bytes written, chunks fetched)."""
    uses = collections.Counter(p.digest for p in resolved if not p.is_zero)  # in the order of first use
    chunks = ChunkSource(repo.get_chunk, uses=uses, plan=list(uses), keep_bytes=kept_bytes,
                         fetchers=config.worker_count(repo.store.capabilities().parallelism))
    written = 0
    try:
        for piece in resolved:
            if piece.is_zero:
                for pos in range(0, piece.length, len(ZEROS)):
                    written += _write_all(fd, memoryview(ZEROS)[: min(len(ZEROS), piece.length - pos)])
            else:
                data = chunks.get(piece.digest)
                written += _write_all(fd, memoryview(data)[piece.chunk_offset: piece.chunk_offset + piece.length])
                chunks.release(piece.digest)
            progress.advance(piece.length)
    finally:
        chunks.close()
    return written, chunks.fetched


def _write_all(fd: int, view: memoryview) -> int:
    total = len(view)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise StorageError("the reader of the stream went away") from None
    except OSError as e:
        raise StorageError(f"write to the stream failed: {e.strerror}") from None
    return total
