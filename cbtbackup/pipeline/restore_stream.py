"""``restore BACKUP -``: the image in order on a stream (a pipe to ``dd``, ``ssh``, ``zstd``).

Chunks are fetched ahead in a pool, in the order the image first uses them, a bounded number at a time;
the writer walks the map in order and waits for each chunk it needs. Zero ranges are written as zeros.
A chunk used again further on is kept until its last use, within a bound in bytes: a packed incremental's
chunk serves blocks spread over much of the image, and a long chain has one such chunk per incremental
at every point. Past the bound the least recently used goes, and is fetched again if needed.
Every chunk is verified as in a file restore, and a bad one stops the stream with an error: the reader
at the other end sees a short stream and a non-zero exit, never wrong bytes presented as whole.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future

from cbtbackup.errors import StorageError
from cbtbackup.model.extent_map import ExtentMap
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
    workers = config.worker_count(repo.store.capabilities().parallelism)
    window = max(2, 2 * workers)
    executor = config.make_executor(workers)
    order = iter(dict.fromkeys(resolved.digest_at(i) for i in range(len(resolved)) if not resolved[i].is_zero))
    pending: collections.OrderedDict[bytes, Future[bytes]] = collections.OrderedDict()
    ready: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
    ready_bytes = 0
    remaining = collections.Counter(resolved.digest_at(i) for i in range(len(resolved)) if not resolved[i].is_zero)
    written = fetched = 0

    def fill() -> None:
        while len(pending) < window:
            digest = next(order, None)
            if digest is None:
                return
            pending[digest] = executor.submit(repo.get_chunk, digest)

    try:
        fill()
        for i in range(len(resolved)):
            piece = resolved[i]
            if piece.is_zero:
                for pos in range(0, piece.length, len(ZEROS)):
                    written += _write_all(fd, memoryview(ZEROS)[: min(len(ZEROS), piece.length - pos)])
            else:
                data = ready.get(piece.digest)
                if data is not None:
                    ready.move_to_end(piece.digest)
                else:
                    ahead = pending.pop(piece.digest, None)
                    # Not fetched ahead: a chunk kept for later and let go past the bound.
                    data = ahead.result() if ahead is not None else repo.get_chunk(piece.digest)
                    fetched += 1
                    fill()
                    if remaining[piece.digest] > 1:
                        ready[piece.digest] = data
                        ready_bytes += len(data)
                        while ready_bytes > kept_bytes and len(ready) > 1:
                            ready_bytes -= len(ready.popitem(last=False)[1])
                written += _write_all(fd, memoryview(data)[piece.chunk_offset: piece.chunk_offset + piece.length])
                remaining[piece.digest] -= 1
                if remaining[piece.digest] == 0 and piece.digest in ready:
                    ready_bytes -= len(ready.pop(piece.digest))
            progress.advance(piece.length)
    finally:
        for future in pending.values():
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
    return written, fetched


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
