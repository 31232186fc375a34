"""Immutable backups: the retention an Object Lock repository puts on what it writes, and how long it lasts.

Every object of such a repository — chunks, manifests, key slots, the config — is written under a retention
(S3 Object Lock, mode GOVERNANCE or COMPLIANCE) that ends ``seconds`` after the write. Nobody can delete or
overwrite a locked version before then: not the host that wrote it, and in COMPLIANCE mode not even the
bucket's owner. Locks (``locks/``), probes and quarantine entries stay unlocked: they must be removable.

Retention is extended in batches, not per backup (docs/s3.md, "Immutable backups"): each ``prune`` extends
every object still needed whose lock was set more than half a period ago to a full period from now. With
prunes at most I apart, every object a backup needs stays locked at least ``seconds / 2 - I`` into the
future; run prune more often than a quarter of the period and that is at least a quarter period.
"""

from __future__ import annotations

import dataclasses

from cbtbackup.errors import UsageError

MODES = ("GOVERNANCE", "COMPLIANCE")
UNLOCKED_PREFIXES = ("locks/", "probe/", "quarantine/")
MIN_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    mode: str  # GOVERNANCE or COMPLIANCE
    seconds: float  # how long each write stays locked

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"object lock mode {self.mode!r} is not GOVERNANCE or COMPLIANCE")
        if self.seconds < MIN_SECONDS:
            raise UsageError("the lock period must be at least one second")

    @property
    def refresh_after(self) -> float:
        """How old a lock may be before prune extends it again."""
        return self.seconds / 2

    @staticmethod
    def locks(key: str) -> bool:
        """Whether an object under ``key`` is put under retention."""
        return not key.startswith(UNLOCKED_PREFIXES)
