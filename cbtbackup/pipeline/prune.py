"""Prune: rewrite what has become costly to read, then delete the chunks no backup needs, and what killed
runs left behind.

0. **Repack** (repack.py), chain by chain under each chain's lock: windows of fulls whose reading costs
   1.2x their data or more are stored again as whole chunks. The chunks they used become candidates below.

The scheme (docs/design.md, "Garbage collection"): mark beside running backups, sweep alone.

1. **Mark**, holding the ``manifests`` scope shared (so no ``forget`` rewrites a manifest meanwhile; backups
   may run): read every manifest and note every chunk any of them lists; list the chunks; those noted
   nowhere are candidates.
2. **Sweep**, holding the ``repo`` scope exclusively — which waits until no backup or synthesize runs and
   keeps new ones out: the manifests committed since the mark are read, and whatever they list leaves the
   candidates (a backup that reused a leftover chunk keeps it). Then the candidates are deleted.

Why that is enough: a chunk is deleted only if no manifest lists it at the sweep, and no writer that could
still reuse it is running — each held the shared ``repo`` scope, so the sweep began after the last of them
ended, and its manifest (if it committed) was read. A backup that starts after the sweep learns what exists
from manifests, which list no deleted chunk, or from a lookup, which finds a deleted chunk missing and puts
it again. Killed at any moment, prune has deleted only chunks that no backup needs; the next run finishes.

Memory stays small: chunks noted are kept as 8-byte digest prefixes in one sorted array (a shared prefix can
only keep a chunk, never delete a needed one), and candidates as packed digests. On S3 it costs the list
pages, a read of each manifest not cached locally, and one request per object deleted.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from array import array
from typing import Any

from cbtbackup.errors import CorruptDataError, RetainedError
from cbtbackup.model.extent_map import ZERO_DIGEST
from cbtbackup.pipeline.hooks import Hook, no_hook
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.repack import REPACK_OVER, RepackResult, run_repack
from cbtbackup.pipeline.retention_refresh import refresh_retention
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.keys import KEYS_PREFIX
from cbtbackup.repo.manifest import BACKUPS_PREFIX, BackupRef
from cbtbackup.repo.repository import CHUNKS_PREFIX, CONFIG_COPY_KEY, CONFIG_KEY, HEADS_PREFIX, Repository
from cbtbackup.repo.store import ObjectInfo

INCOMPLETE_AGE = 3600.0  # leftovers of puts older than this are surely from runs that died
CHECK_EVERY = 256  # deletions between checks that the locks are still held


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    dry_run: bool = False
    wait_lock: float = 0.0
    repack: bool = True  # rewrite the costly windows of fulls first (repack.py)
    repack_over: float = REPACK_OVER  # ... those whose reading costs this many times their data, or more


@dataclasses.dataclass
class PruneResult:
    backups: int = 0
    chunks: int = 0
    chunks_unused: int = 0
    bytes_unused: int = 0
    chunks_deleted: int = 0
    bytes_deleted: int = 0
    incomplete_removed: int = 0
    heads_removed: int = 0
    # Object Lock repositories: unused chunks still locked (kept), until when the last of them is, and how
    # many locks of needed objects prune extended.
    chunks_kept_locked: int = 0
    bytes_kept_locked: int = 0
    locked_until: float = 0.0
    retention_extended: int = 0
    repack: RepackResult = dataclasses.field(default_factory=RepackResult)
    dry_run: bool = False
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DigestPrefixes:
    """A set of digests kept as their first 8 bytes in a sorted array: 8 bytes each, no object each."""

    def __init__(self) -> None:
        self._items = array("Q")

    def add_table(self, digests: bytes | bytearray | memoryview) -> None:
        self._items.extend(int.from_bytes(digests[i:i + 8], "big") for i in range(0, len(digests), 32))

    def freeze(self) -> None:
        self._items = array("Q", sorted(set(self._items)))

    def __contains__(self, digest: bytes) -> bool:
        key = int.from_bytes(digest[:8], "big")
        i = bisect.bisect_left(self._items, key)
        return i < len(self._items) and self._items[i] == key


def run_prune(
    repo: Repository,
    options: PruneOptions,
    progress: Progress | None = None,
    hook: Hook = no_hook,
    config: PipelineConfig | None = None,
) -> PruneResult:
    """Hook points: ``"marked"`` (candidates known, no lock on backups), ``"locked"`` (sweep lock held),
    ``"deleting"`` (after the first batch of deletions)."""
    repo.require_full_key("prune")
    progress = progress or NullProgress()
    config = config or PipelineConfig()
    started = time.monotonic()
    result = PruneResult(dry_run=options.dry_run)
    retention = repo.config.retention()
    if options.repack:  # first, so the chunks the rewritten windows used are deleted below
        result.repack = run_repack(repo, progress, config, dry_run=options.dry_run, over=options.repack_over)
    with repo.locks.acquire("prune", shared=("manifests",), wait=options.wait_lock,
                            notice=progress.notice) as mark_lock:
        seen = set()
        noted = DigestPrefixes()
        refs = repo.list_backups()
        repo.prefetch_manifests(refs)
        for ref in refs:
            _note(repo, ref, noted)
            seen.add(ref.key)
        noted.freeze()
        result.backups = len(seen)
        candidates, sizes = bytearray(), array("Q")
        needed: list[ObjectInfo] = []  # what keeps its lock (Object Lock repositories only)
        now = time.time()
        for obj in repo.store.list(CHUNKS_PREFIX):
            result.chunks += 1
            digest = _digest_of_key(obj.key)
            if digest is None or digest in noted:
                if retention is not None:
                    needed.append(obj)
            elif retention is not None and obj.modified + retention.seconds > now:
                # Surely still locked (written less than a period ago): not worth a refused request.
                result.chunks_kept_locked += 1
                result.bytes_kept_locked += obj.size
                result.locked_until = max(result.locked_until, obj.modified + retention.seconds)
            else:
                candidates += digest
                sizes.append(obj.size)
        result.chunks_unused = len(sizes) + result.chunks_kept_locked
        result.bytes_unused = sum(sizes) + result.bytes_kept_locked
        hook("marked")
        if retention is not None and not options.dry_run:
            needed += [o for prefix in (BACKUPS_PREFIX, KEYS_PREFIX) for o in repo.store.list(prefix)]
            needed += [o for key in (CONFIG_KEY, CONFIG_COPY_KEY) if (o := repo.store.stat(key)) is not None]
            result.retention_extended = refresh_retention(repo, needed, config)
        if options.dry_run:
            result.duration_s = round(time.monotonic() - started, 3)
            return result
        with repo.locks.acquire("prune (deleting)", exclusive=("repo",), wait=options.wait_lock,
                                notice=progress.notice) as sweep_lock:
            hook("locked")
            late = DigestPrefixes()
            for ref in repo.list_backups():
                if ref.key not in seen:  # committed since the mark: what it lists stays
                    _note(repo, ref, late)
            late.freeze()

            def check() -> None:
                mark_lock.check()
                sweep_lock.check()

            _delete(repo, candidates, sizes, late, result, progress, config, check, hook)
            result.incomplete_removed = repo.store.remove_incomplete(time.time() - INCOMPLETE_AGE)
            result.heads_removed = _remove_orphan_heads(repo)
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def _note(repo: Repository, ref: BackupRef, into: DigestPrefixes) -> None:
    try:
        manifest = repo.load_manifest(ref)
    except CorruptDataError as e:
        # Its chunks would look unused: prune nothing until the repository is repaired.
        raise CorruptDataError(f"{e}; prune deletes nothing while a manifest cannot be read "
                               "(run 'cbtbackup verify --repair' first)") from None
    table = manifest.extents
    into.add_table(b"".join(d for i in range(len(table)) if (d := table.digest_at(i)) != ZERO_DIGEST))


def _digest_of_key(key: str) -> bytes | None:
    try:
        digest = bytes.fromhex(key.rsplit("/", 1)[-1])
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def _delete(
    repo: Repository, candidates: bytearray, sizes: array[int], keep: DigestPrefixes, result: PruneResult,
    progress: Progress, config: PipelineConfig, check: Any, hook: Hook,
) -> None:
    lock = threading.Lock()
    progress.start(sum(sizes), "prune")

    def delete(digest: bytes, size: int) -> None:
        try:
            repo.store.delete(repo.chunk_key(digest))
        except RetainedError as e:  # its lock was extended since it was written: it stays until then
            with lock:
                result.chunks_kept_locked += 1
                result.bytes_kept_locked += size
                result.locked_until = max(result.locked_until, e.until)
            return
        with lock:
            result.chunks_deleted += 1
            result.bytes_deleted += size
        progress.advance(size)

    executor = config.make_executor(config.worker_count(repo.store.capabilities().parallelism))
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for n in range(len(sizes)):
            if n % CHECK_EVERY == 0:
                if n:
                    submitter.drain()
                    if n == CHECK_EVERY:
                        hook("deleting")
                check()  # a lock removed under us (unlock --remove-all) stops the deletions
            digest = bytes(candidates[n * 32:(n + 1) * 32])
            if digest not in keep:
                submitter.submit(1 << 20, delete, digest, sizes[n])  # at most 64 deletions in flight
        submitter.drain()
        if 0 < len(sizes) <= CHECK_EVERY:
            hook("deleting")
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    repo.store.sync()
    progress.finish()


def _remove_orphan_heads(repo: Repository) -> int:
    names = {r.name for r in repo.list_backups()}
    removed = 0
    for obj in repo.store.list(HEADS_PREFIX):
        if obj.key[len(HEADS_PREFIX):] not in names:
            repo.store.delete(obj.key)
            removed += 1
    return removed
