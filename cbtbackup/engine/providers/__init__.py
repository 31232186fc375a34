"""Providers: where snapshots and changed blocks come from (userspace engine, scan; blksnap later)."""

from __future__ import annotations

import os

from cbtbackup.engine.providers.base import BlockReader, CbtState, Provider, SnapshotSession
from cbtbackup.engine.providers.scan import ScanProvider
from cbtbackup.engine.providers.userspace import UserspaceProvider
from cbtbackup.engine.volume import is_tracked
from cbtbackup.errors import NotFoundError, UsageError

PROVIDERS = ("auto", "userspace", "scan")


def choose_provider(
    source: str | os.PathLike[str], name: str = "auto", *, state_dir: str | os.PathLike[str] | None = None
) -> Provider:
    """``auto`` picks the userspace engine for a tracked source and scan for anything else."""
    if not os.path.exists(source):
        raise NotFoundError(f"{source}: no such file or device")
    if name == "auto":
        name = "userspace" if is_tracked(source, state_dir) else "scan"
    if name == "userspace":
        return UserspaceProvider(source, state_dir=state_dir)
    if name == "scan":
        return ScanProvider(source)
    raise UsageError(f"unknown provider {name!r} (one of: {', '.join(PROVIDERS)})")


__all__ = [
    "PROVIDERS",
    "BlockReader",
    "CbtState",
    "Provider",
    "ScanProvider",
    "SnapshotSession",
    "UserspaceProvider",
    "choose_provider",
]
