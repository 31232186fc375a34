"""The rate-limiting wrapper holds uploads and downloads to their rate across threads, and leaves the other
direction alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.rate_limited_store import RateLimitedStore

MiB = 1 << 20


def timed_puts(store: RateLimitedStore, threads: int, objects: int, size: int) -> float:
    data = bytes(size)

    def work(t: int) -> None:
        for i in range(objects):
            store.put(f"chunks/{t}-{i}", data)

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.monotonic() - started


def test_uploads_across_threads_keep_to_the_rate(tmp_path: Path) -> None:
    store = RateLimitedStore(LocalStore(tmp_path), upload=8 * MiB)
    seconds = timed_puts(store, threads=4, objects=4, size=MiB // 2)  # 8 MiB: one second at the rate
    assert 0.9 <= seconds <= 1.5, seconds


def test_downloads_keep_to_their_rate_and_uploads_are_free(tmp_path: Path) -> None:
    store = RateLimitedStore(LocalStore(tmp_path), download=4 * MiB)
    started = time.monotonic()
    store.put("a", bytes(2 * MiB))
    assert time.monotonic() - started < 0.4  # uploads are not limited
    started = time.monotonic()
    assert store.get("a", 0, MiB) == bytes(MiB)
    assert store.get("a") == bytes(2 * MiB)  # 3 MiB read at 4 MiB/s
    assert 0.7 <= time.monotonic() - started <= 1.3
