"""The restore pipeline: resolve the chain → fetch, verify, decompress in parallel → pwrite, sparse.

The chain is folded newest-first into one resolved map, so each stored chunk is fetched once however many
pieces of the image (or backups of the chain) use it, and each byte of the target is written once. A new
target is written under a temporary name beside it and linked into place only when everything checked
out; an existing one (``force``) is written in place.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from cbtbackup.errors import CbtError, NotFoundError, StorageError, UsageError
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap
from cbtbackup.pipeline.integrity import explain_corruption
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.chunk_codec import CorruptChunkError
from cbtbackup.repo.manifest import Manifest
from cbtbackup.repo.repository import Repository

ZERO_WRITE = 1 << 20


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    backup: str
    target: str
    force: bool = False


@dataclasses.dataclass
class RestoreResult:
    manifest: Manifest
    target: str
    bytes_written: int
    chunks_fetched: int
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.manifest.ref.id,
            "name": self.manifest.ref.name,
            "target": self.target,
            "device_size": self.manifest.device_size,
            "bytes_written": self.bytes_written,
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
    ref = repo.find(options.backup)
    manifest, resolved = repo.resolve(ref)
    target = Path(options.target)
    out = _Target.open(target, manifest.device_size, options.force)
    try:
        progress.start(manifest.device_size, f"restore {ref.id}")
        written, fetched = _write_all(repo, resolved, out, progress, config)
        progress.finish()
        out.commit()
    except CorruptChunkError as e:
        out.abandon()
        raise explain_corruption(repo, e) from None
    except BaseException:
        out.abandon()
        raise
    return RestoreResult(manifest, str(target), written, fetched, round(time.monotonic() - started, 3))


class _Target:
    """Where the image goes: a new sparse file linked into place at the end, or an existing file/device."""

    def __init__(self, path: Path, fd: int, tmp: Path | None, fresh: bool) -> None:
        self.path, self.fd, self._tmp, self.fresh = path, fd, tmp, fresh

    @classmethod
    def open(cls, path: Path, size: int, force: bool) -> _Target:
        if path.exists() or path.is_symlink():
            if not force:
                raise UsageError(f"{path} exists; add --force to overwrite it")
            return cls._existing(path, size)
        if not path.parent.is_dir():
            raise NotFoundError(f"{path.parent}: no such directory")
        tmp = path.with_name(f".{path.name}.restoring-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, size)  # sparse: zero extents are never written
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot create {path}: {e.strerror}") from e
        return cls(path, fd, tmp, fresh=True)

    @classmethod
    def _existing(cls, path: Path, size: int) -> _Target:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory") from None
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}") from e
        st = os.fstat(fd)
        have = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        if have < size:
            os.close(fd)
            raise UsageError(f"{path} is {have} bytes, smaller than the image ({size} bytes)")
        if stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, size)  # the file becomes exactly the image
        return cls(path, fd, None, fresh=False)

    def commit(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self._tmp is not None:
            try:
                os.link(self._tmp, self.path)  # never replaces a file that appeared meanwhile
            except FileExistsError:
                raise UsageError(f"{self.path} appeared during the restore; the image is at {self._tmp}") from None
            self._tmp.unlink()

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


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

    def restore_chunk(digest: bytes, i: int) -> None:
        data = repo.get_chunk(digest)
        view = memoryview(data)
        total = 0
        while i >= 0:
            piece = resolved[i]
            _pwrite_all(out.fd, view[piece.chunk_offset: piece.chunk_offset + piece.length], piece.offset)
            progress.advance(piece.length)
            total += piece.length
            i = link[i]
        with count_lock:  # tasks finish in several threads at once
            written[0] += total

    workers = config.worker_count(repo.store.capabilities().parallelism)
    executor = config.make_executor(workers)
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for digest, i in first.items():
            submitter.submit(repo.config.chunk_size, restore_chunk, digest, i)
        if not out.fresh:
            _write_zero_pieces(resolved, out.fd, progress)
        submitter.drain()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if out.fresh:
        progress.advance(sum(p.length for p in resolved if p.is_zero))
    expected = sum(p.length for p in resolved if not p.is_zero)
    if written[0] != expected:
        raise CbtError(f"restore wrote {written[0]} bytes of data, the map holds {expected}")
    return written[0], len(first)


def _write_zero_pieces(resolved: ExtentMap, fd: int, progress: Progress) -> None:
    zeros = memoryview(bytes(ZERO_WRITE))
    for piece in resolved:
        if piece.is_zero:
            for pos in range(piece.offset, piece.end, ZERO_WRITE):
                _pwrite_all(fd, zeros[: min(ZERO_WRITE, piece.end - pos)], pos)
            progress.advance(piece.length)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    except OSError as e:
        raise StorageError(f"write to the restore target failed: {e.strerror}") from e
