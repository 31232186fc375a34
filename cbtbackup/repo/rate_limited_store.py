"""A wrapper that holds a store's uploads and downloads to a rate (bytes per second), across all threads.

Each direction keeps one schedule: a transfer of ``n`` bytes books ``n / rate`` seconds of it, starting
where the last booking ended (or now, if the link was idle), and the calling thread sleeps until its booking
ends. However many threads the pipelines run, the bytes moved in any stretch of time longer than one object
stay within the rate; an idle link earns no credit for a burst later. Object bodies count, not headers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from cbtbackup.repo.store import ListPage, ObjectInfo, Store, StoreCapabilities


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


class RateLimitedStore(Store):
    def __init__(self, inner: Store, upload: float | None = None, download: float | None = None) -> None:
        """``upload`` and ``download`` in bytes per second; None leaves that direction alone."""
        self.inner = inner
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

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> ListPage:
        return self.inner.list_page(prefix, start_after, limit)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def sync(self) -> None:
        self.inner.sync()

    def depend_on(self, key: str) -> None:
        self.inner.depend_on(key)

    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities()

    def remove_incomplete(self, older_than: float) -> int:
        return self.inner.remove_incomplete(older_than)

    def close(self) -> None:
        self.inner.close()
