"""The attach daemon: serve a tracked volume through FUSE (and a loop device), answer the control socket,
and tear everything down in order — loop device, FUSE mount, tracker — on detach or SIGTERM.

Snapshots asked for over the control socket are taken here, where the writes happen; the backup reads the
image through ``MOUNTDIR/snapshot-<id>``. ``--freeze`` freezes the file system on top around the take.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import os
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.attach.control import Connection, listen, serve_connection
from cbtbackup.engine.attach.record import RECORD_NAME, VOLUME_FILE, AttachRecord, live_record
from cbtbackup.engine.errors import VolumeLockedError
from cbtbackup.engine.snapshot import Snapshot
from cbtbackup.engine.volume import TrackedVolume, default_state_dir
from cbtbackup.errors import BusyError, CbtError, NotFoundError, SnapshotFailedError, UsageError


class AttachError(UsageError):
    """The volume cannot be attached as asked."""


@dataclasses.dataclass(frozen=True)
class AttachOptions:
    image: str
    mountdir: str
    loop: bool = False
    state_dir: str | None = None


FUSE_DEVICE = (10, 229)  # major, minor of /dev/fuse


def check_fuse() -> None:
    try:
        st = os.stat("/dev/fuse")
    except OSError:
        raise AttachError("FUSE is not available: /dev/fuse is missing (load the fuse module)") from None
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != FUSE_DEVICE:
        raise AttachError("FUSE is not available: /dev/fuse is not the FUSE device")
    try:
        from cbtbackup.engine.attach import fuse_volume  # noqa: F401 - loads libfuse
    except OSError as e:
        raise AttachError(f"FUSE is not available: {e} (install libfuse3)") from None


def _clean_stale_mount(mountdir: Path) -> None:
    """A daemon that was killed leaves a dead FUSE mount ("transport endpoint is not connected")."""
    try:
        os.stat(mountdir)
        return
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
    for loop in system_tools.loops_backed_by(mountdir / VOLUME_FILE):
        if system_tools.mounted_at(loop) is None:
            system_tools.loop_detach(loop)
    system_tools.unmount(mountdir, lazy=True)


class Daemon:
    def __init__(self, options: AttachOptions) -> None:
        self.options = options
        self.image = Path(options.image).absolute()
        self.mountdir = Path(options.mountdir).absolute()
        self.state_dir = Path(options.state_dir) if options.state_dir else default_state_dir(self.image)
        self.stop = threading.Event()
        self.loop: str | None = None
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything that can fail with a clear message, before anything is mounted."""
        record = live_record(self.state_dir)
        if record is not None:
            raise AttachError(f"{self.image} is attached already at {record.mountdir} (pid {record.pid})")
        _clean_stale_mount(self.mountdir)
        if not self.mountdir.is_dir():
            raise AttachError(f"mount directory {self.mountdir} does not exist")
        if system_tools.is_mount_point(self.mountdir):
            raise AttachError(f"{self.mountdir} is a mount point already")
        check_fuse()
        try:
            self.volume = TrackedVolume.open(self.image, state_dir=self.state_dir)
        except VolumeLockedError:
            raise BusyError(f"{self.image} is in use by another tracker; it cannot be attached now") from None

    def run(self, ready: Any = None) -> None:
        """Serve until detached; ``ready(record)`` is called once the volume is usable."""
        from cbtbackup.engine.attach.fuse_volume import VolumeFS, serve

        record = AttachRecord(os.getpid(), str(self.image), str(self.state_dir), str(self.mountdir), None)
        self.fs = VolumeFS(self.volume, record.source_info())
        server = listen(self.state_dir)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop.set())
        fuse_thread = threading.Thread(target=self._serve_fuse, args=(serve,), name="fuse", daemon=True)
        fuse_thread.start()
        threading.Thread(target=self._accept, args=(server,), name="control", daemon=True).start()
        try:
            self._wait_for_mount(fuse_thread)
            if self.options.loop:
                self.loop = system_tools.loop_attach(self.mountdir / VOLUME_FILE)
            record = dataclasses.replace(record, loop=self.loop)
            record.save()
            if ready is not None:
                ready(record)
            while not self.stop.wait(0.5):
                if not fuse_thread.is_alive():
                    break
        finally:
            self._teardown(fuse_thread, server)

    def _serve_fuse(self, serve: Any) -> None:
        try:
            serve(self.fs, str(self.mountdir))
        except Exception as e:  # the mount failed or ended badly: the main thread notices the thread ended
            print(f"cbtbackup: FUSE ended: {e}", file=sys.stderr)

    def _wait_for_mount(self, fuse_thread: threading.Thread) -> None:
        deadline = time.monotonic() + 15
        while not system_tools.is_mount_point(self.mountdir):
            if not fuse_thread.is_alive() or time.monotonic() > deadline:
                raise AttachError(f"could not mount FUSE at {self.mountdir}")
            time.sleep(0.02)

    def _teardown(self, fuse_thread: threading.Thread, server: socket.socket) -> None:
        """Loop device first (it holds the FUSE file), then the mount, then the tracker."""
        server.close()
        with self._lock:
            for snap in self._snapshots.values():
                snap.destroy()
            self._snapshots.clear()
        # Only while the loop device is still ours: if someone detached it already, the same name may now
        # belong to another volume, which must not lose its device to our teardown.
        ours = Path(os.path.realpath(self.mountdir)) / VOLUME_FILE
        if self.loop is not None and system_tools.loop_backing_file(self.loop) == ours:
            try:
                system_tools.loop_detach(self.loop)
            except CbtError as e:
                print(f"cbtbackup: {e}", file=sys.stderr)
        if fuse_thread.is_alive():
            try:
                system_tools.unmount(self.mountdir)
            except CbtError:
                system_tools.unmount(self.mountdir, lazy=True)
            fuse_thread.join(30)
        self.volume.close()
        (self.state_dir / RECORD_NAME).unlink(missing_ok=True)
        (self.state_dir / "control.sock").unlink(missing_ok=True)

    # -- the control socket --------------------------------------------------------------------------------

    def _accept(self, server: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = server.accept()
            except OSError:
                return
            conn = Connection(sock)
            threading.Thread(target=serve_connection, args=(conn, self._handle, self._release_all),
                             daemon=True).start()

    def _handle(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self._status()
        if op == "snapshot":
            return self._snapshot(request, conn)
        if op == "hold":
            token = self.fs.gate.hold()
            conn.holds.append(token)
            return {"token": token}
        if op == "resume":
            self.fs.gate.resume(str(request.get("token")))
            return {}
        if op == "release":
            self._release(str(request.get("name")))
            return {}
        if op == "check":
            snap = self._snapshots.get(str(request.get("name")))
            if snap is None:
                raise NotFoundError("no such snapshot")
            return {"error_code": snap.error_code, "failure": snap.failure}
        if op == "reset-tracking":
            self.volume.reset_tracking(str(request.get("reason") or "the tracking was reset"))
            return {}
        if op == "detach":
            if self.loop is not None and (where := system_tools.mounted_at(self.loop)) is not None:
                raise BusyError(f"{self.loop} is mounted at {where}; unmount it first")
            self.stop.set()
            return {}
        raise UsageError(f"unknown control request {op!r}")

    def _status(self) -> dict[str, Any]:
        info = self.volume.cbt_info()
        return {"pid": os.getpid(), "image": str(self.image), "mountdir": str(self.mountdir), "loop": self.loop,
                "cbt": info.to_dict(), "dirty_blocks": self.volume.blocks_changed_since_take(),
                "generation_reason": self.volume.reset_reason}

    def _snapshot(self, request: dict[str, Any], conn: Connection) -> dict[str, Any]:
        name = secrets.token_hex(6)
        hold = request.get("hold")
        if hold is not None and not self.fs.gate.holding(str(hold)):
            raise SnapshotFailedError("the group's write hold ended before this volume was taken (held too long)")
        snap = Snapshot.create([self.volume], request.get("diff_storage"), request.get("limit"))
        try:
            with system_tools.frozen(request.get("freeze")):
                snap.take()
            info = self.volume.cbt_info()
            cbt_map = self.volume.cbt_map()
        except BaseException:
            snap.destroy()
            raise
        with self._lock:
            self._snapshots[name] = snap
            conn.snapshots.append(name)
        leaf = self.fs.expose(name, snap.image(self.volume))
        return {"name": name, "path": str(self.mountdir / leaf), "cbt": info.to_dict(),
                "map": base64.b64encode(cbt_map).decode(), "reset_reason": self.volume.reset_reason}

    def _release(self, name: str) -> None:
        self.fs.hide(name)
        with self._lock:
            snap = self._snapshots.pop(name, None)
        if snap is not None:
            snap.destroy()

    def _release_all(self, conn: Connection) -> None:
        for token in conn.holds:  # a backup that died between hold and resume never stalls the volume
            self.fs.gate.resume(token)
        for name in conn.snapshots:
            self._release(name)
