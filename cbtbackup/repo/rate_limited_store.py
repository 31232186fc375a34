"""A wrapper that holds a store's uploads and downloads to a rate (bytes per second), across all threads.

Each direction keeps one schedule: a transfer of ``n`` bytes books ``n / rate`` seconds of it, starting
where the last booking ended (or now, if the link was idle), and the calling thread sleeps until its booking
ends. However many threads the pipelines run, the bytes moved in any stretch of time longer than one object
stay within the rate; an idle link earns no credit for a burst later. Object bodies count, not headers.
"""

from __future__ import annotations

import threading
import time

from cbtbackup.repo.forwarding_store import ForwardingStore
from cbtbackup.repo.store import Store


class _Schedule:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._end = 0.0
        self._lock = threading.Lock()

    def book(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._end = max(self._end, now) + nbytes / self.rate
            until = self._end
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class RateLimitedStore(ForwardingStore):
    def __init__(self, inner: Store, upload: float | None = None, download: float | None = None) -> None:
        """``upload`` and ``download`` in bytes per second; None leaves that direction alone."""
        super().__init__(inner)
        self._up = _Schedule(upload) if upload else None
        self._down = _Schedule(download) if download else None

    def put(self, key: str, data: bytes) -> None:
        if self._up:
            self._up.book(len(data))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if self._up:
            self._up.book(len(data))
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, offset, length)
        if self._down:
            self._down.book(len(data))
        return data
