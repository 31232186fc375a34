"""Which images this host keeps attached, so that a boot can attach them again before anything opens them.

``attach`` records each image here and a user's ``detach`` removes it; a daemon stopped by SIGTERM (a
shutdown) leaves its entry, which is what ``track --reattach-all`` (run by the systemd unit at boot) reads.
One small JSON file per image, written whole and renamed into place. The registry says *what to attach*,
never whether the tracking can be trusted: that stays the tracker's state, which a clean stop marks clean
and anything else leaves unclean (so the next incremental scans).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import blake3

ENV = "CBTBACKUP_ATTACH_REGISTRY"


@dataclasses.dataclass(frozen=True)
class Entry:
    image: str
    mountdir: str
    loop: bool
    state_dir: str | None


def registry_dir() -> Path:
    """``$CBTBACKUP_ATTACH_REGISTRY``, else /var/lib/cbtbackup/attached for root, else the user's state folder."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if os.geteuid() == 0:
        return Path("/var/lib/cbtbackup/attached")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cbtbackup" / "attached"


def _path(image: str) -> Path:
    return registry_dir() / f"{blake3.blake3(os.path.abspath(image).encode()).hexdigest()[:16]}.json"


def remember(entry: Entry) -> None:
    entry = dataclasses.replace(entry, image=os.path.abspath(entry.image), mountdir=os.path.abspath(entry.mountdir),
                                state_dir=os.path.abspath(entry.state_dir) if entry.state_dir else None)
    path = _path(entry.image)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(dataclasses.asdict(entry)))
    os.replace(tmp, path)


def forget(image: str) -> None:
    _path(image).unlink(missing_ok=True)


def entries() -> tuple[list[Entry], list[str]]:
    """Every recorded image (by path), and one line per entry that cannot be read."""
    found, bad = [], []
    try:
        paths = sorted(registry_dir().glob("*.json"))
    except OSError:
        return [], []
    for path in paths:
        try:
            found.append(Entry(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as e:
            bad.append(f"{path}: unreadable ({e}); remove it, or attach that image again")
    return sorted(found, key=lambda e: e.image), bad
