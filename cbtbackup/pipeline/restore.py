"""The restore pipeline: resolve the chain → per window: fetch, verify, decompress → one write, sparse.

The chain is folded newest-first into one resolved map; the image is then written a window at a time
(``restore_windows.py``), each window put together from all its pieces, so each byte of the target is
written once and each chunk fetched once while the bound on chunks kept between windows allows. A new
target is written under a temporary name beside it and linked into place only when everything checked
out; an existing one (``force``) is written in place.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

from cbtbackup.engine.in_use import TargetClaim, claim_for_overwrite
from cbtbackup.engine.rbd.cluster import CephOptions
from cbtbackup.engine.rbd.names import is_rbd
from cbtbackup.errors import CbtError, NotADirError, NotFoundError, UsageError, os_error
from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.integrity import explain_corruption
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.restore_onto import restore_onto
from cbtbackup.pipeline.restore_stream import stream_image
from cbtbackup.pipeline.restore_windows import Window, window_uses, windows
from cbtbackup.pipeline.target_io import DirectWriter, pwrite_all, start_writeback, zero_range
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.chunk_codec import CorruptChunkError
from cbtbackup.repo.manifest import Manifest
from cbtbackup.repo.repository import Repository

# The image is written in windows of the chunk size, at least this (restore_windows.py), each directly
# where the file system allows (DirectWriter). A direct write returns only once on the device, so for a
# smaller write — the image's last, short window — the wait costs more than the copy into the page cache
# saves (written piece by piece, a chain's restore took 1.2x as long with direct writes from 256 KiB as
# from 1 MiB). Buffered writes from 256 KiB start their writeback at once (start_writeback).
DIRECT_FROM = 1 << 20
WRITEBACK_FROM = 256 << 10
KEPT_BYTES = 64 << 20  # chunks held between the windows that use them


STDOUT = "-"


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    backup: str
    target: str  # a path, rbd:POOL/IMAGE, or "-" for standard output
    force: bool = False
    onto_existing: bool = False  # write only what differs into an existing copy
    at: float | None = None  # with a chain as ``backup``: its newest backup at or before this time
    ceph: CephOptions | None = None  # a target rbd:POOL/IMAGE: which cluster, as whom


@dataclasses.dataclass
class RestoreResult:
    manifest: Manifest
    target: str
    bytes_written: int
    chunks_fetched: int
    duration_s: float
    bytes_read: int = 0  # from the target, by --onto-existing

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.manifest.ref.id,
            "name": self.manifest.ref.name,
            "target": self.target,
            "device_size": self.manifest.device_size,
            "bytes_written": self.bytes_written,
            "bytes_read_from_target": self.bytes_read,
            "chunks_fetched": self.chunks_fetched,
            "duration_s": self.duration_s,
            "throughput_mib_s": round(self.manifest.device_size / (1 << 20) / self.duration_s, 1)
            if self.duration_s else None,
        }


def run_restore(
    repo: Repository, options: RestoreOptions, progress: Progress | None = None, config: PipelineConfig | None = None
) -> RestoreResult:
    repo.require_full_key("restore")
    progress = progress or NullProgress()
    config = config or PipelineConfig()
    started = time.monotonic()
    ref = repo.find_at(options.backup, options.at) if options.at is not None else repo.find(options.backup)
    manifest, resolved = repo.resolve(ref)
    read = 0
    if options.target == STDOUT:
        if options.onto_existing or options.force:
            raise UsageError("--force and --onto-existing write into a file or device, not to standard output")
        if os.isatty(1):
            raise UsageError("refusing to write a disk image to a terminal; pipe it or name a target file")
        try:
            progress.start(manifest.device_size, f"restore {ref.id}")
            written, fetched = stream_image(repo, resolved, 1, progress, config)
            progress.finish()
        except CorruptChunkError as e:
            raise explain_corruption(repo, e) from None
        return RestoreResult(manifest, STDOUT, written, fetched, round(time.monotonic() - started, 3))
    if is_rbd(options.target):
        from cbtbackup.pipeline.restore_rbd import restore_to_rbd  # librados only where it is used
        try:
            progress.start(manifest.device_size, f"restore {ref.id}")
            read, written, fetched = restore_to_rbd(
                repo, resolved, manifest.device_size, options.target, options.ceph or CephOptions(),
                force=options.force, onto_existing=options.onto_existing, progress=progress, config=config)
            progress.finish()
        except CorruptChunkError as e:
            raise explain_corruption(repo, e) from None
        return RestoreResult(manifest, options.target, written, fetched, round(time.monotonic() - started, 3),
                             read)
    target = Path(options.target)
    if options.onto_existing and not _exists(target):
        raise NotFoundError(f"{target}: no such file or device to restore onto")
    out = _Target.open(target, manifest.device_size, options.force or options.onto_existing)
    try:
        progress.start(manifest.device_size, f"restore {ref.id}")
        if options.onto_existing:
            read, written, fetched = restore_onto(repo, resolved, out.fd, progress)
        else:
            written, fetched = _write_all(repo, resolved, out, progress, config)
        progress.finish()
        out.commit()
    except CorruptChunkError as e:
        out.abandon()
        raise explain_corruption(repo, e) from None
    except BaseException:
        out.abandon()
        raise
    return RestoreResult(manifest, str(target), written, fetched, round(time.monotonic() - started, 3), read)


class _Target:
    """Where the image goes: a new file, linked into place only when whole, or a claimed existing one."""

    def __init__(self, path: Path, fd: int, fresh: bool, claim: TargetClaim | None = None,
                 tmp: Path | None = None) -> None:
        self.path, self.fd, self.fresh, self._claim, self._tmp = path, fd, fresh, claim, tmp
        self.direct = DirectWriter(fd)

    @classmethod
    def open(cls, path: Path, size: int, force: bool) -> _Target:
        if _exists(path):
            if not force:
                raise UsageError(f"{path} exists; add --force to overwrite it")
            return cls._existing(path, size)
        parent = path.parent
        if not parent.is_dir():
            if parent.exists():
                raise NotADirError(f"{parent} is not a directory")
            raise NotFoundError(f"{parent}: no such directory")
        _sweep_leftovers(path)
        try:
            # An unnamed file: a restore killed at any moment leaves nothing behind.
            fd = os.open(parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            tmp = None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise os_error(e, f"cannot create {path}") from None
            tmp = path.with_name(f".{path.name}.restoring-{os.getpid()}-{os.urandom(4).hex()}")
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as e2:
                raise os_error(e2, f"cannot create {path}") from None
        try:
            os.ftruncate(fd, size)  # sparse: zero extents are never written
        except OSError as e:
            os.close(fd)
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise os_error(e, f"cannot create {path}") from None
        return cls(path, fd, True, tmp=tmp)

    @classmethod
    def _existing(cls, path: Path, size: int) -> _Target:
        claim = claim_for_overwrite(path)  # refuses anything in use, whatever the flags
        if claim.size < size:
            claim.close()
            raise UsageError(f"{path} is {claim.size} bytes, smaller than the image ({size} bytes)")
        if claim.is_file:
            try:
                os.ftruncate(claim.fd, size)  # the file becomes exactly the image
            except OSError as e:
                claim.close()
                raise os_error(e, f"cannot write {path}") from None
        return cls(path, claim.fd, False, claim=claim)

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            if self.fresh:
                self._link_into_place()
        finally:
            self.abandon()

    def _link_into_place(self) -> None:
        try:
            # link, not rename: never replaces a file that appeared meanwhile
            if self._tmp is not None:
                os.link(self._tmp, self.path)
            else:
                _link_open_file(self.fd, self.path)
        except FileExistsError:
            raise UsageError(f"{self.path} appeared during the restore; nothing was replaced") from None
        except OSError as e:
            raise os_error(e, f"cannot create {self.path}") from None

    def abandon(self) -> None:
        self.direct.close()
        if self._claim is not None:
            self._claim.close()
            self._claim = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def _exists(path: Path) -> bool:
    """Whether anything (a dangling link too) is at ``path``; a name too long is an error of its own."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise os_error(e, f"cannot create {path}") from None
    return True


_AT_FDCWD, _AT_SYMLINK_FOLLOW = -100, 0x400


def _link_open_file(fd: int, path: Path) -> None:
    """Give the unnamed file open at ``fd`` a name (``linkat`` through /proc; os.link cannot follow it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def _sweep_leftovers(path: Path) -> None:
    """Named temporary files of restores that were killed (where unnamed ones are not supported)."""
    for old in path.parent.glob(f".{path.name}.restoring-*"):
        pid = old.name.rsplit("restoring-", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            old.unlink(missing_ok=True)


def _write_all(
    repo: Repository, resolved: ExtentMap, out: _Target, progress: Progress, config: PipelineConfig
) -> tuple[int, int]:
    """Write the image window by window (restore_windows.py); (bytes of data written, chunks fetched)."""
    window_size = max(repo.config.chunk_size, DIRECT_FROM)
    chunks = ChunkSource(repo.get_chunk, uses=window_uses(resolved, window_size), keep_bytes=KEPT_BYTES)
    zeros = memoryview(bytes(window_size))
    written = [0]
    count_lock = threading.Lock()

    def write_window(w: Window) -> None:
        buf = out.direct.buffer(w.length)
        used: dict[bytes, bytes] = {}  # each chunk once per window, however many of its pieces are here
        data_bytes = 0
        try:
            for p in w.pieces:
                at = p.offset - w.start
                if p.is_zero:  # the buffer holds an earlier window's bytes
                    buf[at: at + p.length] = zeros[: p.length]
                    continue
                chunk = used.get(p.digest)
                if chunk is None:
                    chunk = used[p.digest] = chunks.get(p.digest)
                buf[at: at + p.length] = memoryview(chunk)[p.chunk_offset: p.chunk_offset + p.length]
                data_bytes += p.length
            if w.length < DIRECT_FROM or not out.direct.write_buffer(0, w.length, w.start):
                pwrite_all(out.fd, buf[: w.length], w.start)
                if w.length >= WRITEBACK_FROM:
                    start_writeback(out.fd, w.start, w.length)
        finally:
            buf.release()
        for digest in used:
            chunks.release(digest)
        with count_lock:  # tasks finish in several threads at once
            written[0] += data_bytes
        progress.advance(w.length)

    # Four threads a core: a restore's threads mostly wait for chunk reads and direct writes. A chain of 30
    # incrementals, which reads a quarter more than its single full, restored in 1.06-1.15x the full's time
    # with eight threads here, 1.17-1.24x with four.
    workers = config.worker_count(repo.store.capabilities().parallelism, per_core=4)
    executor = config.make_executor(workers)
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for w in windows(resolved, window_size):
            if w.all_zero:
                if not out.fresh:  # an existing target: its stale bytes there become a hole
                    zero_range(out.fd, w.start, w.length)
                progress.advance(w.length)
            else:
                submitter.submit(w.length, write_window, w)
        submitter.drain()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    expected = resolved.stored_bytes()
    if written[0] != expected:
        raise CbtError(f"restore wrote {written[0]} bytes of data, the map holds {expected}")
    return written[0], chunks.fetched
