"""Where an attached volume can be found: its record in the state directory, and the way back from a
mount directory or a loop device to the image."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cbtbackup.engine.attach.control import is_alive
from cbtbackup.engine.attach.system_tools import loop_backing_file
from cbtbackup.engine.volume import default_state_dir

RECORD_NAME = "attached.json"
SOURCE_FILE = ".cbtbackup-source"
VOLUME_FILE = "volume"


@dataclasses.dataclass(frozen=True)
class AttachRecord:
    pid: int
    image: str
    state_dir: str
    mountdir: str
    loop: str | None

    def save(self) -> None:
        path = Path(self.state_dir) / RECORD_NAME
        tmp = path.with_name(RECORD_NAME + ".new")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: Path) -> AttachRecord | None:
        try:
            return cls(**json.loads((state_dir / RECORD_NAME).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def source_info(self) -> bytes:
        return json.dumps({"image": self.image, "state_dir": self.state_dir}).encode()


def live_record(state_dir: Path) -> AttachRecord | None:
    """The record of a daemon that still answers, or None."""
    record = AttachRecord.load(state_dir)
    if record is None or not is_alive(state_dir):
        return None
    return record


@dataclasses.dataclass(frozen=True)
class ResolvedSource:
    """An image path and its state directory, however the user named the volume."""

    image: Path
    state_dir: Path


def resolve_source(source: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None = None) -> ResolvedSource:
    """``disk.img``, or the loop device an attach set up on it, both name ``disk.img``."""
    path = Path(source)
    backing = loop_backing_file(str(path)) if path.is_block_device() else None
    if backing is not None and backing.name == VOLUME_FILE:
        info = _read_source_info(backing.parent)
        if info is not None:
            return info
    return ResolvedSource(path.absolute(), Path(state_dir) if state_dir else default_state_dir(path))


def source_of_mountdir(mountdir: Path) -> ResolvedSource | None:
    return _read_source_info(mountdir)


def _read_source_info(mountdir: Path) -> ResolvedSource | None:
    try:
        info = json.loads((mountdir / SOURCE_FILE).read_text())
        return ResolvedSource(Path(info["image"]), Path(info["state_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
