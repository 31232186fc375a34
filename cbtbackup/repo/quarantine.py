"""Objects that failed their checks, moved aside so that nothing builds on them again.

``quarantine/<original key>`` holds the bytes of a chunk or manifest that failed its checks, exactly as
they were found (for a post-mortem); ``quarantine/<original key>.missing`` (empty) records a chunk a backup
needs that was not there at all. A backup never trusts that a quarantined or missing chunk exists: it
looks the chunk up and stores it again when it reads those bytes. Once a chunk is whole in the repository
again, ``verify --repair`` clears its entry.
"""

from __future__ import annotations

from cbtbackup.errors import CbtError, NotFoundError
from cbtbackup.repo.store import Store

PREFIX = "quarantine/"
MISSING = ".missing"


class Quarantine:
    def __init__(self, store: Store) -> None:
        self._store = store

    def move_aside(self, key: str) -> str:
        """Move the object at ``key`` into quarantine; return where it went (``key`` is gone after)."""
        try:
            raw = self._store.get(key)
        except NotFoundError:
            return self.mark_missing(key)
        where = PREFIX + key
        self._store.put(where, raw)
        self._store.delete(key)
        return where

    def mark_missing(self, key: str) -> str:
        where = PREFIX + key + MISSING
        self._store.put(where, b"")
        return where

    def keys(self, under: str = "") -> set[str]:
        """The original keys of every quarantined (or missing) object whose key starts with ``under``."""
        found = set()
        for info in self._store.list(PREFIX + under):
            key = info.key[len(PREFIX):]
            found.add(key[: -len(MISSING)] if key.endswith(MISSING) else key)
        return found

    def clear(self, key: str) -> None:
        """Forget a quarantine entry (the object is whole again)."""
        for where in (PREFIX + key, PREFIX + key + MISSING):
            try:
                self._store.delete(where)
            except CbtError:
                continue
