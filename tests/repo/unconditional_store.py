"""A store wrapper that behaves as an S3-compatible server which ignores ``If-None-Match``: a conditional
put overwrites whatever is there and reports success."""

from __future__ import annotations

from collections.abc import Iterator

from cbtbackup.repo.store import ObjectInfo, Store, StoreCapabilities


class IgnoresConditionalWrites(Store):
    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.inner.put(key, data)
        return True

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def sync(self) -> None:
        self.inner.sync()

    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities()
