"""A local cache of manifests for remote repositories.

Manifests never change once written, so a copy kept on this machine is as good as the stored one (each is
checked against its own BLAKE3 trailer when read). With it, a backup fetches at most the manifests it has
not seen, instead of its whole chain on every run. The cache lives in ``$CBTBACKUP_CACHE_DIR``, else
``$XDG_CACHE_HOME/cbtbackup``, else ``~/.cache/cbtbackup``, one folder per repository id. Losing it costs
only requests.
"""

from __future__ import annotations

import os
import secrets
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

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except OSError:
            return None

    def put(self, key: str, raw: bytes) -> None:
        """Best effort: a cache that cannot be written is only slower."""
        path = self._path(key)
        tmp = path.with_name(f".tmp-{secrets.token_hex(4)}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_bytes(raw)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def forget(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
