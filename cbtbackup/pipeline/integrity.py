"""Checking a repository, healing what can be healed, and naming the backups a bad chunk breaks.

``verify`` reads every chunk the chosen backups need. A chunk that fails its checks is moved into
quarantine (a missing one is recorded there), so no later backup trusts it: the next backup that reads
those bytes from the source stores them again — and because chunks are named by their content, that heals
every older backup that used the same bytes. Backups whose lost bytes never come back stay damaged, and
verify names them. A manifest that cannot be read is reported and passed over; the other backups are
still checked. ``verify --read-data-subset 5%`` (or ``1GiB``) reads a random part of those chunks instead: a
nightly job checks a little of every new backup, and over weeks most of the repository.

``verify --repair`` does this for the whole repository: every chunk object stored (also those no backup
needs), every manifest (unreadable ones are moved into quarantine, so that listing and restoring the
others never meet them again), and clears quarantine entries whose chunks are whole again.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
from collections.abc import Iterable
from typing import Any

from cbtbackup.errors import CbtError, CorruptDataError, UsageError
from cbtbackup.model.extent_map import ZERO_DIGEST
from cbtbackup.model.sizes import format_size, parse_size
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.metadata_check import check_metadata
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.workers import PipelineConfig
from cbtbackup.repo.chunk_codec import CorruptChunkError, MissingChunkError
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import CHUNKS_PREFIX, Repository


class DamagedBackupError(CorruptDataError):
    """Chunks or manifests some backups need are corrupt or missing."""


def backups_needing(repo: Repository, digests: set[bytes]) -> dict[bytes, list[BackupRef]]:
    """For each digest, the backups whose restored image uses it."""
    needed: dict[bytes, list[BackupRef]] = {d: [] for d in digests}
    refs = repo.list_backups()
    repo.prefetch_manifests(refs)
    for ref in refs:
        try:
            _, resolved = repo.resolve(ref)
        except CbtError:
            continue
        present = {resolved.digest_at(i) for i in range(len(resolved))} & digests
        for d in present:
            needed[d].append(ref)
    return needed


def _names(refs: list[BackupRef]) -> str:
    return ", ".join(f"{r.id} ({r.name})" for r in refs) or "none"


def explain_corruption(repo: Repository, error: CorruptChunkError) -> DamagedBackupError:
    needed = backups_needing(repo, {error.digest})
    return DamagedBackupError(
        f"{error}; backups affected: {_names(needed[error.digest])}; 'cbtbackup verify' quarantines a bad "
        "chunk, and the next backup of the source stores its bytes again"
    )


@dataclasses.dataclass
class VerifyResult:
    backups: list[BackupRef]
    chunks_checked: int
    bytes_checked: int
    quarantined: dict[str, str] = dataclasses.field(default_factory=dict)  # object key -> why
    unreadable: dict[str, str] = dataclasses.field(default_factory=dict)  # manifest key -> why
    damaged: list[BackupRef] = dataclasses.field(default_factory=list)  # backups still missing bytes
    healed: list[str] = dataclasses.field(default_factory=list)  # quarantine entries cleared
    damaged_keys: list[str] = dataclasses.field(default_factory=list)  # key slots edited or damaged
    damaged_metadata: dict[str, str] = dataclasses.field(default_factory=dict)  # config, heads, locks -> why
    # heads left stale by a killed run, a missing config copy: harmless; --repair rebuilds them
    stale: dict[str, str] = dataclasses.field(default_factory=dict)
    repaired: list[str] = dataclasses.field(default_factory=list)  # metadata objects --repair wrote again

    @property
    def ok(self) -> bool:
        unrepaired = set(self.damaged_metadata) - set(self.repaired)
        return not (self.quarantined or self.unreadable or self.damaged or self.damaged_keys or unrepaired)

    def to_json(self) -> dict[str, Any]:
        return {
            "backups": [r.id for r in self.backups],
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "quarantined": self.quarantined,
            "unreadable_manifests": self.unreadable,
            "damaged_backups": [r.id for r in self.damaged],
            "healed": self.healed,
            "damaged_keys": self.damaged_keys,
            "damaged_metadata": self.damaged_metadata,
            "stale": self.stale,
            "repaired": self.repaired,
            "ok": self.ok,
        }

    def problem(self) -> str:
        """One line naming what is wrong (for the error a damaged repository ends with)."""
        parts = []
        if self.quarantined:
            parts.append("quarantined " + "; ".join(f"{k} ({why})" for k, why in self.quarantined.items()))
        if self.unreadable:
            parts.append("unreadable manifests " + "; ".join(f"{k} ({why})" for k, why in self.unreadable.items()))
        if self.damaged_keys:
            parts.append("key slots damaged or edited: " + ", ".join(self.damaged_keys))
        unrepaired = {k: why for k, why in self.damaged_metadata.items() if k not in self.repaired}
        if unrepaired:
            parts.append("damaged " + "; ".join(f"{k} ({why})" for k, why in unrepaired.items())
                         + " ('cbtbackup verify --repair' rebuilds what it can)")
        parts.append(f"backups still damaged: {_names(self.damaged)}")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Sample:
    """A random part of the chunks to read (restic's ``--read-data-subset``): a fraction, or about a size."""

    fraction: float | None = None
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> Sample:
        """``5%``, ``0.5%`` or a size (``1GiB``, ``500M``)."""
        value = text.strip()
        if value.endswith("%"):
            try:
                percent = float(value[:-1])
            except ValueError:
                raise UsageError(f"{text!r} is not a percentage (examples: 5%, 0.5%)") from None
            if not 0 < percent <= 100:
                raise UsageError(f"{text!r}: a sample is more than 0% and at most 100%")
            return cls(fraction=percent / 100)
        size = parse_size(value)
        if size <= 0:
            raise UsageError(f"{text!r}: a sample is more than 0 bytes")
        return cls(size=size)

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction is not None else format_size(self.size or 0)

    def draw(self, digests: Iterable[bytes], chunk_size: int) -> set[bytes]:
        pool = sorted(digests)
        if self.fraction is not None:
            count = math.ceil(len(pool) * self.fraction)
        else:
            count = math.ceil((self.size or 0) / chunk_size)
        return set(random.sample(pool, min(len(pool), max(count, 1 if pool else 0))))


def run_verify(
    repo: Repository,
    backup: str | None,
    progress: Progress | None = None,
    config: PipelineConfig | None = None,
    repair: bool = False,
    sample: Sample | None = None,
) -> VerifyResult:
    """Read and check every chunk the backup (or every backup) needs, or a random ``sample`` of them;
    quarantine what fails."""
    repo.require_full_key("verify")
    progress = progress or NullProgress()
    config = config or PipelineConfig()
    if repair and backup:
        raise CbtError("--repair checks the whole repository; name no backup with it")
    refs = [repo.find(backup)] if backup else repo.list_backups()
    repo.prefetch_manifests(refs)
    result = VerifyResult(refs, 0, 0)
    if repo.sealer.encrypted:
        result.damaged_keys = repo.keys.damaged()
    result.damaged_metadata, result.stale, result.repaired = check_metadata(
        repo, repair, refs[0].name if backup else None)
    uses: dict[bytes, list[BackupRef]] = {}
    for ref in refs:
        try:
            _, resolved = repo.resolve(ref)
        except CorruptDataError as e:
            result.unreadable[ref.key] = str(e)
            continue
        for i in range(len(resolved)):
            d = resolved.digest_at(i)
            if d != ZERO_DIGEST:
                users = uses.setdefault(d, [])
                if not users or users[-1] != ref:
                    users.append(ref)
    if sample is not None and repair:
        raise CbtError("--repair checks the whole repository; it takes no sample")
    to_check = sample.draw(uses, repo.config.chunk_size) if sample is not None else set(uses)
    if repair:  # every chunk stored, needed or not
        to_check |= {bytes.fromhex(o.key.rsplit("/", 1)[-1]) for o in repo.store.list(CHUNKS_PREFIX)}
    bad = _check_chunks(repo, to_check, set(uses), result, progress, config)
    for digest, (why, missing) in bad.items():
        where = repo.quarantine_chunk(digest, missing=missing)
        result.quarantined[where] = why
    if repair:
        _repair_manifests(repo, result)
        for digest in repo.quarantined_chunks() & (to_check - set(bad)):  # read back whole above: healed
            repo.quarantine.clear(repo.chunk_key(digest))
            result.healed.append(repo.chunk_key(digest))
    damaged = {r for d in bad for r in uses.get(d, [])}
    damaged |= {r for r in refs if r.key in result.unreadable}
    result.damaged = sorted(damaged, key=lambda r: (r.name, r.stamp))
    return result


def _check_chunks(
    repo: Repository, digests: set[bytes], needed: set[bytes], result: VerifyResult, progress: Progress,
    config: PipelineConfig,
) -> dict[bytes, tuple[str, bool]]:
    """Read and check each chunk through the reading core (its fetchers verify in parallel, ahead of this
    loop); the bad ones, with why and whether they were missing."""
    bad: dict[bytes, tuple[str, bool]] = {}
    order = sorted(digests)  # object-name order: a local store's directories one after another
    chunks = ChunkSource(repo.get_chunk, plan=order, uses=collections.Counter(order),
                         keep_bytes=config.max_inflight_bytes,
                         fetchers=config.worker_count(repo.store.capabilities().parallelism))
    progress.start(len(digests) * repo.config.chunk_size, "verify")
    try:
        for digest in order:
            try:
                data = chunks.get(digest)
            except MissingChunkError:
                if digest in needed:
                    bad[digest] = ("missing", True)
                continue
            except CorruptChunkError as e:
                bad[digest] = (f"corrupt: {str(e).split(': ', 1)[-1]}", False)
                continue
            finally:
                chunks.release(digest)
            result.chunks_checked += 1
            result.bytes_checked += len(data)
            progress.advance(len(data))
    finally:
        chunks.close()
    progress.finish()
    return bad


def _repair_manifests(repo: Repository, result: VerifyResult) -> None:
    """Move every manifest that cannot be read itself into quarantine (a broken chain stays reported)."""
    for ref in repo.list_backups():
        try:
            repo.load_manifest(ref)
        except CorruptDataError as e:
            where = repo.quarantine_manifest(ref)
            result.quarantined[where] = str(e)
            result.unreadable.setdefault(ref.key, str(e))
