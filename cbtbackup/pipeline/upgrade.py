"""Upgrading an encrypted repository to private object names (format version 2, ``repo/object_names.py``).

Under an exclusive lock (no backup, forget or prune runs meanwhile), in an order that is safe to kill at any
moment:

1. every manifest is sealed again under its private key, and every quarantined manifest copied to its
   private key (``"copied"``). The repository is still version 1: what was added has keys a version-1
   reader takes for no backup, so it reads as before;
2. the new config is put, its copy first (``"committed"``): from here the repository is version 2;
3. each chain's head is written under its tag (a head is a hint: without one, the chain is listed), the
   objects under the old keys are deleted, and key slots made before they sealed their host and time are
   written again with both sealed. A run killed here leaves old keys behind, which a version-2 reader takes
   for no backup, or chains without heads; running ``upgrade`` again finishes both.

Chunks are not touched: their keys were private already. Write-only keys made before the upgrade name the
old config, so they no longer open the repository (export new ones); a write-only host's record of its last
backup no longer matches the re-sealed manifest, so its next backup reads everything and stores what the
repository lacks — one deduplicated full, never a miss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cbtbackup.errors import CorruptDataError, NotFoundError, UsageError
from cbtbackup.pipeline.hooks import Hook, no_hook
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.repo.config import PRIVATE_NAMES_VERSION
from cbtbackup.repo.manifest import BACKUPS_PREFIX
from cbtbackup.repo.object_names import in_private_layout
from cbtbackup.repo.repository import HEADS_PREFIX, Repository
from cbtbackup.repo.store import Store

QUARANTINED_MANIFESTS = "quarantine/" + BACKUPS_PREFIX
OLD_LAYOUT_PREFIXES = (BACKUPS_PREFIX, HEADS_PREFIX, QUARANTINED_MANIFESTS, "quarantine/" + HEADS_PREFIX)


@dataclasses.dataclass
class UpgradeResult:
    version: int
    upgraded: bool = False  # False: the repository had private names already
    manifests: int = 0
    heads: int = 0
    quarantined: int = 0
    unreadable: list[str] = dataclasses.field(default_factory=list)  # moved to quarantine as they were
    old_objects_removed: int = 0
    key_slots_sealed: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_upgrade(repo: Repository, progress: Progress | None = None, wait_lock: float = 0.0,
                hook: Hook = no_hook) -> UpgradeResult:
    """Give an encrypted repository private object names (or finish an upgrade that was killed)."""
    repo.require_full_key("upgrade")
    progress = progress or NullProgress()
    if not repo.sealer.encrypted:
        raise UsageError(f"{repo.location} is not encrypted: its objects are plaintext, so private names would "
                         "hide nothing (back up into a new, encrypted repository instead)")
    with repo.locks.acquire("upgrade", exclusive=("repo", "manifests"), wait=wait_lock, notice=progress.notice) \
            as held:
        result = UpgradeResult(PRIVATE_NAMES_VERSION)
        upgraded = repo
        if not repo.config.private_names:
            config = dataclasses.replace(repo.config, names="private", version=PRIVATE_NAMES_VERSION, mac="")
            config = dataclasses.replace(config, mac=repo.sealer.config_mac(config.body_for_mac()))
            upgraded = repo.reopened_with(config)
            _copy(repo, upgraded, result, progress)
            hook("copied")
            held.check()
            raw = config.to_bytes()
            repo.raw_store.put("config.copy", raw)
            repo.raw_store.put("config", raw)  # the commit
            repo.raw_store.sync()
            result.upgraded = True
            hook("committed")
        result.heads = _write_missing_heads(upgraded)
        result.old_objects_removed = remove_old_keys(repo.raw_store)
        result.key_slots_sealed = repo.keys.seal_about()
        return result


def _copy(repo: Repository, target: Repository, result: UpgradeResult, progress: Progress) -> None:
    refs = repo.list_backups()
    repo.prefetch_manifests(refs)
    for ref in refs:
        try:
            manifest = repo.load_manifest(ref, fresh=True)
        except CorruptDataError:
            # Kept for a post-mortem, as verify --repair would: it moves to quarantine under its private key.
            try:
                target.store.put("quarantine/" + ref.key, repo.store.get(ref.key))
            except NotFoundError:
                continue
            result.unreadable.append(ref.key)
            continue
        target.rewrite_manifest(manifest)
        result.manifests += 1
    for obj in repo.store.list(QUARANTINED_MANIFESTS):
        target.store.put(obj.key, repo.store.get(obj.key))
        result.quarantined += 1
    target.store.sync()
    progress.notice(f"sealed {result.manifests} manifest(s) under private names")


def _write_missing_heads(repo: Repository) -> int:
    """Point every chain without a readable head at its newest backup; how many heads were written."""
    if repo.locked:
        return 0  # locked repositories keep no heads
    written = 0
    chains: dict[str, Any] = {}
    for ref in repo.list_backups():
        chains[ref.name] = ref
    for name, newest in chains.items():
        try:
            if repo.head_of(name) is not None:
                continue
        except CorruptDataError:
            pass
        repo.set_head(newest)
        written += 1
    return written


def remove_old_keys(store: Store) -> int:
    """Delete what the version-1 layout left: manifests and heads under names that carry chains and times."""
    removed = 0
    for prefix in OLD_LAYOUT_PREFIXES:
        for obj in list(store.list(prefix)):
            if not in_private_layout(obj.key):
                store.delete(obj.key)
                removed += 1
    if removed:
        store.sync()
    return removed

