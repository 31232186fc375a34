"""Reading a versioned bucket as it was at a past moment (``--as-of``), the way back after an attack.

In a bucket with versioning (every Object Lock bucket has it) an overwrite or a delete only adds a newer
version or a delete marker; what was there stays as an older version, and a locked one cannot be removed.
Whoever took a host with its credentials can therefore hide backups or replace them with forgeries, but not
destroy them: reading each key's newest version written at or before a moment before the attack gives the
repository back as it was. A view of the past is read-only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from cbtbackup.errors import NotFoundError
from cbtbackup.repo.store import ObjectInfo

if TYPE_CHECKING:
    from cbtbackup.repo.s3_store import S3Store

# Per key: (version id, size, ETag, modified), or None where the newest entry then was a delete marker.
_Entry = tuple[str, int, str, float] | None


class PointInTime:
    def __init__(self, store: S3Store, when: float) -> None:
        self.store = store
        self.when = when
        self.read_only = "a repository read --as-of a past time is read-only"
        self._known: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _scan(self, prefix: str) -> dict[str, _Entry]:
        """The state then of every key under ``prefix`` (keys without the repository's prefix)."""
        s = self.store
        newest: dict[str, tuple[float, _Entry]] = {}
        paginator = s._client.get_paginator("list_object_versions")
        pages = iter(paginator.paginate(Bucket=s.bucket, Prefix=s.prefix + prefix))
        while True:
            page: dict[str, Any] | None = s._call("list", prefix, next, pages, None)
            if page is None:
                break
            for kind in ("Versions", "DeleteMarkers"):
                for v in page.get(kind, []):
                    modified = v["LastModified"].timestamp()
                    if modified > self.when:
                        continue
                    key = v["Key"][len(s.prefix):]
                    entry: _Entry = None
                    if kind == "Versions":
                        entry = (v["VersionId"], int(v["Size"]), str(v.get("ETag", "")), modified)
                    if key not in newest or modified >= newest[key][0]:
                        newest[key] = (modified, entry)
        found = {key: entry for key, (_, entry) in newest.items()}
        with self._lock:
            self._known.update(found)
        return found

    def _entry(self, key: str) -> _Entry:
        with self._lock:
            if key in self._known:
                return self._known[key]
        return self._scan(key).get(key)

    def version_of(self, key: str) -> str:
        entry = self._entry(key)
        if entry is None:
            raise NotFoundError(f"{self.store._where(key)}: no such object at that time")
        return entry[0]

    def stat(self, key: str) -> ObjectInfo | None:
        entry = self._entry(key)
        return None if entry is None else ObjectInfo(key, entry[1], entry[2], entry[3])

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = self._scan(prefix)
        return [ObjectInfo(key, e[1], e[2], e[3]) for key, e in sorted(found.items()) if e is not None]
