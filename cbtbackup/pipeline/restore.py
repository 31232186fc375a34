"""The restore pipeline: resolve the chain → fetch, verify, decompress in parallel → pwrite, sparse.

The chain is folded newest-first into one resolved map, so each stored chunk is fetched once however many
pieces of the image (or backups of the chain) use it, and each byte of the target is written once. A new
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
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cbtbackup.engine.in_use import TargetClaim, claim_for_overwrite
from cbtbackup.errors import CbtError, NotADirError, NotFoundError, UsageError, os_error
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap
from cbtbackup.pipeline.integrity import explain_corruption
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.restore_onto import restore_onto
from cbtbackup.pipeline.restore_stream import stream_image
from cbtbackup.pipeline.restore_windows import whole_windows, zeros_within
from cbtbackup.pipeline.target_io import DirectWriter, pwrite_all, start_writeback
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.chunk_codec import CorruptChunkError
from cbtbackup.repo.manifest import Manifest
from cbtbackup.repo.repository import Repository

ZERO_WRITE = 1 << 20
# Pieces of a megabyte or more are written directly where the file system allows (DirectWriter). A direct
# write returns only once on the device, so for smaller pieces the wait costs more than the copy into the
# page cache saves (a chain's restore, whose fulls' chunks are cut by later changes, took 1.2x as long
# with direct writes from 256 KiB, the same as buffered from 1 MiB). Buffered pieces from 256 KiB start
# their writeback at once (start_writeback); smaller ones are left to the final fsync.
DIRECT_FROM = 1 << 20
WRITEBACK_FROM = 256 << 10


STDOUT = "-"


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    backup: str
    target: str  # a path, or "-" for standard output
    force: bool = False
    onto_existing: bool = False  # write only what differs into an existing copy
    at: float | None = None  # with a chain as ``backup``: its newest backup at or before this time


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


def _group_by_chunk(resolved: ExtentMap) -> tuple[dict[bytes, int], array[int]]:
    """First piece of each chunk, and a next-piece link per piece (-1 ends): one fetch per chunk."""
    first: dict[bytes, int] = {}
    last: dict[bytes, int] = {}
    link = array("i", [-1]) * len(resolved)
    for i in range(len(resolved)):
        d = resolved.digest_at(i)
        if d == ZERO_DIGEST:
            continue
        if d in last:
            link[last[d]] = i
        else:
            first[d] = i
        last[d] = i
    return first, link


def _write_all(
    repo: Repository, resolved: ExtentMap, out: _Target, progress: Progress, config: PipelineConfig
) -> tuple[int, int]:
    first, link = _group_by_chunk(resolved)
    written = [0]
    count_lock = threading.Lock()

    chunk_size, size = repo.config.chunk_size, resolved.end
    # Cut chunks of a chain's fulls are written whole first, then overwritten (restore_windows.py).
    windows = whole_windows(resolved, first, link, chunk_size) \
        if out.direct.available and chunk_size >= DIRECT_FROM else {}

    def restore_chunk(digest: bytes, i: int) -> None:
        data = repo.get_chunk(digest)
        view = memoryview(data)
        window = windows.get(digest)
        whole = window is not None and out.direct.write(view[: size - window], window)
        total = 0
        while i >= 0:
            piece = resolved[i]
            if not whole:
                part = view[piece.chunk_offset: piece.chunk_offset + piece.length]
                if piece.length < DIRECT_FROM or not out.direct.write(part, piece.offset):
                    pwrite_all(out.fd, part, piece.offset)
                    if piece.length >= WRITEBACK_FROM:
                        start_writeback(out.fd, piece.offset, piece.length)
            progress.advance(piece.length)
            total += piece.length
            i = link[i]
        with count_lock:  # tasks finish in several threads at once
            written[0] += total

    def restore_batch(batch: list[tuple[bytes, int]]) -> None:
        for digest, i in batch:
            restore_chunk(digest, i)

    workers = config.worker_count(repo.store.capabilities().parallelism)
    executor = config.make_executor(workers)
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        whole = {digest: first[digest] for digest in windows}
        for batch, nbytes in _batches(resolved, whole, link, chunk_size):
            submitter.submit(nbytes, restore_batch, batch)
        submitter.drain()  # every whole window is written before anything that overwrites part of it
        rest = {digest: i for digest, i in first.items() if digest not in windows}
        for batch, nbytes in _batches(resolved, rest, link, chunk_size):
            submitter.submit(nbytes, restore_batch, batch)
        if not out.fresh:
            _write_zero_pieces(resolved, out.fd, progress)
        else:  # the stale bytes of whole windows where the image holds zeros
            zeros = memoryview(bytes(chunk_size))
            for offset, length in zeros_within(resolved, sorted(windows.values()), chunk_size):
                pwrite_all(out.fd, zeros[:length], offset)
        submitter.drain()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if out.fresh:
        progress.advance(sum(p.length for p in resolved if p.is_zero))
    expected = sum(p.length for p in resolved if not p.is_zero)
    if written[0] != expected:
        raise CbtError(f"restore wrote {written[0]} bytes of data, the map holds {expected}")
    return written[0], len(first)


def _batches(resolved: ExtentMap, first: dict[bytes, int], link: array[int],
             batch_bytes: int) -> Iterator[tuple[list[tuple[bytes, int]], int]]:
    """The chunks to restore, grouped into tasks of about ``batch_bytes`` each, with the bytes they write.

    Chunks of CBT incrementals are often a tracking block or two (64 KiB); one task each costs more in
    task handling and in threads taking turns at the GIL than the chunk's work. A task of about a full
    chunk's worth keeps that cost per megabyte, whatever the chunks' sizes."""
    batch: list[tuple[bytes, int]] = []
    size = 0
    lengths = resolved.lengths
    for digest, i in first.items():
        batch.append((digest, i))
        j = i
        while j >= 0:
            size += lengths[j]
            j = link[j]
        if size >= batch_bytes:
            yield batch, size
            batch, size = [], 0
    if batch:
        yield batch, size


def _write_zero_pieces(resolved: ExtentMap, fd: int, progress: Progress) -> None:
    zeros = memoryview(bytes(ZERO_WRITE))
    for piece in resolved:
        if piece.is_zero:
            for pos in range(piece.offset, piece.end, ZERO_WRITE):
                pwrite_all(fd, zeros[: min(ZERO_WRITE, piece.end - pos)], pos)
            progress.advance(piece.length)
