"""What a repository holds: per chain and in total, and what each backup alone keeps stored.

- *logical*: the bytes the backups would restore (the sum of their device sizes);
- *stored*: the bytes of the distinct chunk objects they use (after compression and deduplication);
- *alone*: for one backup, the stored bytes of chunks no other backup's image uses — what forgetting it
  and pruning would free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cbtbackup.errors import CorruptDataError
from cbtbackup.model.extent_map import ZERO_DIGEST
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import CHUNKS_PREFIX, Repository


@dataclasses.dataclass
class ChainStats:
    name: str
    backups: int = 0
    logical_bytes: int = 0
    stored_bytes: int = 0
    newest: float = 0.0  # when the chain's newest backup was made (UNIX time)

    @property
    def dedup_ratio(self) -> float:
        return round(self.logical_bytes / self.stored_bytes, 2) if self.stored_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dedup_ratio": self.dedup_ratio}


@dataclasses.dataclass
class StatsResult:
    chains: list[ChainStats]
    total: ChainStats
    chunks: int
    unreadable: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"chains": [c.to_json() for c in self.chains], "total": self.total.to_json(), "chunks": self.chunks,
                "unreadable": self.unreadable}


def chunk_sizes(repo: Repository) -> dict[bytes, int]:
    """Every stored chunk's object size, from one listing."""
    sizes = {}
    for obj in repo.store.list(CHUNKS_PREFIX):
        try:
            sizes[bytes.fromhex(obj.key.rsplit("/", 1)[-1])] = obj.size
        except ValueError:
            continue
    return sizes


def run_stats(repo: Repository, name: str | None = None) -> StatsResult:
    sizes = chunk_sizes(repo)
    chains: dict[str, ChainStats] = {}
    used: dict[str, set[bytes]] = {}
    unreadable = []
    refs = repo.list_backups(name)
    repo.prefetch_manifests(refs)
    for ref in refs:
        try:
            m = repo.load_manifest(ref)
        except CorruptDataError:
            unreadable.append(ref.id)
            continue
        chain = chains.setdefault(ref.name, ChainStats(ref.name))
        chain.backups += 1
        chain.logical_bytes += m.device_size
        chain.newest = max(chain.newest, m.created)
        digests = used.setdefault(ref.name, set())
        digests.update(m.extents.digest_at(i) for i in range(len(m.extents)))
    everything: set[bytes] = set()
    for chain_name, digests in used.items():
        digests.discard(ZERO_DIGEST)
        chains[chain_name].stored_bytes = sum(sizes.get(d, 0) for d in digests)
        everything |= digests
    total = ChainStats("(total)", sum(c.backups for c in chains.values()),
                       sum(c.logical_bytes for c in chains.values()), sum(sizes.get(d, 0) for d in everything),
                       max((c.newest for c in chains.values()), default=0.0))
    return StatsResult(sorted(chains.values(), key=lambda c: c.name), total, len(sizes), unreadable)


def bytes_alone(repo: Repository, refs: list[BackupRef]) -> dict[str, int]:
    """For each backup, the stored bytes of chunks that no other backup's image uses."""
    sizes = chunk_sizes(repo)
    wanted = set(refs)
    images: dict[str, set[bytes]] = {}
    users: dict[bytes, int] = {}
    everyone = repo.list_backups()
    repo.prefetch_manifests(everyone)
    for ref in everyone:
        try:
            _, resolved = repo.resolve(ref)
        except CorruptDataError:
            continue
        digests = {resolved.digest_at(i) for i in range(len(resolved))} - {ZERO_DIGEST}
        for d in digests:
            users[d] = users.get(d, 0) + 1
        if ref in wanted:
            images[ref.id] = digests
    return {backup_id: sum(sizes.get(d, 0) for d in digests if users[d] == 1)
            for backup_id, digests in images.items()}
