"""Claiming an existing file or block device to overwrite it, refusing anything that is in use.

A restore with ``--force`` may replace what a user had, but never what is in use, whatever the flags:
- a block device is opened with ``O_EXCL``, which the kernel refuses while it is mounted (a partition of
  it included) or held exclusively by another program, and which keeps them away while we write;
- an image file is refused while it backs a loop device, while an attach daemon serves it, while a backup
  or tracker holds it (its state directory's lock, which the claim then holds itself), or while any other
  process has it open (a write lease cannot be taken then);
- the loop device of an attached volume is refused like the volume itself.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat
from pathlib import Path

from cbtbackup.engine import lease
from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.attach.record import VOLUME_FILE, live_record, resolve_source
from cbtbackup.engine.errors import VolumeLockedError
from cbtbackup.engine.tracker import STATE_FILE
from cbtbackup.engine.tracker_state import StateDirLock
from cbtbackup.engine.volume import default_state_dir
from cbtbackup.errors import BusyError, ReadOnlyError, UsageError, os_error

BLKROGET = 0x125E


class InUseError(BusyError):
    """The target of an overwrite is in use."""


class TargetClaim:
    """An open, exclusively held target; close it when done."""

    def __init__(self, path: Path, fd: int, size: int, is_file: bool, lock: StateDirLock | None) -> None:
        self.path, self.fd, self.size, self.is_file, self._lock = path, fd, size, is_file, lock

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def claim_for_overwrite(path: Path) -> TargetClaim:
    """Open ``path`` read-write for an overwrite, or raise :class:`InUseError` saying who uses it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_error(e, f"cannot open {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is a directory")
    if stat.S_ISBLK(st.st_mode):
        return _claim_device(path)
    if stat.S_ISREG(st.st_mode):
        return _claim_file(path)
    raise UsageError(f"{path} is neither a regular file nor a block device")


def _claim_device(path: Path) -> TargetClaim:
    where = system_tools.mounted_at(str(path))
    if where is not None:
        raise InUseError(f"{path} is mounted at {where}; unmount it before restoring onto it")
    backing = system_tools.loop_backing_file(str(path))
    if backing is not None and backing.name == VOLUME_FILE:
        image = resolve_source(path).image
        if image != path.absolute():
            raise InUseError(f"{path} is the loop device of attached {image}; detach it first")
    try:
        fd = os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise InUseError(f"{path} is in use: mounted (or a partition of it is) or held by another "
                             "program") from None
        raise os_error(e, f"cannot open {path}") from None
    if _read_only(fd):
        os.close(fd)
        raise ReadOnlyError(f"{path} is a read-only device")
    return TargetClaim(path, fd, os.lseek(fd, 0, os.SEEK_END), False, None)


def _read_only(fd: int) -> bool:
    """BLKROGET: whether the block device is read-only (its open for writing succeeds all the same)."""
    flag = array.array("i", [0])
    try:
        fcntl.ioctl(fd, BLKROGET, flag)
    except OSError:
        return False
    return bool(flag[0])


def _claim_file(path: Path) -> TargetClaim:
    loops = system_tools.loops_backed_by(path.resolve())
    if loops:
        raise InUseError(f"{path} backs loop device {', '.join(loops)}; detach it before restoring onto it")
    lock = _lock_tracked(path)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise os_error(e, f"cannot open {path}") from None
        if lease.open_elsewhere(fd):
            os.close(fd)
            raise InUseError(f"{path} is open in another process; close it before restoring onto it")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return TargetClaim(path, fd, os.fstat(fd).st_size, True, lock)


def _lock_tracked(path: Path) -> StateDirLock | None:
    """A tracked image's state lock, held for the overwrite (so no backup or attach starts meanwhile)."""
    state_dir = default_state_dir(path)
    if not (state_dir / STATE_FILE).is_file():
        return None
    record = live_record(state_dir)
    if record is not None:
        raise InUseError(f"{path} is attached at {record.mountdir} (pid {record.pid}); detach it first")
    try:
        return StateDirLock(state_dir)
    except VolumeLockedError:
        raise InUseError(f"{path} is in use by a running backup or tracker") from None
    except OSError as e:
        raise os_error(e, f"cannot lock {state_dir}") from None
