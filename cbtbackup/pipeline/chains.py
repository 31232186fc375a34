"""Which chain a backup of a source goes into.

A chain belongs to one source on one host. The default name is readable and stable — the source's path
with ``/`` as ``-`` — and ends in eight hex digits of a BLAKE3 of the host and the full path, so two
sources never share a default chain even where their paths read the same once made safe (``ä.img`` and
``ö.img``), and the same path on two hosts that share a repository stays apart. A name given with
``--name`` that already holds another source's backups is refused unless the user says the source was
renamed. Chains named by older versions (after the file name alone) keep being used for their source.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import blake3

from cbtbackup.errors import CbtError, UsageError
from cbtbackup.repo.manifest import Manifest, check_name
from cbtbackup.repo.repository import Repository

SLUG_MAX = 48  # the path's last components that fit; the digest keeps the whole path apart


class ChainOwnerError(UsageError):
    """The named chain holds the backups of another source."""


def this_host() -> str:
    return os.uname().nodename


def default_name(source: str, host: str | None = None) -> str:
    """``/srv/vm1/disk.img`` → ``srv-vm1-disk.img-1f0c33ab``: the path, readable, and a digest of it all."""
    host = this_host() if host is None else host
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in source.strip("/").split("/") if p]
    kept: list[str] = []
    for part in reversed(parts):
        if kept and len(part) + 1 + sum(len(k) + 1 for k in kept) > SLUG_MAX:
            break
        kept.insert(0, part)
    slug = "-".join(kept)[-SLUG_MAX:].lstrip("._-") or "volume"
    tag = blake3.blake3(f"{host}\0{source}".encode()).hexdigest()[:8]
    return check_name(f"{slug}-{tag}")


def legacy_name(source: str) -> str:
    """The default name of versions before chains were unique: the file name alone."""
    base = Path(source).name or "volume"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-") or "volume"


def owner_of(repo: Repository, name: str) -> Manifest | None:
    """The newest readable backup of chain ``name``, which says whose chain it is."""
    ref = repo.latest(name)
    if ref is None:
        return None
    try:
        return repo.load_manifest(ref)
    except CbtError:
        return None


def same_source(m: Manifest, source: str, host: str) -> bool:
    return m.source == source and (m.host is None or m.host == host)


def candidate_names(source: str, name: str | None) -> list[str]:
    """Every chain a backup of ``source`` may go into (to lock them before :func:`chain_for` decides)."""
    if name is not None:
        return [name]
    names = [default_name(source)]
    with contextlib.suppress(UsageError):  # no valid legacy name: no legacy chain
        names.append(check_name(legacy_name(source)))
    return names


def chain_for(repo: Repository, source: str, name: str | None, rename_source: bool) -> str:
    """The chain a backup of ``source`` on this host goes into; refuses another source's chain."""
    host = this_host()
    if name is None:
        name = default_name(source, host)
        if repo.latest(name) is None:
            legacy = legacy_name(source)
            try:
                owner = owner_of(repo, check_name(legacy))
            except UsageError:
                owner = None
            if owner is not None and same_source(owner, source, host):
                return legacy
            return name  # a chain with no backups yet: nobody else's
    owner = owner_of(repo, check_name(name))
    if owner is not None and not same_source(owner, source, host) and not rename_source:
        raise ChainOwnerError(
            f"chain {name!r} holds backups of {owner.source} on {owner.host or 'an unknown host'}, not of "
            f"{source} on {host}; choose another --name, or add --rename-source if the source was renamed"
        )
    return name
