"""Checking stored chunks, and naming the backups a bad chunk breaks."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from cbtbackup.errors import CbtError, CorruptDataError, NotFoundError
from cbtbackup.model.extent_map import ZERO_DIGEST
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.workers import BoundedSubmitter, PipelineConfig
from cbtbackup.repo.chunk_codec import CorruptChunkError
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import Repository


class DamagedBackupError(CorruptDataError):
    """Chunks some backups need are corrupt or missing."""


def backups_needing(repo: Repository, digests: set[bytes]) -> dict[bytes, list[BackupRef]]:
    """For each digest, the backups whose restored image uses it."""
    needed: dict[bytes, list[BackupRef]] = {d: [] for d in digests}
    for ref in repo.list_backups():
        try:
            _, resolved = repo.resolve(ref)
        except CbtError:
            continue
        present = {resolved.digest_at(i) for i in range(len(resolved))} & digests
        for d in present:
            needed[d].append(ref)
    return needed


def _describe(bad: dict[bytes, str], needed: dict[bytes, list[BackupRef]]) -> str:
    parts = []
    for digest, why in bad.items():
        users = ", ".join(f"{r.id} ({r.name})" for r in needed.get(digest, [])) or "none"
        parts.append(f"chunk {digest.hex()} {why}; backups affected: {users}")
    return "; ".join(parts)


def explain_corruption(repo: Repository, error: CorruptChunkError) -> DamagedBackupError:
    needed = backups_needing(repo, {error.digest})
    return DamagedBackupError(_describe({error.digest: "is corrupt"}, needed))


@dataclasses.dataclass
class VerifyResult:
    backups: list[BackupRef]
    chunks_checked: int
    bytes_checked: int

    def to_json(self) -> dict[str, Any]:
        return {
            "backups": [r.id for r in self.backups],
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "ok": True,
        }


def run_verify(
    repo: Repository, backup: str | None, progress: Progress | None = None, config: PipelineConfig | None = None
) -> VerifyResult:
    """Read and check every chunk the backup (or every backup) needs, writing nothing."""
    progress = progress or NullProgress()
    config = config or PipelineConfig()
    refs = [repo.find(backup)] if backup else repo.list_backups()
    needed: dict[bytes, list[BackupRef]] = {}
    for ref in refs:
        _, resolved = repo.resolve(ref)
        for i in range(len(resolved)):
            d = resolved.digest_at(i)
            if d != ZERO_DIGEST:
                users = needed.setdefault(d, [])
                if not users or users[-1] != ref:
                    users.append(ref)
    bad: dict[bytes, str] = {}
    checked = [0, 0]
    lock = threading.Lock()

    def check(digest: bytes) -> None:
        try:
            data = repo.get_chunk(digest)
        except CorruptChunkError as e:
            bad[digest] = f"is corrupt ({str(e).split(': ', 1)[-1]})"
            return
        except NotFoundError:
            bad[digest] = "is missing"
            return
        with lock:  # tasks finish in several threads at once
            checked[0] += 1
            checked[1] += len(data)
        progress.advance(len(data))

    progress.start(len(needed) * repo.config.chunk_size, "verify")
    executor = config.make_executor(config.worker_count(repo.store.capabilities().parallelism))
    submitter = BoundedSubmitter(executor, config.max_inflight_bytes)
    try:
        for digest in needed:
            submitter.submit(repo.config.chunk_size, check, digest)
        submitter.drain()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    progress.finish()
    if bad:
        raise DamagedBackupError(_describe(bad, backups_needing(repo, set(bad))))
    return VerifyResult(refs, checked[0], checked[1])
