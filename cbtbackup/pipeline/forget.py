"""Forgetting backups: by id, or by a retention policy applied to each chain.

Removing a backup never breaks another. A chain is full → incr → incr …; the backups whose parent is the
one removed get its extents folded in beneath their own (``overlay``), and its parent becomes theirs —
removing a full makes its child a full. Only manifests are rewritten: every kept backup resolves to exactly
the map it had (its map digest is checked before anything is written).

The order makes it safe to kill at any moment: every child is rewritten (one atomic put each) before the
backup is deleted. A child rewritten while the backup still exists is valid on its own, and so is the
backup; running forget again finds no child left and deletes it. Chunks are not touched: ``prune`` frees
what no backup needs any more.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cbtbackup.errors import CorruptDataError, RetainedError, UsageError
from cbtbackup.model.extent_map import ExtentMap, overlay
from cbtbackup.model.retention import Candidate, RetentionPolicy, apply_policy
from cbtbackup.pipeline.hooks import Hook, no_hook
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import Repository


@dataclasses.dataclass(frozen=True)
class ForgetOptions:
    ids: tuple[str, ...] = ()
    name: str | None = None
    policy: RetentionPolicy | None = None
    dry_run: bool = False
    wait_lock: float = 0.0


@dataclasses.dataclass
class ForgetResult:
    kept: list[tuple[BackupRef, tuple[str, ...]]]
    removed: list[BackupRef]
    dry_run: bool
    locked: list[tuple[BackupRef, float]] = dataclasses.field(default_factory=list)  # due, but still locked

    def to_json(self) -> dict[str, Any]:
        return {
            "kept": [{"id": r.id, "name": r.name, "reasons": list(why)} for r, why in self.kept],
            "removed": [{"id": r.id, "name": r.name} for r in self.removed],
            "locked": [{"id": r.id, "name": r.name, "until": until} for r, until in self.locked],
            "dry_run": self.dry_run,
        }


def run_forget(
    repo: Repository, options: ForgetOptions, progress: Progress | None = None, hook: Hook = no_hook
) -> ForgetResult:
    """Decide what goes, then (unless a dry run) remove it under the locks of the chains involved.

    Hook points: ``"folded"`` after each child is rewritten, ``"removed"`` after each backup is deleted."""
    repo.require_full_key("forget")
    progress = progress or NullProgress()
    if options.ids and options.policy is not None:
        raise UsageError("name backups or give a policy, not both")
    if not options.ids and options.policy is None:
        raise UsageError("say which backups to forget: their ids, or --keep-* rules")
    refs = repo.list_backups(options.name)
    names = sorted({r.name for r in refs} if options.policy else {repo.find(i).name for i in options.ids})
    with repo.locks.acquire(f"forget in {', '.join(names) or 'nothing'}", wait=options.wait_lock,
                            exclusive=(*(f"chain:{n}" for n in names), "manifests"), notice=progress.notice):
        kept, removed = _decide(repo, options, refs)
        locked = _still_locked(repo, removed)
        held = {r for r, _ in locked}
        removed = [r for r in removed if r not in held]
        if not options.dry_run:
            # Oldest first, except under Object Lock: there a child that folding rewrites is locked anew, so
            # removing the newest first keeps a backup due now from being rewritten before its turn.
            for ref in sorted(removed, key=lambda r: (r.name, r.stamp), reverse=repo.locked):
                try:
                    remove_backup(repo, ref, hook)
                except RetainedError as e:  # an older version of it is locked longer than its newest
                    locked.append((ref, e.until))
            held = {r for r, _ in locked}
            removed = [r for r in removed if r not in held]
    return ForgetResult(kept, removed, options.dry_run, locked)


def _still_locked(repo: Repository, refs: list[BackupRef]) -> list[tuple[BackupRef, float]]:
    """The backups among ``refs`` whose manifest cannot be deleted yet (Object Lock): they stay, and the
    next forget after their lock ends removes them."""
    if not repo.locked:
        return []
    out = []
    for ref in refs:
        until = repo.store.retained_until(ref.key)
        if until:
            out.append((ref, until))
    return out


def _decide(
    repo: Repository, options: ForgetOptions, refs: list[BackupRef]
) -> tuple[list[tuple[BackupRef, tuple[str, ...]]], list[BackupRef]]:
    if options.ids:
        return [], list(dict.fromkeys(repo.find(i) for i in options.ids))
    assert options.policy is not None
    kept: list[tuple[BackupRef, tuple[str, ...]]] = []
    removed: list[BackupRef] = []
    by_name: dict[str, list[BackupRef]] = {}
    for ref in refs:
        by_name.setdefault(ref.name, []).append(ref)
    for chain_refs in by_name.values():  # each chain separately
        lookup = {r.id: r for r in chain_refs}
        candidates = [Candidate(r.id, repo.load_manifest(r).created, r.stamp) for r in chain_refs]
        for verdict in apply_policy(options.policy, candidates):
            ref = lookup[verdict.id]
            if verdict.keep:
                kept.append((ref, verdict.reasons))
            else:
                removed.append(ref)
    return kept, removed


def remove_backup(repo: Repository, ref: BackupRef, hook: Hook = no_hook) -> None:
    """Fold ``ref`` into the backups that depend on it, then delete it; the caller holds the chain's lock."""
    gone = repo.load_manifest(ref, fresh=True)
    base = repo.resolve(gone.parent)[1] if gone.parent is not None else ExtentMap()
    for child in _children(repo, ref):
        folded = dataclasses.replace(
            child,
            parent=gone.parent,
            kind="full" if gone.parent is None else child.kind,
            extents=overlay(child.extents, gone.extents),
        )
        if not child.has_map(overlay(folded.extents, base).map_digest()):
            raise CorruptDataError(f"folding {ref.id} into {child.ref.id} would change its image; nothing changed")
        repo.rewrite_manifest(folded)
        hook("folded")
    repo.delete_manifest(ref)
    hook("removed")


def _children(repo: Repository, ref: BackupRef) -> list[Manifest]:
    out = []
    for other in repo.list_backups(ref.name):
        if other == ref:
            continue
        m = repo.load_manifest(other)
        if m.parent == ref:
            out.append(m)
    return out
