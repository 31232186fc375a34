"""Backing up block devices through the blksnap module (either build), by the reference flow of the ABI:

remove snapshots a killed run left → attach the filter to each device → create the snapshot (difference
storage path, limit) and record it as ours → add every device → start a thread waiting for events → take →
SNAPSHOTINFO (image name), CBTINFO and the CBT map, read in 32 KiB pieces → read the images → check
``error_code`` and events → destroy, on every path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.blksnap import abi, ownership
from cbtbackup.engine.blksnap.kernel import BlksnapModule, BlockDevice, Environment, Event, current_environment
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.providers.scan import FileReader
from cbtbackup.errors import CbtError, SnapshotFailedError, StorageError, UsageError

Notice = Callable[[str], None]

EVENT_WAIT = 100  # per WAIT_EVENT call; the module counts it in jiffies
DEFAULT_DIFF_STORAGE = "/var/tmp"  # a directory: the module makes a private O_TMPFILE in it
OVERFLOW_SETTLE = 2.0  # seconds a failed image read waits for the module to report an overflow


class BlksnapGroup:
    """One snapshot of several block devices, taken at one instant by the module."""

    def __init__(self, devices: list[str], diff_storage: str, limit: int, env: Environment,
                 freeze: str | None = None, notice: Notice | None = None) -> None:
        if not devices:
            raise UsageError("no block device given")
        self.env = env
        self.events: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.snap_id: uuid.UUID | None = None
        self.module = BlksnapModule.open(env)
        self.devices: list[BlockDevice] = []
        self.sessions: list[BlksnapSession] = []
        try:
            remove_abandoned_snapshots(self.module, notice or (lambda _: None))
            for path in devices:
                self.devices.append(self.module.device(path))
            self._check_storage(diff_storage)
            own_freeze = self._freeze_needed(freeze)
            for dev in self.devices:
                dev.attach_filter()
            with _uninterrupted():  # a snapshot is never created without its record
                self.snap_id = self.module.snapshot_create(diff_storage, limit)
                ownership.record(env.run_dir, self.snap_id, ownership.Owner.me(devices))
            for dev in self.devices:
                dev.snapshot_add(self.snap_id)
            self._thread = threading.Thread(target=self._watch, name="blksnap-events", daemon=True)
            self._thread.start()
            with system_tools.frozen(own_freeze):
                self.module.snapshot_take(self.snap_id)
            for dev in self.devices:
                self.sessions.append(BlksnapSession(self, dev))
        except BaseException:
            self.close()
            raise

    def _freeze_needed(self, mountpoint: str | None) -> str | None:
        """What cbtbackup must freeze itself around the take: the module freezes the file system on each
        snapshotted device by itself (freezing it here too would make the module's own freeze fail), so only
        a file system elsewhere — on a device stacked over one of them — is frozen here."""
        if mountpoint is None:
            return None
        if not system_tools.is_mount_point(Path(mountpoint)):
            raise UsageError(f"--freeze {mountpoint}: not a mounted file system")
        on_device = os.stat(mountpoint).st_dev in {dev.rdev for dev in self.devices}
        return None if on_device else mountpoint

    def _check_storage(self, diff_storage: str) -> None:
        try:
            st = os.stat(diff_storage)
        except OSError as e:
            raise UsageError(f"difference storage {diff_storage}: {e.strerror}") from None
        # The module opens anything else (a FIFO blocks its CREATE until the caller is killed).
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise UsageError(f"difference storage {diff_storage}: must be a directory, a regular file or a "
                             "block device")
        # The module quietly skips SNAPSHOTADD of the device that holds the difference storage.
        for dev in self.devices:
            if st.st_dev == dev.rdev or st.st_rdev == dev.rdev:
                raise UsageError(
                    f"the difference storage {diff_storage} is on {dev.path}, which is being snapshotted; "
                    "put it on another device"
                )

    def _watch(self) -> None:
        assert self.snap_id is not None
        while not self._stop.is_set():
            try:
                event = self.module.wait_event(self.snap_id, EVENT_WAIT)
            except CbtError:
                return  # the snapshot is gone
            if event is not None:
                self.events.append(event)

    def check_intact(self) -> None:
        """Fail if the snapshot lost data while it was read (a corrupted event or a negative error_code)."""
        corrupted = [e for e in self.events if e.code is abi.BlksnapEvent.CORRUPTED]
        codes = {dev.path: dev.snapshot_info()[0] for dev in self.devices}
        bad = {path: code for path, code in codes.items() if code < 0}
        if corrupted or bad:
            detail = ", ".join(f"{p}: {os.strerror(-c)}" for p, c in bad.items()) or \
                os.strerror(corrupted[0].err_code)
            raise SnapshotFailedError(
                f"the snapshot was corrupted while it was read ({detail}): its difference storage overflowed; "
                "raise --diff-storage-limit and run the backup again"
            )

    def close(self) -> None:
        """Destroy the snapshot (the module keeps tracking) and release everything; safe to call twice."""
        self._stop.set()
        for session in self.sessions:
            session.close_reader()
        try:
            if self.snap_id is not None:
                snap_id, self.snap_id = self.snap_id, None
                with _uninterrupted():
                    self.module.snapshot_destroy(snap_id)
                    ownership.forget(self.env.run_dir, snap_id)
        finally:
            if self._thread is not None:
                self._thread.join(5)
            for dev in self.devices:
                dev.close()
            self.module.close()


class _ImageReader(FileReader):
    """The snapshot image; a read that fails because the snapshot overflowed says so.

    The real module fails every image read with EIO (buffered readers see short reads) as soon as its
    difference storage overflows, often before the corrupted event arrives: such a failure is the overflow,
    reported as the snapshot failing (exit 6), not as an I/O error of the device."""

    def __init__(self, path: Path, group: BlksnapGroup) -> None:
        super().__init__(path)
        self._group = group

    def read(self, offset: int, length: int) -> bytes:
        try:
            return super().read(offset, length)
        except StorageError:
            deadline = time.monotonic() + OVERFLOW_SETTLE
            while True:  # the module may report the corruption a moment after the read failed
                self._group.check_intact()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


class BlksnapSession(SnapshotSession):
    provider = "blksnap"

    def __init__(self, group: BlksnapGroup, device: BlockDevice) -> None:
        self.group = group
        self.source = str(Path(device.path).absolute())
        error_code, image_name = device.snapshot_info()
        if error_code < 0:
            raise SnapshotFailedError(f"the snapshot of {device.path} is corrupted: {os.strerror(-error_code)}")
        info = device.cbt_info()
        self.cbt: CbtState | None = CbtState(info, device.cbt_map(info.block_count))
        self.image_path = Path(group.env.dev_root) / image_name
        self._reader = _ImageReader(self.image_path, group)
        self.image = self._reader

    def check_intact(self) -> None:
        self.group.check_intact()

    def close_reader(self) -> None:
        self._reader.close()

    def close(self) -> None:
        """A session of a group: the group destroys the snapshot."""
        self.close_reader()


class BlksnapProvider:
    """One device (``open_snapshot``) or several in one snapshot (``open_group``)."""

    name = "blksnap"

    def __init__(self, devices: list[str], diff_storage: str | None = None, limit: int | None = None,
                 env: Environment | None = None, freeze: str | None = None, notice: Notice | None = None) -> None:
        self.devices = devices
        self.source = str(Path(devices[0]).absolute())
        self.diff_storage = diff_storage or DEFAULT_DIFF_STORAGE
        self.limit = limit
        self.env = env or current_environment()
        self.freeze = freeze
        self.notice = notice

    def open_group(self) -> BlksnapGroup:
        limit = self.limit if self.limit is not None else self._default_limit()
        return BlksnapGroup(self.devices, self.diff_storage, limit, self.env, self.freeze, self.notice)

    def open_snapshot(self) -> SnapshotSession:
        group = self.open_group()
        return _OwningSession(group)

    def _default_limit(self) -> int:
        """A tenth of the devices' size, at least 1 GiB: what changes during a backup, with room to spare."""
        total = 0
        for path in self.devices:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                total += os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
        return max(1 << 30, total // 10)


class _OwningSession(SnapshotSession):
    """The single session of a one-device group; closing it destroys the snapshot."""

    provider = "blksnap"

    def __init__(self, group: BlksnapGroup) -> None:
        self._group = group
        inner = group.sessions[0]
        self.source, self.image, self.cbt = inner.source, inner.image, inner.cbt

    def check_intact(self) -> None:
        self._group.check_intact()

    def close(self) -> None:
        self._group.close()


def remove_abandoned_snapshots(module: BlksnapModule, notice: Notice) -> list[uuid.UUID]:
    """Destroy the snapshots that cbtbackup runs created and died holding (the module keeps them)."""
    present = module.snapshot_collect()
    removed = []
    for snap_id in present:
        owner = ownership.owner_of(module.env.run_dir, snap_id)
        if owner is None or owner.alive():
            continue  # another program's, or a running backup's
        with contextlib.suppress(CbtError):  # it may be going away by itself
            module.snapshot_destroy(snap_id)
            removed.append(snap_id)
        ownership.forget(module.env.run_dir, snap_id)
        notice(f"destroyed snapshot {snap_id} left by a cbtbackup run that was killed ({owner.describe()})")
    ownership.forget_missing(module.env.run_dir, [s for s in present if s not in removed])
    return removed


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (then deliver them), so that a snapshot is never created
    without its ownership record, nor destroyed and still recorded. Only the main thread can do this."""
    signals = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or \
            any(signal.getsignal(s) is None for s in signals):
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])
