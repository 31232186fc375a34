"""A wrapper that retries what a store reports as transient, with exponential backoff and jitter.

botocore already retries single HTTP requests; this catches what it cannot (a body cut off half-way,
a backend without retries of its own) and works the same around any store.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from cbtbackup.errors import TransientStorageError
from cbtbackup.repo.forwarding_store import ForwardingStore
from cbtbackup.repo.store import ListPage, ObjectInfo, Store

T = TypeVar("T")


class RetryingStore(ForwardingStore):
    def __init__(self, inner: Store, attempts: int = 4, base_delay: float = 0.2, max_delay: float = 5.0) -> None:
        super().__init__(inner)
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.retries = 0  # how many calls were repeated, for reports and tests

    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError:
                if attempt == self.attempts:
                    raise
                self.retries += 1
                time.sleep(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        self._retry(lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        first = [True]

        def attempt() -> bool:
            if self.inner.put_if_absent(key, data):
                return True
            if first[0]:
                return False
            # An earlier attempt may have created it before its answer was lost: ours if it holds our bytes.
            return self.inner.get(key) == data

        def tracked() -> bool:
            try:
                return attempt()
            finally:
                first[0] = False

        return self._retry(tracked)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(lambda: self.inner.get(key, offset, length))

    def stat(self, key: str) -> ObjectInfo | None:
        return self._retry(lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._retry(lambda: self.inner.list(prefix))

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> ListPage:
        return self._retry(lambda: self.inner.list_page(prefix, start_after, limit))

    def delete(self, key: str) -> None:
        self._retry(lambda: self.inner.delete(key))

    def sync(self) -> None:
        self._retry(self.inner.sync)

    def remove_incomplete(self, older_than: float) -> int:
        return self._retry(lambda: self.inner.remove_incomplete(older_than))

    def retained_until(self, key: str) -> float:
        return self._retry(lambda: self.inner.retained_until(key))

    def extend_retention(self, key: str, until: float) -> None:
        self._retry(lambda: self.inner.extend_retention(key, until))
