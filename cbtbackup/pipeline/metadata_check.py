"""What ``verify`` checks besides chunks and manifests: the config and its copy, the chains' heads, and
the lock objects — and what ``verify --repair`` rebuilds of them.

- **config**: both objects must be the bytes the repository was opened with (which passed their checksum
  or, encrypted, their MAC). A damaged one is reported; a missing copy (a repository made by an earlier
  version) is reported apart, as stale; ``--repair`` writes either again from the good one.
- **heads**: ``heads/<name>`` is a hint naming a chain's newest backup (docs/format.md). One that cannot be
  read or names another chain's backup is damaged. One that names an older backup or one that no longer
  exists, is missing while the chain has backups, or is left of a chain with none is *stale*: what a run
  killed between its manifest and its head leaves, harmless (readers fall back to listing the chain), so
  reported apart, as stale, and not as damage. ``--repair`` rebuilds both kinds from the manifests. Repositories
  under Object Lock keep no heads: one found there is damaged, and removed by ``--repair``.
- **locks**: a lock object that cannot be read is reported (it blocks nothing: lockers pass over it);
  ``--repair`` removes it once it has not changed for the locks' time to live, when no live holder can
  be refreshing it.

- **old names**: in a repository with private names, manifests and heads still under version-1 keys are
  what an upgrade killed after its commit left: stale (readers pass over them), removed by ``--repair``.

Key slots are checked by ``repo.keys.damaged()`` (integrity.py reports them).
"""

from __future__ import annotations

import time

from cbtbackup.errors import CorruptDataError, NotFoundError
from cbtbackup.repo.locks import DEFAULT_TTL, LOCKS_PREFIX
from cbtbackup.repo.object_names import in_private_layout
from cbtbackup.repo.repository import CONFIG_COPY_KEY, CONFIG_KEY, HEADS_PREFIX, Repository


def check_metadata(repo: Repository, repair: bool, chain: str | None = None
                   ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(damaged object -> why, stale object -> why, objects repaired). With ``chain`` (verify of one backup)
    only that chain's head is checked: one chain's commands never read the others'."""
    damaged: dict[str, str] = {}
    stale: dict[str, str] = {}
    repaired: list[str] = []
    _check_config(repo, repair, damaged, stale, repaired)
    _check_heads(repo, repair, damaged, stale, repaired, chain)
    _check_locks(repo, repair, damaged, repaired)
    if chain is None:
        _check_old_names(repo, repair, stale, repaired)
    return damaged, stale, repaired


def _check_old_names(repo: Repository, repair: bool, stale: dict[str, str], repaired: list[str]) -> None:
    from cbtbackup.pipeline.upgrade import OLD_LAYOUT_PREFIXES, remove_old_keys

    if repo.private_names is None:
        return
    old = sum(1 for prefix in OLD_LAYOUT_PREFIXES for obj in repo.raw_store.list(prefix)
              if not in_private_layout(obj.key))
    if not old:
        return
    stale["old names"] = (f"{old} manifest(s) or head(s) under the names of format version 1, left by an upgrade "
                          "that was killed (readers pass over them)")
    if repair:
        remove_old_keys(repo.raw_store)
        repaired.append("old names")


def _check_config(repo: Repository, repair: bool, damaged: dict[str, str], stale: dict[str, str],
                  repaired: list[str]) -> None:
    if not repo.config_raw:
        return
    for key in (CONFIG_KEY, CONFIG_COPY_KEY):
        try:
            raw = repo.store.get(key)
        except NotFoundError:
            # An earlier version's repository has no copy: not damage, but one flipped byte from lost.
            stale[key] = "missing (a repository made by an earlier version has none)"
        else:
            if raw == repo.config_raw:
                continue
            damaged[key] = "not the config the repository opened with (damaged or edited)"
        if repair:  # under Object Lock a new version: the damaged one stays below it
            repo.store.put(key, repo.config_raw)
            repaired.append(key)
    if repaired:
        repo.store.sync()


def _check_heads(repo: Repository, repair: bool, damaged: dict[str, str], stale: dict[str, str],
                 repaired: list[str], chain: str | None) -> None:
    refs = repo.list_backups(chain)
    newest = {}
    for ref in refs:  # sorted by chain and time: the last of each chain wins
        newest[ref.name] = ref
    existing = {ref.key for ref in refs}
    if chain is None:
        names = {obj.key[len(HEADS_PREFIX):] for obj in repo.store.list(HEADS_PREFIX)}
    else:
        # A listing of this one key's prefix, not a HEAD: one request either way, and it finds no other chain.
        key = HEADS_PREFIX + chain
        names = {chain} if any(o.key == key for o in repo.store.list(key)) else set()
    for name in sorted(names | set(newest)):
        key = HEADS_PREFIX + name
        if repo.locked:
            if name in names:
                damaged[key] = "a head in a repository under Object Lock, which keeps none"
                if repair:
                    repo.store.delete(key)
                    repaired.append(key)
            continue
        want = newest.get(name)
        try:
            head = repo.head_of(name) if name in names else None
        except CorruptDataError as e:
            damaged[key] = str(e).split(" ", 1)[1]
        else:
            if head is not None and want is not None and head == want:
                continue
            if want is None:
                stale[key] = "left of a chain that has no backups"
            elif head is None:
                stale[key] = "missing"
            elif head.key not in existing:
                stale[key] = f"names {head.id}, which does not exist"
            else:
                stale[key] = f"names {head.id}, not the chain's newest {want.id}"
        if repair:
            if want is None:
                repo.store.delete(key)
            else:
                repo.set_head(want)
            repaired.append(key)


def _check_locks(repo: Repository, repair: bool, damaged: dict[str, str], repaired: list[str]) -> None:
    now = time.time()
    for obj in repo.store.list(LOCKS_PREFIX):
        try:
            repo.locks.unseal(obj.key, repo.store.get(obj.key))
        except NotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError, CorruptDataError):
            old = now - obj.modified > DEFAULT_TTL
            damaged[obj.key] = "cannot be read" + ("" if old else " (written less than 30 minutes ago: kept)")
            if repair and old:
                repo.store.delete(obj.key)
                repaired.append(obj.key)
