"""A local cache of manifests for remote repositories.

A manifest changes only when ``forget`` folds a removed parent into it, and then its version (the store's
ETag) changes: a copy is used only when its version is the one the store lists, or when nothing listed it
(a parent found through its child; if such a copy is out of date, its chain fails to resolve and is read
again from the store). Each copy is checked against its own BLAKE3 trailer when read. With the cache, a
backup fetches at most the manifests it has not seen, instead of its whole chain on every run. The cache
lives in ``$CBTBACKUP_CACHE_DIR``, else ``$XDG_CACHE_HOME/cbtbackup``, else ``~/.cache/cbtbackup``, one
folder per repository id. Losing it costs only requests.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    if env := os.environ.get("CBTBACKUP_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cbtbackup"


class ManifestCache:
    def __init__(self, root: Path, repository_id: str) -> None:
        self.dir = root / repository_id / "manifests"

    def _path(self, key: str) -> Path:
        return self.dir / key.replace("/", "%")

    def get(self, key: str, version: str | None = None) -> bytes | None:
        """The cached copy, if any — and if ``version`` is given, only a copy of that version."""
        try:
            raw = self._path(key).read_bytes()
        except OSError:
            return None
        stored_version, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        if version is not None and stored_version.decode(errors="replace") != version:
            return None
        return body

    def put(self, key: str, raw: bytes, version: str = "") -> None:
        """Best effort: a cache that cannot be written is only slower."""
        path = self._path(key)
        tmp = path.with_name(f".tmp-{os.urandom(4).hex()}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_bytes(version.encode() + b"\n" + raw)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def keys_ending(self, suffix: str) -> list[str]:
        """The keys of cached copies whose key ends with ``suffix`` (a backup's ``_ID``)."""
        try:
            names = [p.name for p in self.dir.glob("*" + suffix.replace("/", "%"))]
        except OSError:
            return []
        return [n.replace("%", "/") for n in names if not n.startswith(".tmp-")]

    def forget(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
