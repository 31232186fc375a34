"""A local cache of manifests for remote repositories.

A manifest changes only when ``forget`` folds a removed parent into it, and then its version (the store's
ETag) changes: a copy is used only when its version is the one the store lists, or when nothing listed it
(a parent found through its child; if such a copy is out of date, its chain fails to resolve and is read
again from the store). Each copy is checked against its own BLAKE3 trailer when read. With the cache, a
backup fetches at most the manifests it has not seen, instead of its whole chain on every run. The cache
lives in ``$CBTBACKUP_CACHE_DIR``, else ``$XDG_CACHE_HOME/cbtbackup``, else ``~/.cache/cbtbackup``, one
folder per repository id. Losing it costs only requests. Opening a repository touches its folder, so
``cbtbackup cache --cleanup`` can tell the folders of repositories no longer used (30 days, as restic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path

DEFAULT_MAX_AGE = 30 * 86400


def default_cache_root() -> Path:
    if env := os.environ.get("CBTBACKUP_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cbtbackup"


@dataclasses.dataclass(frozen=True)
class CacheFolder:
    """One repository's folder in the cache."""

    path: Path
    repository_id: str
    files: int
    size: int
    used: float  # when a command last opened the repository (the folder's mtime)


def cache_folders(root: Path) -> list[CacheFolder]:
    """The repositories' folders under ``root``: only folders that hold a ``manifests`` folder, so
    nothing else that happens to live there is ever counted or removed."""
    found = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.is_dir() or entry.is_symlink() or not (entry / "manifests").is_dir():
            continue
        files = [f for f in (entry / "manifests").iterdir() if f.is_file()]
        found.append(CacheFolder(entry, entry.name, len(files), sum(f.stat().st_size for f in files),
                                 entry.stat().st_mtime))
    return found


def remove_unused(root: Path, max_age: float, now: float | None = None) -> list[CacheFolder]:
    """Remove the folders of repositories not opened for ``max_age`` seconds; the ones removed."""
    now = time.time() if now is None else now
    old = [f for f in cache_folders(root) if now - f.used > max_age]
    for folder in old:
        shutil.rmtree(folder.path, ignore_errors=True)
    return old


class ManifestCache:
    def __init__(self, root: Path, repository_id: str) -> None:
        self.dir = root / repository_id / "manifests"
        with contextlib.suppress(OSError):  # "used now", for cache --cleanup; an unwritable cache is only slower
            os.utime(root / repository_id)

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
