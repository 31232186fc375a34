"""The system tools attach relies on: loop devices (losetup), file system freezes (fsfreeze), unmounting."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cbtbackup.errors import BusyError, CbtError, UsageError


def _run(args: list[str], what: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise CbtError(f"{args[0]} is not installed (needed to {what})") from None
    if done.returncode != 0:
        raise CbtError(f"cannot {what}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def loop_attach(path: Path) -> str:
    """Set up a loop device on ``path``; its name, like ``/dev/loop3``.

    Direct I/O when the file allows it: the loop device then hands its requests straight to the file
    instead of through a second page cache, one copy fewer per write.
    """
    what = f"set up a loop device on {path}"
    try:
        return _run(["losetup", "--find", "--show", "--direct-io=on", str(path)], what)
    except CbtError:
        return _run(["losetup", "--find", "--show", str(path)], what)


def loop_detach(device: str) -> None:
    _run(["losetup", "--detach", device], f"detach {device}")


def loop_backing_file(device: str) -> Path | None:
    """The file behind a loop device, or None if ``device`` is not a bound loop device."""
    name = Path(os.path.realpath(device)).name
    try:
        return Path((Path("/sys/block") / name / "loop" / "backing_file").read_text().strip())
    except OSError:
        return None


def loops_backed_by(path: Path) -> list[str]:
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == str(path):
            found.append(f"/dev/{entry.name}")
    return found


def mounted_at(device: str) -> str | None:
    """Where ``device`` is mounted, if anywhere."""
    real = os.path.realpath(device)
    with open("/proc/self/mounts") as f:
        for line in f:
            source, target = line.split()[:2]
            if os.path.realpath(source) == real:
                return target.replace("\\040", " ")
    return None


def unmount(path: Path, lazy: bool = False) -> None:
    _run(["umount", *(["--lazy"] if lazy else []), str(path)], f"unmount {path}")


def is_mount_point(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


@contextmanager
def frozen(mountpoint: str | None) -> Iterator[None]:
    """Freeze the file system at ``mountpoint`` (fsfreeze) for the duration; nothing if None."""
    if mountpoint is None:
        yield
        return
    if not Path(mountpoint).is_dir() or not is_mount_point(Path(mountpoint)):
        raise UsageError(f"--freeze {mountpoint}: not a mounted file system")
    try:
        _run(["fsfreeze", "--freeze", mountpoint], f"freeze {mountpoint}")
    except CbtError as e:
        raise BusyError(str(e)) from None
    try:
        yield
    finally:
        _run(["fsfreeze", "--unfreeze", mountpoint], f"thaw {mountpoint}")
