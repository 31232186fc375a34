"""The storage interface every repository backend implements, and nothing more.

A store maps string keys (``/``-separated, like ``chunks/ab/ab12...``) to immutable byte objects. It is
synchronous; the pipelines decide how many calls run at once from :class:`StoreCapabilities`. Retries,
bandwidth limits and fault injection wrap a store; they do not live inside one. Backends translate their
own errors into :mod:`cbtbackup.errors` at this boundary: ``NotFoundError`` for a missing key,
``TransientStorageError`` for what may pass, ``StorageError`` for the rest.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator

from cbtbackup.errors import UsageError
from cbtbackup.repo.retention import RetentionPolicy


@dataclasses.dataclass(frozen=True)
class StoreCapabilities:
    """What a backend can take: how many calls in parallel, whether it is far away, a description."""

    parallelism: int
    description: str
    remote: bool = False  # reads cost a request: worth caching immutable objects locally


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str = ""  # changes whenever the object is replaced (an ETag, a file's inode and mtime)
    modified: float = 0.0  # when it was written (UNIX time; 0 when the store does not say)


# One page of a listing: objects in key order, and whether more may follow.
ListPage = tuple[list[ObjectInfo], bool]


class Store(abc.ABC):
    """Key-value object storage with atomic puts."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically: readers see the whole object or none."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if no object is there, atomically (never check-then-write); False if one is."""

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object, or ``length`` bytes of it from ``offset``; ``NotFoundError`` if missing."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size of an object, or None if there is none under ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose keys start with ``prefix``, in key order."""

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> ListPage:
        """Up to ``limit`` objects under ``prefix`` whose keys sort after ``start_after``, in key order, and
        whether more may follow. A remote store answers it with one request; this fallback lists it all."""
        after = [info for info in self.list(prefix) if info.key > start_after]
        return after[:limit], len(after) > limit

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every object put or deleted so far, and every one named to :meth:`depend_on`, durable
        before returning."""

    def depend_on(self, key: str) -> None:  # noqa: B027 - only stores whose puts are not durable at once
        """A commit is about to depend on ``key``, which this process found rather than put (a chunk an
        interrupted run or another backup stored): make it durable at the next :meth:`sync` too."""

    @abc.abstractmethod
    def capabilities(self) -> StoreCapabilities: ...

    def remove_incomplete(self, older_than: float) -> int:
        """Remove what puts killed before ``older_than`` (a UNIX time) left behind; how many were removed."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        """Release connections and handles."""

    # -- immutability (S3 Object Lock); a store that cannot lock objects says so ------------------------------

    def object_lock_refusal(self) -> str | None:
        """Why this store cannot hold objects under retention, or None when it can."""
        return "a local directory cannot lock objects: immutable backups need an S3 bucket with Object Lock"

    def apply_object_lock(self, policy: RetentionPolicy) -> None:
        """From now on, put every object (but locks and probes) under ``policy``'s retention."""
        raise UsageError(self.object_lock_refusal() or "this store cannot lock objects")

    def retained_until(self, key: str) -> float:
        """Until when (UNIX time) the object cannot be deleted; 0 when it can be now."""
        return 0.0

    def extend_retention(self, key: str, until: float) -> None:  # noqa: B027 - only for stores that lock
        """Keep ``key`` locked at least until ``until``."""
