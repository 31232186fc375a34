"""Repack: rewrite the windows of a full that have become costly to read into whole, aligned chunks.

Why chains age: ``forget`` folds the backups it removes into the next one, so a chain's full ends up made
of what many days wrote — its first full's chunks cut around later changes, and the packs of removed
incrementals (each a chunk of scattered blocks) of which later changes left only a part in use. Every
chunk is read whole, so restoring such a full (and every backup built on it) reads far more than the
image: after 90 daily incrementals of 1 % kept down to 30, the newest restored in 1.6x a fresh full's time.

What is rewritten: the image is cut into chunk-size windows, as a full is stored. For each window of a
full's own map, the bytes a restore reads for it are estimated from the maps alone: each chunk's cost is
shared among the pieces that use it, in proportion to their length, so a chunk used to 60 % costs 1/0.6 of
its used bytes. A window whose reading costs at least ``REPACK_OVER`` (1.2x) its data is read through the
reading core and stored again as one chunk of the window's bytes — the very chunk a full of that image
would store, so it deduplicates with one. Nothing else is read or written. Only fulls are repacked:
incrementals pack their extents when they are written (packing.py), and their packs are wholly theirs.

Crash safety and the image's identity. Every backup's manifest carries the digest of its resolved map,
which a restore checks; rewriting a full changes the map of every backup built on it. So, per full:

1. the new chunks are put and made durable;
2. each backup built on the full is rewritten with ``map_digest_next``: the digest it will have — either
   digest is then accepted;
3. the full's manifest is replaced (one atomic put);
4. each backup built on it gets the new digest as its own and loses ``map_digest_next``.

Killed anywhere, every backup resolves; the next prune finishes step 4 for what is left, and a full not
replaced yet is considered again. The chunks the old windows used are deleted by the prune that follows,
if no backup needs them any more.

Beside running backups: a chain is repacked only while its lock can be taken at once (with the
``manifests`` scope, as ``forget`` takes it, and the ``repo`` scope shared, as a backup takes it); a chain
whose backup runs is left for the next prune, with one line. Repositories under Object Lock are not
repacked: the manifests a repack replaces would stay locked beside the new ones.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Iterable
from typing import Any

from cbtbackup.errors import CbtError, CorruptDataError
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap, overlay, resolve_chain
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.progress import Progress
from cbtbackup.pipeline.restore_windows import Window, windows
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.locks import LockedError
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import Repository

REPACK_OVER = 1.2  # a window is rewritten when reading it costs this many times its data, or more

Notice = Callable[[str], None]


@dataclasses.dataclass
class RepackResult:
    fulls_repacked: int = 0
    windows_rewritten: int = 0
    bytes_rewritten: int = 0  # of the image, read and stored again
    chunks_new: int = 0
    bytes_stored: int = 0  # chunk objects put
    manifests_rewritten: int = 0
    chains_busy: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def chunk_lengths(manifests: Iterable[Manifest]) -> dict[bytes, int]:
    """Each chunk's length as far as the maps tell: the furthest byte any backup uses of it (a chunk's
    unused tail makes it look shorter, so the estimate errs toward not rewriting)."""
    lengths: dict[bytes, int] = {}
    for m in manifests:
        for p in m.extents:
            if not p.is_zero:
                end = p.chunk_offset + p.length
                if end > lengths.get(p.digest, 0):
                    lengths[p.digest] = end
    return lengths


def costly_windows(extents: ExtentMap, chunk_size: int, lengths: dict[bytes, int],
                   over: float = REPACK_OVER) -> list[Window]:
    """The windows of a full's map whose reading costs at least ``over`` times their data."""
    used: collections.Counter[bytes] = collections.Counter()
    for p in extents:
        if not p.is_zero:
            used[p.digest] += p.length
    out = []
    for w in windows(extents, chunk_size):
        data = cost = 0.0
        for p in w.pieces:
            if not p.is_zero:
                data += p.length
                cost += p.length * max(lengths.get(p.digest, 0), used[p.digest]) / used[p.digest]
        if data and cost >= over * data:
            out.append(w)
    return out


def run_repack(repo: Repository, progress: Progress, config: PipelineConfig, dry_run: bool = False,
               over: float = REPACK_OVER) -> RepackResult:
    """Repack the costly windows of every full, chain by chain (the prune step before marking)."""
    result = RepackResult()
    if repo.locked:
        return result
    refs = repo.list_backups()
    repo.prefetch_manifests(refs)
    chains: dict[str, list[BackupRef]] = {}
    for ref in refs:
        chains.setdefault(ref.name, []).append(ref)
    for name, chain_refs in chains.items():
        manifests = [repo.load_manifest(r) for r in chain_refs]
        if not any(m.map_digest_next for m in manifests) and not _costly_fulls(repo, manifests, over):
            continue  # decided without a lock; the lock's holder decides again on fresh manifests
        try:
            with repo.locks.acquire(f"prune (repack {name})", exclusive=(f"chain:{name}", "manifests"),
                                    shared=("repo",)):
                _repack_chain(repo, name, progress, config, dry_run, over, result)
        except LockedError:
            result.chains_busy.append(name)
            progress.notice(f"repack: chain {name} is busy (a backup or forget runs); left for the next prune")
    return result


def _costly_fulls(repo: Repository, manifests: list[Manifest],
                  over: float) -> list[tuple[Manifest, list[Window]]]:
    lengths = chunk_lengths(manifests)
    out = []
    for m in manifests:
        if m.parent is None and m.kind == "full":
            costly = costly_windows(m.extents, m.chunk_size, lengths, over)
            if costly:
                out.append((m, costly))
    return out


def _repack_chain(repo: Repository, name: str, progress: Progress, config: PipelineConfig, dry_run: bool,
                  over: float, result: RepackResult) -> None:
    def fresh() -> dict[str, Manifest]:
        return {r.key: repo.load_manifest(r, fresh=True) for r in repo.list_backups(name)}

    manifests = fresh()
    if not dry_run and _settle(repo, list(manifests.values()), result):
        manifests = fresh()
    for full, costly in _costly_fulls(repo, list(manifests.values()), over):
        if not dry_run:
            try:
                records = _store_windows(repo, costly, progress, config, result)
            except CorruptDataError as e:  # the chunks it put are unused: the sweep deletes them
                progress.notice(f"repack: {full.ref.id} left as it is ({e}); 'cbtbackup verify' reports the damage")
                continue
            _replace_full(repo, full, overlay(records, full.extents), manifests, result)
        result.fulls_repacked += 1
        result.windows_rewritten += len(costly)
        result.bytes_rewritten += sum(w.length for w in costly)
        if dry_run:
            continue
        progress.notice(f"repack: {full.ref.id}: {len(costly)} windows "
                        f"({sum(w.length for w in costly) >> 20} MiB) rewritten into whole chunks")


def _store_windows(repo: Repository, costly: list[Window], progress: Progress, config: PipelineConfig,
                   result: RepackResult) -> ExtentMap:
    """Read each window's bytes through the reading core and store them as one chunk; the new records."""
    uses: collections.Counter[bytes] = collections.Counter()
    for w in costly:
        uses.update({p.digest for p in w.pieces if not p.is_zero})
    workers = config.worker_count(repo.store.capabilities().parallelism)
    chunks = ChunkSource(repo.get_chunk, uses=uses, plan=list(uses), fetchers=workers)
    digests: dict[int, bytes] = {}
    lock = threading.Lock()

    def store(start: int, data: bytes) -> None:
        digest = ZERO_DIGEST if bytes(len(data)) == data else repo.chunk_id(data)
        if digest != ZERO_DIGEST and not repo.has_chunk(digest):
            obj = repo.codec.encode(data, digest)
            repo.put_chunk_object(digest, obj)
            with lock:
                result.chunks_new += 1
                result.bytes_stored += len(obj)
        with lock:
            digests[start] = digest
        progress.advance(len(data))

    progress.start(sum(w.length for w in costly), "repack")
    executor = config.make_executor(workers)
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for w in costly:
            buf = bytearray(w.length)
            seen = set()
            for p in w.pieces:
                if p.is_zero:
                    continue
                chunk = chunks.get(p.digest)
                if p.chunk_offset + p.length > len(chunk):
                    raise CorruptDataError(f"chunk {p.digest.hex()} is shorter than a backup's map says")
                buf[p.offset - w.start: p.end - w.start] = memoryview(chunk)[p.chunk_offset: p.chunk_offset + p.length]
                seen.add(p.digest)
            for digest in seen:
                chunks.release(digest)
            submitter.submit(w.length, store, w.start, bytes(buf))
        submitter.drain()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        chunks.close()
    progress.finish()
    records = ExtentMap()
    for w in costly:
        records.append(w.start, w.length, digests[w.start], 0)
    repo.store.sync()  # the chunks are durable before any manifest names them
    return records


def _descendants(full: Manifest, manifests: list[Manifest]) -> list[Manifest]:
    """The backups whose chain goes through ``full``, parents before children."""
    by_key = {m.ref.key: m for m in manifests}
    out = []
    for m in sorted(manifests, key=lambda m: m.ref.stamp):
        parent = m.parent
        while parent is not None and parent.key != full.ref.key:
            p = by_key.get(parent.key)
            parent = p.parent if p is not None else None
        if parent is not None:
            out.append(m)
    return out


def _chain_maps(m: Manifest, manifests: dict[str, Manifest]) -> list[ExtentMap]:
    maps = [m.extents]
    while m.parent is not None:
        m = manifests[m.parent.key]
        maps.append(m.extents)
    return maps


def _replace_full(repo: Repository, full: Manifest, extents: ExtentMap, manifests: dict[str, Manifest],
                  result: RepackResult) -> None:
    """Steps 2-4 for one full; ``manifests`` (the chain's, by key) is brought up to date."""
    if not full.has_map(full.extents.map_digest()) or not extents.covers(full.device_size):
        raise CbtError(f"backup {full.ref.id} does not resolve to its own map; not repacked")
    new_full = dataclasses.replace(full, extents=extents, map_digest=extents.map_digest(), map_digest_next=None)
    after = dict(manifests)
    after[full.ref.key] = new_full
    later = _descendants(full, list(manifests.values()))
    next_digests = {m.ref.key: _resolved_digest(m, after) for m in later}
    for m in later:  # step 2: either digest holds
        repo.rewrite_manifest(dataclasses.replace(m, map_digest_next=next_digests[m.ref.key]))
        result.manifests_rewritten += 1
    repo.rewrite_manifest(new_full)  # step 3
    manifests[full.ref.key] = new_full
    result.manifests_rewritten += 1
    for m in later:  # step 4
        done = dataclasses.replace(m, map_digest=next_digests[m.ref.key], map_digest_next=None)
        repo.rewrite_manifest(done)
        manifests[m.ref.key] = done
        result.manifests_rewritten += 1


def _resolved_digest(m: Manifest, manifests: dict[str, Manifest]) -> bytes:
    return resolve_chain(_chain_maps(m, manifests)).map_digest()


def _settle(repo: Repository, manifests: list[Manifest], result: RepackResult) -> bool:
    """Finish step 4 of a repack that was killed: a backup whose map is already its next digest takes it as
    its own; one whose full was never replaced drops it."""
    by_key = {m.ref.key: m for m in manifests}
    changed = False
    for m in manifests:
        if m.map_digest_next is None:
            continue
        digest = _resolved_digest(m, by_key)
        if digest == m.map_digest_next:
            repo.rewrite_manifest(dataclasses.replace(m, map_digest=digest, map_digest_next=None))
        elif digest == m.map_digest:
            repo.rewrite_manifest(dataclasses.replace(m, map_digest_next=None))
        else:
            continue  # neither: resolve reports it; nothing here can tell which is right
        result.manifests_rewritten += 1
        changed = True
    return changed
