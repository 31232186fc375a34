"""``restore BACKUP rbd:POOL/IMAGE``: a backup into a Ceph RBD image.

A new image (created under a temporary name, renamed into place when whole: ``engine/rbd/target.py``)
gets only the backup's data pieces — an RBD image reads zeros wherever nothing was written, so zero pieces
cost nothing and stay thin. An image rewritten with ``--force`` gets its zero pieces as ``write_zeroes``
(librbd discards whole objects and zeroes partial ones), so no stale byte survives. ``--onto-existing``
reads the image piece by piece and writes only what differs (``restore_onto``).
Chunks come from the reading core (``chunk_source.py``) and are written by a pool, a bounded number of
bytes in flight.
"""

from __future__ import annotations

import collections

from cbtbackup.engine.rbd.cluster import CephOptions
from cbtbackup.engine.rbd.target import RbdTarget, with_leftover
from cbtbackup.errors import CbtError
from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.progress import Progress
from cbtbackup.pipeline.restore_onto import restore_onto_target
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.repository import Repository

CACHE = 64 << 20  # chunks shared by several pieces (a packed incremental's) are held until their last


def restore_to_rbd(repo: Repository, resolved: ExtentMap, size: int, target: str, ceph: CephOptions, *,
                   force: bool, onto_existing: bool, progress: Progress,
                   config: PipelineConfig) -> tuple[int, int, int]:
    """(bytes read from the image, bytes written to it, chunks fetched)."""
    image = RbdTarget(target, ceph, size, existing=onto_existing, overwrite=force)
    try:
        if onto_existing:
            result = restore_onto_target(repo, resolved, image.read, image.write, progress)
        else:
            result = _write_pieces(repo, resolved, image, progress, config)
        image.commit()
    except CbtError as e:
        raise with_leftover(e, image.abandon()) from None
    except BaseException:
        image.abandon()
        raise
    return result


def _write_pieces(repo: Repository, resolved: ExtentMap, image: RbdTarget, progress: Progress,
                  config: PipelineConfig) -> tuple[int, int, int]:
    chunks = ChunkSource(repo.get_chunk, keep_bytes=CACHE,
                         uses=collections.Counter(p.digest for p in resolved if not p.is_zero))
    written = 0

    def write(offset: int, length: int, digest: bytes, chunk_offset: int) -> None:
        image.write(memoryview(chunks.get(digest))[chunk_offset: chunk_offset + length], offset)
        chunks.release(digest)
        progress.advance(length)

    workers = config.worker_count(repo.store.capabilities().parallelism)
    executor = config.make_executor(workers)
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for i in range(len(resolved)):
            piece = resolved[i]
            if piece.is_zero:
                if not image.fresh:
                    image.write_zeroes(piece.offset, piece.length)
                    written += piece.length
                progress.advance(piece.length)
                continue
            submitter.submit(piece.length, write, piece.offset, piece.length, piece.digest, piece.chunk_offset)
            written += piece.length
        submitter.drain()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return 0, written, chunks.fetched
