"""Synthetic fulls: a backup's resolved map written out as a full, with no parent and no data moved.

The new manifest lists every piece of the backup's image as the chain resolves it, so it restores to the
same bytes (the same map digest) without reading or writing a chunk. It sorts right after the backup it
reproduces and keeps its time and CBT checkpoint, so retention treats the two alike and the next
incremental can continue from it by CBT. One atomic put: a killed synthesize leaves nothing.
"""

from __future__ import annotations

import dataclasses

from cbtbackup.repo.manifest import BackupRef, BackupStats, Manifest
from cbtbackup.repo.repository import Repository


def synthesize(repo: Repository, ref: BackupRef) -> Manifest:
    """Write a synthetic full of ``ref``; the caller holds the chain's lock."""
    top, resolved = repo.resolve(ref)
    manifest = dataclasses.replace(
        top,
        ref=top.ref.just_after(),
        kind="full",
        method="synthetic",
        parent=None,
        extents=resolved,
        map_digest=resolved.map_digest(),
        stats=BackupStats(),
        synthesized_from=top.ref.id,
    )
    newest = repo.latest(ref.name)
    repo.save_manifest(manifest, newest=newest is None or newest.stamp <= ref.stamp)
    return manifest


def run_synthesize(repo: Repository, spec: str, wait_lock: float = 0.0) -> Manifest:
    """``cbtbackup synthesize``: find the backup, hold its chain, write its synthetic full."""
    repo.require_full_key("synthesize")
    ref = repo.find(spec)
    with repo.locks.acquire(f"synthesize {ref.id}", exclusive=(f"chain:{ref.name}",), shared=("repo",),
                            wait=wait_lock):
        return synthesize(repo, ref)
