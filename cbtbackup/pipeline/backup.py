"""The backup pipeline: snapshot → plan extents → read → BLAKE3 + zstd (pool) → store (pool) → manifest.

The main thread reads extents in order from the snapshot image; a pool hashes, compresses and stores
them with a bounded number of bytes in flight. Chunks already in the chain are not even looked up; other
chunks are looked up once (an interrupted earlier run may have stored them) and put if missing. The
manifest is written last, after the chunks are durable, and the snapshot is destroyed on every path.
A CBT incremental packs its extents shorter than a chunk into shared chunks (``packing.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

from cbtbackup.engine.cbt import changed_runs, plan_incremental
from cbtbackup.engine.providers import (
    AttachedProvider,
    BlksnapProvider,
    Provider,
    SnapshotSession,
    UserspaceProvider,
    blksnap_group,
    choose_provider,
)
from cbtbackup.engine.providers.group import (
    AttachedGroup,
    SnapshotGroup,
    UserspaceGroup,
    check_one_kind,
    describe,
)
from cbtbackup.errors import CorruptDataError, UsageError
from cbtbackup.model.checkpoint import CbtCheckpoint
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap, Piece, overlay
from cbtbackup.pipeline.chains import candidate_names, chain_for, this_host
from cbtbackup.pipeline.differential import LAST_FULL, resolve_since
from cbtbackup.pipeline.hooks import Hook, no_hook
from cbtbackup.pipeline.packing import ExtentPacker, Pack, ScanPacker
from cbtbackup.pipeline.plan import Extent, aligned_extents, cbt_extents, lost_runs, merge_runs, read_spans
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.scan_compare import PreviousImage
from cbtbackup.pipeline.synthesize import synthesize
from cbtbackup.pipeline.tracking_check import (
    TrackingCheck,
    UnchangedSample,
    check_sampled,
    check_unchanged,
    draw_sample,
)
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.chunk_presence import ChunkPresence
from cbtbackup.repo.locks import HeldLock
from cbtbackup.repo.manifest import BackupRef, BackupStats, Manifest, check_name
from cbtbackup.repo.repository import Repository

if TYPE_CHECKING:  # the QEMU provider loads asyncio, the RBD one librados: imported only where used
    from cbtbackup.engine.qemu.provider import QemuProvider
    from cbtbackup.engine.rbd.cluster import CephOptions
    from cbtbackup.engine.rbd.provider import RbdProvider

log = logging.getLogger(__name__)  # the steps ``-v`` shows (cli/output.py)
READ_SPAN = 8 << 20  # consecutive extents are read from the snapshot this many bytes at a time
SCAN_BLOCK = 64 << 10  # what a scan compares at when nothing tracks the source: blksnap's tracking block


class SourceSizeChangedError(UsageError):
    """``incr`` found the source at another size than its previous backup."""


@dataclasses.dataclass(frozen=True)
class BackupOptions:
    source: str
    kind: Literal["full", "incr"]
    name: str | None = None
    provider: str = "auto"
    state_dir: str | None = None
    freeze: str | None = None  # a mounted file system to freeze around the take (attached volumes, blksnap)
    diff_storage: str | None = None  # blksnap: where the module keeps old chunks
    diff_storage_limit: int | None = None
    rename_source: bool = False  # allow --name's chain to hold backups of another source path
    wait_lock: float = 0.0  # seconds to wait for another writer of the chain (or a prune) to finish
    synthetic_full_every: int = 0  # after an incremental, synthesize a full once the chain has this many
    qmp: str | None = None  # qemu: a running VM's QMP socket ...
    device: str | None = None  # ... and the node or drive name of the disk in it
    devices: tuple[str, ...] = ()  # a group of a VM's disks: each source's node or drive name, in order
    ceph: CephOptions | None = None  # rbd: which cluster, as whom
    # A CBT incremental re-reads this sample of the blocks reported unchanged (tracking_check.py).
    unchanged_sample: UnchangedSample = dataclasses.field(default_factory=UnchangedSample)
    since: str | None = None  # incr: a differential against this earlier backup (an id, or "full")
    keep_base: bool = False  # qemu, rbd: keep what a later differential against this backup needs


@dataclasses.dataclass
class BackupResult:
    manifest: Manifest
    notes: list[str]
    synthetic: str | None = None  # the id of a synthetic full made right after this backup
    tracking_mismatch: str | None = None  # the tracking under-reported: what the check found (then a scan)

    def to_json(self) -> dict[str, Any]:
        m, s = self.manifest, self.manifest.stats
        return {
            "id": m.ref.id,
            "name": m.ref.name,
            "source": m.source,
            "kind": m.kind,
            "method": m.method,
            "parent": m.parent.id if m.parent else None,
            "provider": m.provider,
            "device_size": m.device_size,
            **dataclasses.asdict(s),
            "throughput_mib_s": round(s.bytes_scanned / (1 << 20) / s.duration_s, 1) if s.duration_s else None,
            "notes": self.notes,
            "synthetic_full": self.synthetic,
            "tracking_mismatch": self.tracking_mismatch,
        }


def run_backup(
    repo: Repository,
    options: BackupOptions,
    progress: Progress | None = None,
    config: PipelineConfig | None = None,
    hook: Hook = no_hook,
) -> BackupResult:
    """Snapshot one source and back it up into its chain, holding the chain's lock.

    Hook points: ``"snapshot-taking"`` (the chain is locked, the snapshot is about to be taken; a job's
    ``before_snapshot`` hook quiesces here), ``"snapshot-taken"`` (the snapshot is held, nothing read yet) and
    ``"before-commit"`` (every chunk is stored, the manifest is not written)."""
    progress = progress or NullProgress()
    provider = choose_provider(options.source, options.provider, state_dir=options.state_dir, freeze=options.freeze,
                               diff_storage=options.diff_storage, diff_storage_limit=options.diff_storage_limit,
                               notice=progress.notice, qmp=options.qmp, device=options.device,
                               ceph=options.ceph)
    log.info("%s of %s through the %s provider", options.kind, provider.source, provider.name)
    explicit = check_name(options.name) if options.name else None
    _check_since(options)
    if options.synthetic_full_every:
        repo.require_full_key("--synthetic-full-every")
    with _chain_lock(repo, options, candidate_names(provider.source, explicit), progress) as lock:
        name = chain_for(repo, provider.source, explicit, options.rename_source)
        log.info("chain %s; lock held", name)
        base = resolve_since(repo, name, options.since) if options.since else None
        _tell_history(repo, provider, options, name, base)
        hook("snapshot-taking")
        taking = time.monotonic()
        with provider.open_snapshot() as session:
            log.info("snapshot taken in %.2f s", time.monotonic() - taking)
            hook("snapshot-taken")
            result = backup_session(repo, session, options.kind, name, progress, config, _checked(lock, hook),
                                    options.unchanged_sample, base)
        if options.kind == "incr" and options.synthetic_full_every > 0:
            _maybe_synthesize(repo, result, options.synthetic_full_every, progress)
        return result


def _tell_history(repo: Repository, provider: Provider, options: BackupOptions, name: str,
                  base: BackupRef | None) -> None:
    """QEMU and RBD decide themselves which bitmaps or snapshot vouch for the writes since the parent: tell
    them the parent's checkpoint, the newest backup's (to find a killed run's leftovers) and --keep-base."""
    if provider.name not in ("qemu", "rbd", "lvmthin"):
        return
    latest = repo.latest(name)
    parent = (base or latest) if options.kind == "incr" else None
    keeper = cast("QemuProvider", provider)
    keeper.since = _checkpoint_of(repo, parent, provider.source)
    keeper.newest = _checkpoint_of(repo, latest, provider.source)
    keeper.keep_base = options.keep_base


def _check_since(options: BackupOptions) -> None:
    if options.since is not None and options.kind != "incr":
        raise UsageError("--since is for incr: a full depends on no earlier backup")


def _checkpoint_of(repo: Repository, parent: BackupRef | None, source: str) -> CbtCheckpoint | None:
    if parent is None:
        return None
    try:
        manifest = repo.load_manifest(parent)
    except CorruptDataError:
        return None  # the backup then starts anew, and says why
    return manifest.cbt if manifest.source == source else None


def _chain_lock(repo: Repository, options: BackupOptions, names: list[str], progress: Progress) -> HeldLock:
    return repo.locks.acquire(f"{options.kind} backup of {', '.join(names)}", wait=options.wait_lock,
                              exclusive=tuple(f"chain:{n}" for n in names), shared=("repo",),
                              notice=progress.notice)


def _checked(lock: HeldLock, hook: Hook) -> Hook:
    """The caller's hook, and the lock check before anything is committed."""
    def run(point: str) -> None:
        hook(point)
        if point == "before-commit":
            lock.check()
    return run


def _maybe_synthesize(repo: Repository, result: BackupResult, every: int, progress: Progress) -> None:
    """Forever-forward incremental: once a chain has ``every`` incrementals, its newest becomes a full."""
    chain = repo.chain(result.manifest.ref)
    if len(chain) - 1 >= every:
        synthetic = synthesize(repo, result.manifest.ref)
        result.synthetic = synthetic.ref.id
        message = (f"synthetic full {synthetic.ref.id} made from {result.manifest.ref.id} "
                   f"({len(chain) - 1} incrementals in its chain)")
        result.notes.append(message)
        progress.notice(message)


def run_group_backup(
    repo: Repository,
    options: BackupOptions,
    sources: list[str],
    progress: Progress | None = None,
    config: PipelineConfig | None = None,
    hook: Hook = no_hook,
) -> list[BackupResult]:
    """Several sources of one provider taken at one instant (a consistency group), each into its own chain.

    Hook points as :func:`run_backup`'s, once for the group (``before-commit`` once per member)."""
    if options.name:
        raise UsageError("--name names one chain; in a group each source goes into its own chain")
    if options.provider not in ("auto", "userspace", "blksnap", "qemu", "rbd"):
        raise UsageError(f"a group at one instant needs the userspace, blksnap, qemu or rbd provider, not "
                         f"{options.provider}")
    if options.devices and len(options.devices) != len(sources):
        raise UsageError(f"--device names each source's disk in the VM: {len(sources)} sources, "
                         f"{len(options.devices)} --device")
    _check_since(options)
    if options.since not in (None, LAST_FULL):
        raise UsageError("the sources of a group go into several chains: --since takes 'full' (each chain's "
                         "last full) there, not one backup id")
    progress = progress or NullProgress()
    providers = [choose_provider(source, options.provider, state_dir=options.state_dir, freeze=options.freeze,
                                 diff_storage=options.diff_storage,
                                 diff_storage_limit=options.diff_storage_limit, notice=progress.notice,
                                 qmp=options.qmp, device=options.devices[i] if options.devices else None,
                                 ceph=options.ceph)
                 for i, source in enumerate(sources)]
    check_one_kind(providers)
    if not isinstance(providers[0], (AttachedProvider, UserspaceProvider, BlksnapProvider)) \
            and providers[0].name not in ("qemu", "rbd"):
        raise UsageError(f"{describe(providers[0])} cannot be taken in a group with others; back each source "
                         "up with its own command")
    names = [n for p in providers for n in candidate_names(p.source, None)]
    with _chain_lock(repo, options, names, progress) as lock:
        chains = {p.source: chain_for(repo, p.source, None, False) for p in providers}
        bases = {c: resolve_since(repo, c, options.since) if options.since else None for c in chains.values()}
        for p in providers:
            _tell_history(repo, p, options, chains[p.source], bases[chains[p.source]])
        hook("snapshot-taking")
        group = _open_group(providers, options, progress)
        try:
            hook("snapshot-taken")
            results = []
            for session in group.sessions:
                chain = chains[session.source]
                results.append(backup_session(repo, session, options.kind, chain, progress, config,
                                              _checked(lock, hook), options.unchanged_sample, bases[chain]))
            return results
        finally:
            group.close()


def _open_group(providers: list[Provider], options: BackupOptions, progress: Progress) -> SnapshotGroup:
    first = providers[0]
    if isinstance(first, AttachedProvider):
        return AttachedGroup(cast("list[AttachedProvider]", providers))
    if isinstance(first, UserspaceProvider):
        return UserspaceGroup(cast("list[UserspaceProvider]", providers))
    if first.name == "qemu":
        from cbtbackup.engine.qemu.provider import QemuGroup
        return QemuGroup(cast("list[QemuProvider]", providers))
    if first.name == "rbd":
        from cbtbackup.engine.rbd.group import RbdGroup
        return RbdGroup(cast("list[RbdProvider]", providers), progress.notice)
    devices = [d for p in cast("list[BlksnapProvider]", providers) for d in p.devices]
    return blksnap_group(devices, options.diff_storage, options.diff_storage_limit, freeze=options.freeze,
                         notice=progress.notice).open_group()


def backup_session(
    repo: Repository,
    session: SnapshotSession,
    kind: Literal["full", "incr"],
    name: str,
    progress: Progress | None = None,
    config: PipelineConfig | None = None,
    hook: Hook = no_hook,
    unchanged_sample: UnchangedSample | None = None,
    since: BackupRef | None = None,
) -> BackupResult:
    """Back up one taken snapshot into the chain ``name``; the caller owns (and destroys) the snapshot and
    holds the chain's lock. ``since``: the base of a differential (default: the chain's newest backup)."""
    progress = progress or NullProgress()
    config = config or PipelineConfig()
    started = time.monotonic()
    parent = (since or repo.latest(name)) if kind == "incr" else None
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        progress.notice(message)

    differential = since is not None and since != repo.latest(name)
    if differential:
        note(f"differential: the changes since backup {since.id if since else ''}")
    if kind == "incr" and parent is None:
        why = repo.why_no_latest(name)
        note(f"no previous backup named {name!r}: taking a full backup" if not why else
             f"{why}: taking a full backup (it stores only the chunks the repository lacks)")
    size = session.image.size
    prev_manifest, prev_map = None, None
    if parent is not None:
        try:
            prev_manifest, prev_map = repo.resolve(parent)
        except CorruptDataError as e:  # a damaged history never blocks a backup: start a new chain
            note(f"the previous backup {parent.id} cannot be used ({e}): taking a full backup")
            parent = None
    if prev_manifest is not None and prev_manifest.device_size != size and session.full_when_resized:
        note(f"{session.source} was resized ({prev_manifest.device_size} -> {size} bytes) since its previous "
             f"backup {prev_manifest.ref.id}: taking a full backup")
        parent, prev_manifest, prev_map = None, None, None
    if prev_manifest is not None and prev_manifest.device_size != size:
        raise SourceSizeChangedError(
            f"{session.source} is {size} bytes but its previous backup {prev_manifest.ref.id} was "
            f"{prev_manifest.device_size}; run a full backup"
        )
    lost = repo.quarantined_chunks() if prev_map is not None else set()
    check = _Check(unchanged_sample if unchanged_sample is not None else UnchangedSample())
    method, extents, total, previous = _plan(session, prev_manifest, prev_map, repo, lost, note, check,
                                             f"the base backup {parent.id}" if differential and parent else "")
    log.info("%s backup by %s: %d bytes to read of %d, parent %s", "full" if prev_map is None else "incremental",
             method, total, size, parent.id if parent is not None and prev_map is not None else "none")
    progress.start(total, f"{'full' if prev_map is None else 'incr'} {name}")
    # Chunks of the chain are known to exist — except those verify found bad or missing.
    known = _digests(prev_map) - lost if prev_map is not None else set()
    # A scan looks up only what differs, which is not known before reading: its chunks are asked one by one.
    expected_lookups = 0 if method == "scan" else -(-total // repo.config.chunk_size)
    writer = _ChunkWriter(repo, known, repo.chunk_presence(expected_lookups))
    own = _run_chunks(session, extents, previous, writer, progress, config, repo, pack=method == "cbt")
    progress.finish()
    session.check_intact()  # a snapshot that lost data while it was read must not become a backup
    resolved = own if prev_map is None else overlay(own, prev_map)
    writer.stats.duration_s = round(time.monotonic() - started, 3)
    writer.stats.bytes_sampled_unchanged = check.result.bytes_checked if check.result else 0
    lied = check.result is not None and check.result.mismatch is not None
    mismatch_line = check.result.describe(session.source) if lied and check.result else ""
    writer.stats.tracking_mismatches = int(lied)
    manifest = Manifest(
        ref=BackupRef.new(name),
        kind="full" if prev_map is None else "incr",
        method=method,
        parent=parent if prev_map is not None else None,
        created=time.time(),
        source=session.source,
        host=this_host(),
        provider=session.provider,
        device_size=size,
        chunk_size=repo.config.chunk_size,
        map_digest=resolved.map_digest(),
        extents=own,
        # Tracking that lied vouches for nothing: no checkpoint, so the next incremental scans too.
        cbt=session.cbt.info.checkpoint() if session.cbt and not lied else None,
        stats=writer.stats,
    )
    log.info("read and stored in %.2f s: %d new chunks, %d reused; writing the manifest",
             writer.stats.duration_s, writer.stats.chunks_new, writer.stats.chunks_reused)
    # A host that cannot read the repository back samples now what the next incremental checks the tracking
    # against (tracking_check.py).
    sample = () if repo.can_read else draw_sample(
        session.image, session.cbt.info.block_size if session.cbt else SCAN_BLOCK, check.sample, repo.chunk_id)
    hook("before-commit")
    repo.save_manifest(manifest, resolved=resolved, sample=sample)
    log.info("backup %s committed", manifest.ref.id)
    if lied:  # the tracker keeps a short reason (64 bytes): the whole line is in this backup's notes
        session.distrust("a backup caught the tracking under-reporting")
    else:
        session.committed()
    return BackupResult(manifest, notes, tracking_mismatch=mismatch_line or None)


def _plan(
    session: SnapshotSession,
    prev: Manifest | None,
    prev_map: ExtentMap | None,
    repo: Repository,
    lost: set[bytes],
    note: Any,
    check: _Check,
    base_label: str = "",
) -> tuple[str, Iterator[Extent], int, PreviousImage | None]:
    """Method, extents to read, bytes to read, and what a scan compares against. ``base_label`` names the
    base of a differential in the lines that say why a scan (default: "the previous backup")."""
    size, chunk_size = session.image.size, repo.config.chunk_size
    if prev is None or prev_map is None:
        return "full", aligned_extents(size, chunk_size), size, None
    if session.cbt is not None:
        if prev.source != session.source:
            decision_ok, reason = False, f"the previous backup was of {prev.source}"
        else:
            decision = plan_incremental(prev.cbt, session.cbt.info)
            decision_ok, reason = decision.use_cbt, decision.reason
            if prev.cbt is not None and prev.cbt.generation_id != session.cbt.info.generation_id \
                    and session.cbt.reset_reason:
                reason = f"the CBT generation changed since the previous backup ({session.cbt.reset_reason})"
            elif prev.cbt is None and prev.stats.tracking_mismatches:
                reason = "the previous backup caught the change tracking under-reporting, so it vouches for nothing"
        if decision_ok and prev.cbt is not None:
            info = session.cbt.info
            runs = list(changed_runs(session.cbt.map, prev.cbt.changes_number))
            damaged = lost_runs(prev_map, lost, info.block_size)
            if damaged:  # read again what the chain lost, so this backup stores it anew
                note(f"re-reading {len(damaged)} range(s) whose chunks verify found bad or missing")
                runs = merge_runs(runs, damaged)
            sampled = repo.tracking_sample(prev.ref)
            if sampled is not None:  # write-only: the blocks sampled when the previous backup was written
                check.result = check_sampled(session.image, runs, info.block_size, sampled, repo.chunk_id)
            else:
                check.result = check_unchanged(session.image, runs, info.block_size,
                                               PreviousImage(prev_map, repo.get_chunk, info.block_size, lost),
                                               repo.chunk_id, check.sample)
            if check.result.mismatch is None:
                total = sum(min(size, (f + n) * info.block_size) - f * info.block_size for f, n in runs)
                return "cbt", cbt_extents(runs, info.block_size, size, chunk_size), total, None
            note(f"warning: {check.result.describe(session.source)}; this backup reads everything "
                 f"(scan incremental) and the tracking is reset")
        else:
            if base_label:
                reason = reason.replace("the previous backup", base_label)
                if session.provider in ("qemu", "rbd", "lvmthin"):
                    reason += f" ({session.provider} keeps what a differential needs only for --keep-base backups)"
            note(f"scan incremental: {reason}")
    block_size = session.cbt.info.block_size if session.cbt is not None else SCAN_BLOCK
    if prev.cbt is not None:
        block_size = min(block_size, prev.cbt.block_size)
    return "scan", aligned_extents(size, chunk_size), size, PreviousImage(prev_map, repo.get_chunk, block_size, lost)


@dataclasses.dataclass
class _Check:
    sample: UnchangedSample
    result: TrackingCheck | None = None


def _digests(m: ExtentMap) -> set[bytes]:
    return {m.digest_at(i) for i in range(len(m))} - {ZERO_DIGEST}


class _ChunkWriter:
    """Stores chunks once: known ones are skipped, others looked up once and put if missing."""

    def __init__(self, repo: Repository, known: set[bytes], presence: ChunkPresence) -> None:
        self._repo = repo
        self._seen = known
        self._presence = presence
        self._lock = threading.Lock()
        self.stats = BackupStats()

    def count_changed(self, nbytes: int) -> None:
        with self._lock:
            self.stats.bytes_changed += nbytes

    def store(self, digest: bytes, data: bytes | memoryview) -> None:
        with self._lock:
            fresh = digest not in self._seen
            self._seen.add(digest)
        if fresh and not self._presence.has(digest):
            obj = self._repo.codec.encode(data, digest)
            self._repo.put_chunk_object(digest, obj)
            with self._lock:
                self.stats.chunks_new += 1
                self.stats.bytes_stored += len(obj)
        else:
            if fresh:  # found, not the chain's: perhaps a killed run's, not yet durable
                self._repo.depend_on_chunk(digest)
            with self._lock:
                self.stats.chunks_reused += 1
                self.stats.bytes_reused += len(data)


_zeros: dict[int, bytes] = {}


def _is_zero(data: bytes | memoryview) -> bool:
    zeros = _zeros.get(len(data))
    if zeros is None:
        zeros = _zeros[len(data)] = bytes(len(data))
    # startswith compares with memcmp whatever the buffer; memoryview's == goes item by item.
    return zeros.startswith(data)


def _run_chunks(
    session: SnapshotSession,
    extents: Iterator[Extent],
    previous: PreviousImage | None,
    writer: _ChunkWriter,
    progress: Progress,
    config: PipelineConfig,
    repo: Repository,
    pack: bool = False,
) -> ExtentMap:
    """Read, hash, compress and store the planned extents; the map of what was stored.

    With ``pack`` (a CBT incremental), extents shorter than a chunk share chunks (see packing.py)."""
    results = _Results()
    chunk_size = repo.config.chunk_size

    def process(seq: int, data: bytes | memoryview, pieces: list[Piece] | None) -> None:
        digest = ZERO_DIGEST if _is_zero(data) else repo.chunk_id(data)
        if pieces is None or previous is None:
            if digest != ZERO_DIGEST:
                writer.store(digest, data)
            results.keep(seq, digest)
            writer.count_changed(len(data))
        else:
            offset = results.offset(seq)
            parts = previous.changed_parts(offset, data, digest, pieces)
            if parts == [(offset, len(data))]:
                if digest != ZERO_DIGEST:
                    writer.store(digest, data)
                results.keep(seq, digest)
            else:
                stored: list[list[Any]] = []
                small: list[tuple[int, bytes]] = []
                for start, length in parts:
                    piece = data[start - offset: start - offset + length]
                    if _is_zero(piece):
                        stored.append([start, length, ZERO_DIGEST, 0])
                    else:  # packed with the other parts that follow in image order (ScanPacker)
                        small.append((len(stored), bytes(piece)))
                        stored.append([start, length, ZERO_DIGEST, 0])
                results.keep_parts(seq, stored)
                assert scan_packer is not None  # a scan compares with the previous image, so it packs
                scan_packer.offer(seq, small)
                writer.count_changed(sum(length for _, length in parts))
                progress.advance(len(data))
                return
            writer.count_changed(sum(length for _, length in parts))
        if scan_packer is not None and pieces is not None:
            scan_packer.offer(seq, [])
        progress.advance(len(data))

    def process_pack(packed: Pack) -> None:
        data = memoryview(packed.data)
        digest = repo.chunk_id(data)
        writer.store(digest, data)
        for seq, chunk_offset, _ in packed.members:
            results.keep(seq, digest, chunk_offset)
        writer.count_changed(len(packed))
        progress.advance(len(packed))

    def store_scan_pack(packed: Pack, parts: list[tuple[int, int]]) -> None:
        data = memoryview(packed.data)
        digest = repo.chunk_id(data)
        writer.store(digest, data)
        for number, chunk_offset, _ in packed.members:
            seq, index = parts[number]
            results.pack_part(seq, index, digest, chunk_offset)

    packer = ExtentPacker(chunk_size) if pack else None
    scan_packer = ScanPacker(chunk_size, store_scan_pack) if previous is not None else None

    def checked_process(seq: int, data: bytes | memoryview, pieces: list[Piece] | None) -> None:
        try:
            process(seq, data, pieces)
        except BaseException:
            if scan_packer is not None:
                scan_packer.abort()  # later extents must not wait for this one's parts
            raise

    workers = config.worker_count(repo.store.capabilities().parallelism)
    executor = config.make_executor(workers)
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for span in read_spans(extents, READ_SPAN):
            start = span[0][0]
            read = memoryview(session.image.read(start, span[-1][0] + span[-1][1] - start))
            for offset, length in span:
                # A view, not a copy: each extent of the span is hashed, compressed and written from the
                # one buffer of the read.
                data = read if len(span) == 1 else read[offset - start: offset - start + length]
                writer.stats.bytes_scanned += length
                seq = results.plan(offset, length)
                if packer is not None and length < chunk_size and not _is_zero(data):
                    full = packer.add(seq, data)
                    if full is not None:
                        submitter.submit(len(full), process_pack, full)
                    continue
                pieces = previous.pieces(offset, length) if previous else None
                submitter.submit(length, checked_process, seq, data, pieces)
        last = packer.flush() if packer is not None else None
        if last is not None:
            submitter.submit(len(last), process_pack, last)
        submitter.drain()
        if scan_packer is not None:
            scan_packer.flush()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return results.to_map()


class _Results:
    """What each planned extent came to, in plan order, in packed arrays (about 49 bytes an extent).

    The reader thread plans slots; workers fill them in any order. Every call is one operation on a
    bytearray or an array, which the interpreter does whole, so no lock is needed.
    """

    def __init__(self) -> None:
        self._offsets = array("Q")
        self._lengths = array("I")
        self._digests = bytearray()
        self._chunk_offsets = array("I")  # nonzero for an extent packed with others into a shared chunk
        self._kept = bytearray()  # 0: unchanged, 1: kept whole, 2: kept in parts
        self._parts: dict[int, list[list[Any]]] = {}

    def plan(self, offset: int, length: int) -> int:
        self._offsets.append(offset)
        self._lengths.append(length)
        self._digests += ZERO_DIGEST
        self._chunk_offsets.append(0)
        self._kept.append(0)
        return len(self._kept) - 1

    def offset(self, seq: int) -> int:
        return self._offsets[seq]

    def keep(self, seq: int, digest: bytes, chunk_offset: int = 0) -> None:
        self._digests[seq * 32: seq * 32 + 32] = digest
        self._chunk_offsets[seq] = chunk_offset
        self._kept[seq] = 1

    def keep_parts(self, seq: int, parts: list[list[Any]]) -> None:
        """A scan kept only some runs of the extent (a dict entry: rare, one per partly changed extent), each
        ``[offset, length, digest, chunk offset]``; a packed run's digest is set once its pack is stored."""
        self._parts[seq] = parts
        self._kept[seq] = 2

    def pack_part(self, seq: int, index: int, digest: bytes, chunk_offset: int) -> None:
        part = self._parts[seq][index]
        part[2], part[3] = digest, chunk_offset

    def to_map(self) -> ExtentMap:
        out = ExtentMap()
        for seq, kept in enumerate(self._kept):
            if kept == 1:
                out.append(self._offsets[seq], self._lengths[seq], bytes(self._digests[seq * 32: seq * 32 + 32]),
                           self._chunk_offsets[seq])
            elif kept == 2:
                for offset, length, digest, chunk_offset in self._parts[seq]:
                    out.append(offset, length, digest, chunk_offset)
        return out
