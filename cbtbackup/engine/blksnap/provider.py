"""Backing up block devices through the blksnap module, by the reference flow of the ABI:

attach the filter to each device → create the snapshot (difference storage path, limit) → add every
device → start a thread waiting for events → take → SNAPSHOTINFO (image name), CBTINFO and the CBT map,
read in 32 KiB pieces → read the images → check ``error_code`` and events → destroy, on every path.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

from cbtbackup.engine.blksnap import abi
from cbtbackup.engine.blksnap.kernel import BlksnapModule, BlockDevice, Environment, Event, current_environment
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.providers.scan import FileReader
from cbtbackup.errors import CbtError, SnapshotFailedError, StorageError, UsageError

EVENT_WAIT = 100  # per WAIT_EVENT call; the module counts it in jiffies
DEFAULT_DIFF_STORAGE = "/var/tmp"  # a directory: the module makes a private O_TMPFILE in it
OVERFLOW_SETTLE = 2.0  # seconds a failed image read waits for the module to report an overflow


class BlksnapGroup:
    """One snapshot of several block devices, taken at one instant by the module."""

    def __init__(self, devices: list[str], diff_storage: str, limit: int, env: Environment) -> None:
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
            for path in devices:
                self.devices.append(BlockDevice(env, path))
            self._check_storage(diff_storage)
            for dev in self.devices:
                dev.attach_filter()
            self.snap_id = self.module.snapshot_create(diff_storage, limit)
            for dev in self.devices:
                dev.snapshot_add(self.snap_id)
            self._thread = threading.Thread(target=self._watch, name="blksnap-events", daemon=True)
            self._thread.start()
            self.module.snapshot_take(self.snap_id)
            for dev in self.devices:
                self.sessions.append(BlksnapSession(self, dev))
        except BaseException:
            self.close()
            raise

    def _check_storage(self, diff_storage: str) -> None:
        # The module quietly skips SNAPSHOTADD of the device that holds the difference storage.
        try:
            st = os.stat(diff_storage)
        except OSError as e:
            raise UsageError(f"difference storage {diff_storage}: {e.strerror}") from None
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
                f"error {corrupted[0].err_code}"
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
                self.module.snapshot_destroy(snap_id)
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
        self._reader = _ImageReader(Path(group.env.dev_root) / image_name, group)
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
                 env: Environment | None = None) -> None:
        self.devices = devices
        self.source = str(Path(devices[0]).absolute())
        self.diff_storage = diff_storage or DEFAULT_DIFF_STORAGE
        self.limit = limit
        self.env = env or current_environment()

    def open_group(self) -> BlksnapGroup:
        limit = self.limit if self.limit is not None else self._default_limit()
        return BlksnapGroup(self.devices, self.diff_storage, limit, self.env)

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
