"""Which backup a differential is taken against (``incr --since BACKUP`` or ``--since full``).

A differential is an incremental whose parent is a named earlier backup of the same chain instead of the
newest one: it holds every change since that base, so a chain of a weekly full and daily differentials is
never more than two backups long. Nothing else about it is special — the parent link says what it builds
on, so restore, mount, diff, forget and prune need no rule of their own (forgetting a base folds it into
every backup built on it, as for any parent).
"""

from __future__ import annotations

from cbtbackup.errors import CorruptDataError, NotFoundError, UsageError
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import Repository

LAST_FULL = "full"


class SinceError(UsageError):
    """``--since`` names a backup of another chain, or a chain with no full."""


def resolve_since(repo: Repository, name: str, spec: str) -> BackupRef | None:
    """The base ``spec`` names in chain ``name``: a backup id (or prefix, or ``NAME@latest~N``), or ``full``
    for the chain's newest full backup — None when the chain has no backup yet (the backup is then a full,
    as any first incremental)."""
    if spec == LAST_FULL:
        return _last_full(repo, name)
    try:
        ref = repo.find(spec)
    except NotFoundError:
        raise NotFoundError(f"--since {spec}: no such backup in {repo.location} (forgotten, or never made)") \
            from None
    if ref.name != name:
        raise SinceError(f"--since {spec}: backup {ref.id} belongs to chain {ref.name!r}, not to {name!r} "
                         "that this backup goes into")
    return ref


def _last_full(repo: Repository, name: str) -> BackupRef | None:
    refs = repo.list_backups(name)
    if not refs:
        return None
    for ref in reversed(refs):
        try:
            if repo.load_manifest(ref).kind == "full":
                return ref
        except CorruptDataError:
            continue  # verify reports it; an older full may still serve
    raise SinceError(f"--since full: chain {name!r} has no full backup yet; run a full first")
