"""Which of the module's snapshots cbtbackup runs created, so that one a killed run left behind can be removed.

Neither module build destroys a snapshot when the process that created it dies: a run killed with SIGKILL
(or by the OOM killer) leaves its snapshot holding the devices and the difference storage, and the next
SNAPSHOTADD of those devices fails with EBUSY. Each run records the snapshots it creates in a small file
under ``/run`` (a tmpfs, emptied at boot, as the module's snapshots are): the owner's pid and its start time,
so that a recycled pid is not mistaken for the owner. A later run destroys only snapshots whose record
names an owner that is gone; a snapshot without a record belongs to another program (Veeam Agent, the
vendor's tools) and is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Owner:
    pid: int
    start_time: int  # /proc/<pid>/stat field 22, in clock ticks since boot
    devices: tuple[str, ...]

    @classmethod
    def me(cls, devices: list[str]) -> Owner:
        return cls(os.getpid(), _start_time(os.getpid()) or 0, tuple(devices))

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time

    def describe(self) -> str:
        return f"pid {self.pid} ({', '.join(self.devices)})"


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _record_path(run_dir: str, snap_id: uuid.UUID) -> Path:
    return Path(run_dir) / f"{snap_id}.json"


def record(run_dir: str, snap_id: uuid.UUID, owner: Owner) -> None:
    path = _record_path(run_dir, snap_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(dataclasses.asdict(owner)))
    os.replace(temporary, path)


def forget(run_dir: str, snap_id: uuid.UUID) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(run_dir, snap_id).unlink()


def owner_of(run_dir: str, snap_id: uuid.UUID) -> Owner | None:
    """The cbtbackup run that created ``snap_id``, or None when no cbtbackup run did (or its record is bad)."""
    try:
        data = json.loads(_record_path(run_dir, snap_id).read_text())
        return Owner(int(data["pid"]), int(data["start_time"]), tuple(str(d) for d in data["devices"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_missing(run_dir: str, present: list[uuid.UUID]) -> None:
    """Drop the records of snapshots the module no longer has, whose owners are gone (a live owner may have
    created its snapshot after ``present`` was listed)."""
    keep = {str(snap_id) for snap_id in present}
    with contextlib.suppress(FileNotFoundError):
        for entry in Path(run_dir).iterdir():
            if entry.suffix != ".json" or entry.stem in keep:
                continue
            with contextlib.suppress(ValueError):
                owner = owner_of(run_dir, uuid.UUID(entry.stem))
                if owner is None or not owner.alive():
                    entry.unlink(missing_ok=True)
