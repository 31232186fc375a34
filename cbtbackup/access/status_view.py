"""What the status page shows, as plain data: every chain with its source and host, its newest backup's age
(stale past a threshold), size, changed bytes, stored bytes and deduplication ratio; per chain, its backups.

Made only from reads — the listings and manifests ``list`` uses and ``stats``' chunk sizes — with no lock
taken, so the page never holds up a backup, a forget or a prune. A manifest that cannot be read is listed as
unreadable rather than ending the page.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cbtbackup.errors import CorruptDataError
from cbtbackup.pipeline.stats import run_stats
from cbtbackup.repo.manifest import Manifest
from cbtbackup.repo.repository import Repository


@dataclasses.dataclass(frozen=True)
class BackupRow:
    id: str
    kind: str
    method: str
    created: float
    device_size: int
    bytes_read: int
    bytes_changed: int
    bytes_stored: int
    duration_s: float
    parent: str | None

    @classmethod
    def of(cls, m: Manifest) -> BackupRow:
        s = m.stats
        return cls(m.ref.id, m.kind, m.method, m.created, m.device_size, s.bytes_scanned, s.bytes_changed,
                   s.bytes_stored, s.duration_s, m.parent.id if m.parent else None)


@dataclasses.dataclass(frozen=True)
class ChainRow:
    name: str
    source: str
    host: str
    backups: tuple[BackupRow, ...]
    stored_bytes: int
    dedup_ratio: float
    unreadable: int
    stale: bool

    @property
    def newest(self) -> BackupRow | None:
        return self.backups[-1] if self.backups else None

    def age(self, now: float) -> float | None:
        return None if self.newest is None else max(0.0, now - self.newest.created)

    def to_json(self, now: float, with_backups: bool = False) -> dict[str, Any]:
        newest = self.newest
        doc: dict[str, Any] = {
            "name": self.name, "source": self.source, "host": self.host, "backups": len(self.backups),
            "last_backup": newest.created if newest else None, "age_s": self.age(now), "stale": self.stale,
            "size": newest.device_size if newest else 0, "changed_bytes": newest.bytes_changed if newest else 0,
            "stored_bytes": self.stored_bytes, "dedup_ratio": self.dedup_ratio, "unreadable": self.unreadable,
        }
        if with_backups:
            doc["backup_list"] = [dataclasses.asdict(b) for b in self.backups]
        return doc


@dataclasses.dataclass(frozen=True)
class StatusView:
    chains: tuple[ChainRow, ...]
    taken: float  # when this view was read
    stale_after: float

    def chain(self, name: str) -> ChainRow | None:
        return next((c for c in self.chains if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"taken": self.taken, "stale_after_s": self.stale_after,
                "stale": [c.name for c in self.chains if c.stale],
                "chains": [c.to_json(self.taken) for c in self.chains]}


def read_status(repo: Repository, stale_after: float) -> StatusView:
    """The repository as the page shows it, now."""
    now = time.time()
    stats = {c.name: c for c in run_stats(repo).chains}
    refs = repo.list_backups()
    repo.prefetch_manifests(refs)
    by_chain: dict[str, list[Manifest]] = {}
    unreadable: dict[str, int] = {}
    for ref in refs:
        try:
            by_chain.setdefault(ref.name, []).append(repo.load_manifest(ref))
        except CorruptDataError:
            unreadable[ref.name] = unreadable.get(ref.name, 0) + 1
    rows = []
    for name in sorted(set(by_chain) | set(unreadable)):
        manifests = sorted(by_chain.get(name, []), key=lambda m: m.created)
        newest = manifests[-1] if manifests else None
        chain_stats = stats.get(name)
        rows.append(ChainRow(
            name=name, source=newest.source if newest else "", host=(newest.host or "") if newest else "",
            backups=tuple(BackupRow.of(m) for m in manifests),
            stored_bytes=chain_stats.stored_bytes if chain_stats else 0,
            dedup_ratio=chain_stats.dedup_ratio if chain_stats else 0.0, unreadable=unreadable.get(name, 0),
            stale=newest is None or now - newest.created > stale_after,
        ))
    return StatusView(tuple(rows), now, stale_after)
