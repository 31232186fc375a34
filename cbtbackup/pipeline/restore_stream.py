"""``restore BACKUP -``: the image in order on a stream (a pipe to ``dd``, ``ssh``, ``zstd``).

Chunks are fetched ahead in a pool, in the order the image first uses them, a bounded number at a time;
the writer walks the map in order and waits for each chunk it needs. Zero ranges are written as zeros.
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


def stream_image(
    repo: Repository, resolved: ExtentMap, fd: int, progress: Progress, config: PipelineConfig
) -> tuple[int, int]:
    """Write the whole image to ``fd`` in order; (bytes written, chunks fetched)."""
    workers = config.worker_count(repo.store.capabilities().parallelism)
    window = max(2, 2 * workers)
    executor = config.make_executor(workers)
    order = iter(dict.fromkeys(resolved.digest_at(i) for i in range(len(resolved)) if not resolved[i].is_zero))
    pending: collections.OrderedDict[bytes, Future[bytes]] = collections.OrderedDict()
    ready: dict[bytes, bytes] = {}
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
                if data is None:
                    data = pending.pop(piece.digest).result()
                    fetched += 1
                    ready[piece.digest] = data
                    fill()
                written += _write_all(fd, memoryview(data)[piece.chunk_offset: piece.chunk_offset + piece.length])
                remaining[piece.digest] -= 1
                if remaining[piece.digest] == 0:
                    del ready[piece.digest]  # memory stays bounded by the window and the chunks still to reuse
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
