"""Extending the Object Lock retention of what backups still need, in batches (cbtbackup.repo.retention).

Prune calls it with every object it found needed: chunks some manifest names, the manifests, key slots and
the config. Those whose last write is older than half the lock period get a full period from now; those
written more recently are still locked for at least half a period. The store does not say when a lock was
last extended, so an object is extended again at every prune once it is older than half a period: about
one request per needed object per prune, which is the price of never letting a needed lock lapse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from cbtbackup.pipeline.workers import PipelineConfig
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.store import ObjectInfo

BATCH = 1024


def refresh_retention(repo: Repository, needed: Iterable[ObjectInfo], config: PipelineConfig) -> int:
    """Extend the locks of ``needed`` objects that are due; how many were extended."""
    policy = repo.config.retention()
    if policy is None:
        return 0
    now = time.time()
    due = [info.key for info in needed if info.modified < now - policy.refresh_after]
    until = now + policy.seconds
    count = 0
    lock = threading.Lock()

    def extend(key: str) -> None:
        nonlocal count
        repo.store.extend_retention(key, until)
        with lock:
            count += 1

    executor = config.make_executor(config.worker_count(repo.store.capabilities().parallelism))
    try:
        for start in range(0, len(due), BATCH):  # a bounded number of requests in flight
            for future in [executor.submit(extend, key) for key in due[start:start + BATCH]]:
                future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return count
