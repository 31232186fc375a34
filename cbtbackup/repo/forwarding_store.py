"""A store that hands every call to another: the base of wrappers that change a few calls (rate limits,
fault injection) and must pass the rest through unchanged, including calls added to :class:`Store` later."""

from __future__ import annotations

from collections.abc import Iterator

from cbtbackup.repo.retention import RetentionPolicy
from cbtbackup.repo.store import ListPage, ObjectInfo, Store, StoreCapabilities


class ForwardingStore(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

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

    def object_lock_refusal(self) -> str | None:
        return self.inner.object_lock_refusal()

    def apply_object_lock(self, policy: RetentionPolicy) -> None:
        self.inner.apply_object_lock(policy)

    def retained_until(self, key: str) -> float:
        return self.inner.retained_until(key)

    def extend_retention(self, key: str, until: float) -> None:
        self.inner.extend_retention(key, until)
