"""A simulator of the blksnap kernel module — upstream 2.0 or Veeam's standalone 7.x — behind the ioctl call.

It decodes each request from its number (direction, type, nr, size — the generic ``_IOC`` layout) and the
argument's raw bytes with ``struct`` formats written from the spec's C layouts, independently of
``cbtbackup.engine.blksnap.abi``; it follows pointers into the caller's memory as the kernel would. State
is kept per device (by ``st_rdev``) with the userspace engine underneath: attaching the filter tracks the
device, writes made with :meth:`KernelSimulator.write` are the bios the filter sees, snapshots are engine
snapshots. At the take each image is written to ``dev/blksnap-<major>-<minor>``. Errors are the module's
errno values; its quirks are kept: the 255 overflow report (from the engine), SNAPSHOTADD of the device
that holds the difference storage returning 0 without adding it, and ``timeout_ms`` counted in jiffies.

``dialect="7"`` follows what a probe of the real standalone module observed (the facts in the VM's
README): control ``veeamblksnap`` and filter ``bdevfilter`` devices (plain files here), filter requests
``'F'`` 140 to 142 on the filter device naming the device by a path string, version 7.0.0.0, the MOD request,
images named ``veeamblksnapimg_<maj>:<min>``, no ``/sys/block/<dev>/filter``, a positive errno in the
corrupted event, no low-space event for a file or directory storage, and EINVAL for an upstream request
sent to a block device. Like the real modules, neither build forgets a snapshot when its creator dies.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import stat
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from cbtbackup.engine import EventCode, Snapshot, TrackedVolume
from cbtbackup.engine.blksnap.kernel import Environment

HZ = 250
IOC_READ, IOC_WRITE = 2, 1

# Layouts from the spec (LP64, natural alignment), as struct formats.
ATTACH = struct.Struct("<32sQI4x")
DETACH = struct.Struct("<32s")
CTL = struct.Struct("<32sIIQ")
CBTINFO = struct.Struct("<QII16sB7x")
CBTMAP = struct.Struct("<IIQ")
CBTDIRTY = struct.Struct("<I4xQ")
SECTORS = struct.Struct("<QQ")
SNAPSHOTADD = struct.Struct("<16s")
SNAPSHOTINFO = struct.Struct("<i32s")
VERSION = struct.Struct("<HHHH")
CREATE = struct.Struct("<QQ16s")
UUID_ARG = struct.Struct("<16s")
COLLECT = struct.Struct("<I4xQ")
EVENT = struct.Struct("<16sIIq4064s")
EVENT_CORRUPTED = struct.Struct("<IIi")
EVENT_NO_SPACE = struct.Struct("<Q")
# 7.x: filter requests on /dev/bdevfilter, the device named by a path
BDEV_NAME = struct.Struct("<Q32s")
BDEV_CTL = struct.Struct("<Q32sIIQ")
MOD = struct.Struct("<Q32s")


def _put(buf: ctypes.Array[ctypes.c_char], data: bytes) -> None:
    """Write the answer into the caller's argument, as the kernel's copy_to_user does."""
    ctypes.memmove(ctypes.addressof(buf), data, len(data))


def decode_request(request: int) -> tuple[int, int, int, int]:
    """(direction, type, nr, size) of an ioctl request number."""
    return request >> 30, (request >> 8) & 0xFF, request & 0xFF, (request >> 16) & 0x3FFF


@dataclasses.dataclass
class SimDevice:
    path: str
    rdev: int
    volume: TrackedVolume
    snapshot: uuid.UUID | None = None
    attach_path: str = ""  # 7.x keeps ATTACH's path string and opens it again at every TAKE


@dataclasses.dataclass
class SimSnapshot:
    id: uuid.UUID
    storage: str
    limit: int
    devices: list[int] = dataclasses.field(default_factory=list)
    engine: Snapshot | None = None
    corrupted_reported: bool = False


class KernelSimulator:
    def __init__(self, root: Path, version: tuple[int, int, int, int] | None = None, step: int = 1 << 20,
                 loaded: bool = True, dialect: str = "2") -> None:
        self.root = root
        self.standalone = dialect == "7"
        self.version = version or ((7, 0, 0, 0) if self.standalone else (2, 0, 0, 0))
        self.step = step
        self.dev_root = root / "dev"
        self.dev_root.mkdir(parents=True, exist_ok=True)
        self.state_root = root / "state"
        self.sys_block = root / "sys" / "block"
        self.sys_block.mkdir(parents=True, exist_ok=True)
        self.control = self.dev_root / ("veeamblksnap" if self.standalone else "blksnap-control")
        self.filter_device = self.dev_root / "bdevfilter"
        if loaded:
            self.control.touch()
            if self.standalone:
                self.filter_device.touch()
        self.env = Environment(ioctl=self.ioctl, dev_root=str(self.dev_root), sys_block=str(self.sys_block),
                               run_dir=str(root / "run"))
        self.devices: dict[int, SimDevice] = {}
        self.snapshots: dict[uuid.UUID, SimSnapshot] = {}
        self.requests: list[str] = []  # what was asked, by name, for tests to check the flow
        self.destroyed: list[uuid.UUID] = []
        self.fail: dict[str, int] = {}  # request name -> errno to answer with, once
        self.after: dict[str, Callable[[], None]] = {}  # request name -> run once the request has done its work
        self._lock = threading.RLock()

    # -- the test's side -----------------------------------------------------------------------------------

    def write(self, device: str, offset: int, data: bytes) -> None:
        """A write bio to ``device`` as the filter sees it."""
        rdev = os.stat(device).st_rdev
        with self._lock:
            dev = self.devices.get(rdev)
        if dev is None:
            fd = os.open(device, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            return
        dev.volume.write(offset, data)  # the engine queues any corrupted event; WAIT_EVENT hands it out
        held = self.snapshots.get(dev.snapshot) if dev.snapshot else None
        if held is not None and held.engine is not None and held.engine.error_code:
            # As the real module: once the difference storage overflowed, every read of the image fails (EIO;
            # buffered readers see short reads).
            image = self.dev_root / self._image_name(rdev)
            if image.exists():
                os.truncate(image, 0)

    def close(self) -> None:
        for snap in list(self.snapshots.values()):
            if snap.engine is not None:
                snap.engine.destroy()
        for dev in self.devices.values():
            dev.volume.close()

    # -- the ioctl entry point -----------------------------------------------------------------------------

    def ioctl(self, fd: int, request: int, arg: ctypes.Structure) -> int:
        direction, type_, nr, size = decode_request(request)
        buf = (ctypes.c_char * ctypes.sizeof(arg)).from_buffer(arg)
        if len(buf) != size:
            raise OSError(errno.EINVAL, "argument size does not match the request")
        st = os.fstat(fd)
        with self._lock:
            if self._is(st, self.control) and type_ == ord("V"):
                return self._control(nr, direction, buf)
            if self.standalone and self._is(st, self.filter_device) and type_ == ord("F"):
                return self._bdevfilter(nr, buf)
            if stat.S_ISBLK(st.st_mode) and type_ == 0x12:
                if self.standalone:  # the loop driver's answer to a request it does not know
                    raise OSError(errno.EINVAL, "invalid argument")
                return self._filter(st.st_rdev, nr, buf)
        raise OSError(errno.ENOTTY, "inappropriate ioctl")

    @staticmethod
    def _is(st: os.stat_result, path: Path) -> bool:
        try:
            other = path.stat()
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)

    def _maybe_fail(self, name: str) -> None:
        self.requests.append(name)
        if name in self.fail:
            raise OSError(self.fail.pop(name), f"injected failure of {name}")

    # -- /dev/blksnap-control --------------------------------------------------------------------------------

    def _control(self, nr: int, direction: int, buf: ctypes.Array[ctypes.c_char]) -> int:
        if nr == 0 and direction == IOC_READ:
            self._maybe_fail("VERSION")
            _put(buf, VERSION.pack(*self.version))
        elif nr == 1 and direction == IOC_READ | IOC_WRITE:
            self._maybe_fail("SNAPSHOT_CREATE")
            limit_sect, name_ptr, _ = CREATE.unpack(bytes(buf))
            storage = ctypes.string_at(name_ptr).decode()
            if stat.S_ISFIFO(os.stat(storage).st_mode):
                raise AssertionError("the real module's CREATE blocks forever on a FIFO without a writer")
            if not (os.path.isdir(storage) or os.path.isfile(storage) or Path(storage).is_block_device()):
                raise OSError(errno.EINVAL, "bad difference storage")
            snap = SimSnapshot(uuid.uuid4(), storage, limit_sect * 512)
            self.snapshots[snap.id] = snap
            _put(buf, CREATE.pack(limit_sect, name_ptr, snap.id.bytes))
        elif nr == 2 and direction == IOC_WRITE:
            self._maybe_fail("SNAPSHOT_DESTROY")
            self._destroy(self._snapshot(bytes(buf), errno.ENODEV))
        elif nr == 3 and direction == IOC_WRITE:
            self._maybe_fail("SNAPSHOT_TAKE")
            self._take(self._snapshot(bytes(buf), errno.ESRCH))
        elif nr == 4 and direction == IOC_READ:
            self._maybe_fail("SNAPSHOT_COLLECT")
            count, ids_ptr = COLLECT.unpack(bytes(buf))
            ids = list(self.snapshots)
            if ids_ptr:
                if count < len(ids):
                    raise OSError(errno.ENODATA, "buffer too small")
                ctypes.memmove(ids_ptr, b"".join(i.bytes for i in ids), 16 * len(ids))
            _put(buf, COLLECT.pack(len(ids), ids_ptr))
        elif nr == 5 and direction == IOC_READ:
            self.requests.append("SNAPSHOT_WAIT_EVENT")
            self._wait_event(buf)
        elif nr == 32 and direction == IOC_READ and self.standalone:
            self._maybe_fail("MOD")
            _put(buf, MOD.pack(0x2, b"standalone"))
        else:
            raise OSError(errno.ENOTTY, "unknown control request")
        if self.requests and self.requests[-1] in self.after:
            self.after.pop(self.requests[-1])()
        return 0

    def _snapshot(self, raw: bytes, missing: int) -> SimSnapshot:
        snap = self.snapshots.get(uuid.UUID(bytes=raw[:16]))
        if snap is None:
            raise OSError(missing, "no such snapshot")
        return snap

    def _take(self, snap: SimSnapshot) -> None:
        if snap.engine is not None:
            raise OSError(errno.EFAULT if snap.engine.corrupted else errno.EALREADY, "taken already")
        if not snap.devices:
            raise OSError(errno.ENODEV, "no device in the snapshot")
        if self.standalone:  # the module opens each device again by the path ATTACH gave, in the taker's context
            for rdev in snap.devices:
                kept = self.devices[rdev].attach_path
                if kept.startswith("/proc/self/"):
                    raise AssertionError(f"ATTACH gave {kept}: at a later TAKE, from another process, it names "
                                         "another file (ENOTBLK) or another device")
                if os.stat(kept).st_rdev != rdev:
                    raise OSError(errno.ENOTBLK, "the attach path no longer names the device")
        volumes = [self.devices[r].volume for r in snap.devices]
        snap.engine = Snapshot.create(volumes, snap.storage, snap.limit, step=self.step)
        snap.engine.take()
        for rdev in snap.devices:
            dev = self.devices[rdev]
            image = snap.engine.image(dev.volume)
            with open(self.dev_root / self._image_name(rdev), "wb") as out:
                for offset in range(0, image.size, 1 << 20):
                    out.write(image.read(offset, min(1 << 20, image.size - offset)))

    def _destroy(self, snap: SimSnapshot) -> None:
        if snap.engine is not None:
            snap.engine.destroy()
        for rdev in snap.devices:
            self.devices[rdev].snapshot = None
            (self.dev_root / self._image_name(rdev)).unlink(missing_ok=True)
        del self.snapshots[snap.id]
        self.destroyed.append(snap.id)

    def _wait_event(self, buf: ctypes.Array[ctypes.c_char]) -> None:
        raw_id, timeout_jiffies, _, _, _ = EVENT.unpack(bytes(buf))
        snap = self._snapshot(raw_id, errno.ESRCH)
        engine = snap.engine
        if engine is None:
            raise OSError(errno.ENOENT, "no event")
        self._lock.release()  # wait without blocking other requests
        try:
            event = engine.wait_event(timeout_jiffies / HZ)
        finally:
            self._lock.acquire()
        if event is None:
            raise OSError(errno.ENOENT, "timed out")
        if event.code is EventCode.CORRUPTED:
            rdev = next((r for r in snap.devices if self.devices[r].path == event.volume), snap.devices[0])
            # 7.x sends a positive errno (the engine's, like upstream's, is negative)
            data = EVENT_CORRUPTED.pack(os.major(rdev), os.minor(rdev),
                                        abs(event.errno) if self.standalone else event.errno)
            code = 0
        elif self.standalone:  # a file or directory storage at its limit sends no event on 7.x
            raise OSError(errno.ENOENT, "timed out")
        else:
            data = EVENT_NO_SPACE.pack(event.requested_bytes // 512)
            code = 1
        _put(buf, EVENT.pack(raw_id, timeout_jiffies, code, event.time_ns, data))

    def _image_name(self, rdev: int) -> str:
        if self.standalone:
            return f"veeamblksnapimg_{os.major(rdev)}:{os.minor(rdev)}"
        return f"blksnap-{os.major(rdev)}-{os.minor(rdev)}"

    # -- the filter on block devices ------------------------------------------------------------------------

    def _bdevfilter(self, nr: int, buf: ctypes.Array[ctypes.c_char]) -> int:
        """7.x: /dev/bdevfilter, the device named by a path the module looks up."""
        raw = bytes(buf)
        if nr in (140, 141):
            devpath, name = BDEV_NAME.unpack(raw)
            rdev = self._lookup(devpath)
            if nr == 140:
                self._maybe_fail("BLKFILTER_ATTACH")
                self._attach(rdev, name)
                self.devices[rdev].attach_path = ctypes.string_at(devpath).decode()
            else:
                self._maybe_fail("BLKFILTER_DETACH")
                self._detach(rdev)
        elif nr == 142:
            devpath, name, cmd, optlen, opt = BDEV_CTL.unpack(raw)
            rdev = self._lookup(devpath)
            if name.rstrip(b"\0") != b"blksnap":
                raise OSError(errno.ENOENT, "no such filter")
            self._ctl(rdev, cmd, optlen, opt)
        else:
            raise OSError(errno.ENOTTY, "unknown filter request")
        return 0

    @staticmethod
    def _lookup(devpath: int) -> int:
        st = os.stat(ctypes.string_at(devpath))
        if not stat.S_ISBLK(st.st_mode):
            raise OSError(errno.ENOTBLK, "not a block device")
        return st.st_rdev

    def _filter(self, rdev: int, nr: int, buf: ctypes.Array[ctypes.c_char]) -> int:
        if nr == 142:
            self._maybe_fail("BLKFILTER_ATTACH")
            name, _, _ = ATTACH.unpack(bytes(buf))
            self._attach(rdev, name)
        elif nr == 143:
            self._maybe_fail("BLKFILTER_DETACH")
            self._detach(rdev)
        elif nr == 144:
            _, cmd, optlen, opt = CTL.unpack(bytes(buf))
            self._ctl(rdev, cmd, optlen, opt)
        else:
            raise OSError(errno.ENOTTY, "unknown filter request")
        return 0

    def _attach(self, rdev: int, name: bytes) -> None:
        if name.rstrip(b"\0") != b"blksnap":
            raise OSError(errno.ENOENT, "no such filter")
        if rdev in self.devices:
            raise OSError(errno.EALREADY, "attached already")
        path = self._device_path(rdev)
        state = self.state_root / f"{os.major(rdev)}-{os.minor(rdev)}"
        self.devices[rdev] = SimDevice(path, rdev, TrackedVolume.track(path, state_dir=state, exclusive=False))
        self._sysfs(rdev, "blksnap")

    def _detach(self, rdev: int) -> None:
        dev = self._attached(rdev)
        dev.volume.close()
        del self.devices[rdev]
        self._sysfs(rdev, None)
        for leftover in (self.state_root / f"{os.major(rdev)}-{os.minor(rdev)}").glob("*"):
            leftover.unlink()

    def _attached(self, rdev: int) -> SimDevice:
        dev = self.devices.get(rdev)
        if dev is None:
            raise OSError(errno.ENOENT, "no filter attached")
        return dev

    def _ctl(self, rdev: int, cmd: int, optlen: int, opt: int) -> None:
        names = ["CBTINFO", "CBTMAP", "CBTDIRTY", "SNAPSHOTADD", "SNAPSHOTINFO"]
        self._maybe_fail(names[cmd] if cmd < len(names) else f"CTL{cmd}")
        dev = self._attached(rdev)
        sizes = [CBTINFO.size, CBTMAP.size, CBTDIRTY.size, SNAPSHOTADD.size, SNAPSHOTINFO.size]
        if cmd >= len(sizes):
            raise OSError(errno.ENOTTY, "unknown command")
        if optlen < sizes[cmd]:
            raise OSError(errno.EINVAL, "option too short")
        raw = ctypes.string_at(opt, sizes[cmd])
        if cmd == 0:
            info = dev.volume.cbt_info()
            out = CBTINFO.pack(info.device_capacity, info.block_size, info.block_count,
                               info.generation_id.bytes, info.changes_number)
            ctypes.memmove(opt, out, len(out))
        elif cmd == 1:
            offset, length, buffer = CBTMAP.unpack(raw)
            cbt_map = dev.volume.cbt_map()
            if offset >= len(cbt_map):
                raise OSError(errno.ENODATA, "past the end of the map")
            piece = cbt_map[offset: offset + length]
            ctypes.memmove(buffer, piece, len(piece))
        elif cmd == 2:
            count, ptr = CBTDIRTY.unpack(raw)
            ranges = [SECTORS.unpack(ctypes.string_at(ptr + i * SECTORS.size, SECTORS.size)) for i in range(count)]
            dev.volume.mark_dirty([(o * 512, n * 512) for o, n in ranges])
        elif cmd == 3:
            (raw_id,) = SNAPSHOTADD.unpack(raw)
            snap = self._snapshot(raw_id, errno.ESRCH)
            if dev.snapshot == snap.id:
                raise OSError(errno.EALREADY, "in this snapshot already")
            if dev.snapshot is not None:
                raise OSError(errno.EBUSY, "in another snapshot")
            if os.stat(snap.storage).st_dev == rdev:
                return  # the quirk: the device holding the difference storage is skipped, silently
            dev.snapshot = snap.id
            snap.devices.append(rdev)
        elif cmd == 4:
            held = self.snapshots.get(dev.snapshot) if dev.snapshot else None
            if held is None or held.engine is None:
                raise OSError(errno.ENODEV, "not in a taken snapshot")
            out = SNAPSHOTINFO.pack(held.engine.error_code, self._image_name(rdev).encode())
            ctypes.memmove(opt, out, len(out))

    def _device_path(self, rdev: int) -> str:
        for entry in Path("/dev").glob("loop*"):
            try:
                if entry.stat().st_rdev == rdev and stat.S_ISBLK(entry.stat().st_mode):
                    return str(entry)
            except OSError:
                continue
        raise OSError(errno.ENODEV, "device not found")

    def _sysfs(self, rdev: int, name: str | None) -> None:
        if self.standalone:
            return  # the standalone module has no /sys/block/<dev>/filter
        leaf = Path(self._device_path(rdev)).name
        folder = self.sys_block / leaf
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "filter").write_text((name or "") + "\n")
